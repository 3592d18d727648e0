"""Run logs, written by process 0 only: one JSON line per step (metrics.jsonl, the source of truth) mirrored to the
configured trackers (rlsc_jax/trackers.py), and one per step and question (samples.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from rlsc_jax.trackers import Trackers


class MetricsLog:
    """Appends step metrics and hands them to `trackers`; on resume drops lines beyond the restored step so nothing
    is logged twice."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0, trackers: Trackers | None = None):
        self.enabled = jax.process_index() == 0
        self.path = Path(output_dir) / "metrics.jsonl"
        self.trackers = trackers
        if self.enabled:
            self.file = _open_resumed(self.path, resume_step)

    def log(self, step: int, metrics: dict) -> None:
        """Writes one step's scalars (step counts completed steps, starting at 1)."""
        if not self.enabled:
            return
        row = {"step": step} | {k: _scalar(v) for k, v in metrics.items()}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.trackers is not None:
            self.trackers.log(step, {k: v for k, v in row.items() if k != "step"})

    def close(self) -> None:
        if self.enabled:
            self.file.close()


class SamplesLog:
    """Appends each step's `rollouts.sample_rows`; on resume drops rows beyond the restored step."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.file = _open_resumed(Path(output_dir) / "samples.jsonl", resume_step)

    def log(self, rows: list[dict]) -> None:
        if self.enabled:
            self.file.write("".join(json.dumps(row) + "\n" for row in rows))
            self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()


def _open_resumed(path: Path, resume_step: int):
    """`path` opened for appending, its lines past `resume_step` (and torn ones) dropped first, so a resumed run
    logs no step twice."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if _step_of(line) is not None and _step_of(line) <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


def _scalar(v):
    """A JSON-friendly Python number from a numpy/jax scalar."""
    if isinstance(v, (np.ndarray, np.generic, jax.Array)):
        v = np.asarray(v).item()
    return v


def _step_of(line: str) -> int | None:
    """The step of a log line, None for a torn (partially written) line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(output_dir: str | Path) -> list[dict]:
    """All step rows of a run."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
