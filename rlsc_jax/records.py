"""Per-problem records on disk: JSONL, one graded record a line, appended and flushed as each lands, so that a
decoding pass that is interrupted resumes at its first problem not yet written instead of from the start.

`read_records` reads `eval.py`'s files (guarded by its settings.json) and `Appender` writes them. `Journal` is the
self-guarding kind that train.py's held-out evaluations and the experiment's parts keep: its first line is the key
it was kept under (what the pass's result depends on), and a file kept under another key is started over.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_records(path: Path, skip: int = 0) -> tuple[dict[str, dict], int]:
    """Records of a per-problem JSONL by id (after its first `skip` lines), and the byte size of its complete
    lines, the skipped ones included.

    A last line without its newline is an interrupted write and is ignored; any other bad line is an error.
    """
    if not path.is_file():
        return {}, 0
    records: dict[str, dict] = {}
    size = 0
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            size += len(line)
            if line_no <= skip:
                continue
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{line_no}: not a per-problem record; delete the file to start over") from None
    return records, size


class Appender:
    """Appends graded records to the per-problem JSONL at `path`, one flushed line each, so an interruption loses
    at most that line. Nothing is written before the first record; it calls `before` (if given), then cuts the
    file to its `size` bytes of complete lines, dropping a partially written last one (`size` 0: the file is
    written anew, starting with `head`)."""

    def __init__(self, path: Path, size: int, head: bytes = b"", before: Callable[[], Any] | None = None):
        self.path, self.size, self.head, self.before = path, size, head, before
        self.started = False

    def __call__(self, record: dict) -> None:
        if not self.started:
            if self.before is not None:
                self.before()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("r+b" if self.size else "wb") as f:
                f.truncate(self.size)
                f.write(b"" if self.size else self.head)
            self.started = True
        with self.path.open("ab") as f:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())


@dataclasses.dataclass(frozen=True)
class Journal:
    """Where decoding passes keep their records, and what for: the pass named `tag` keeps them in
    `<stem>-<tag>.jsonl` under `key` (the model and settings its caller's result depends on, JSON-able) joined
    with the pass's own settings (`evaluation.evaluate_problems` adds those)."""

    stem: Path
    key: Any

    def open(self, tag: str, settings: dict) -> "JournalFile":
        return JournalFile(self.stem.with_name(f"{self.stem.name}-{tag}.jsonl"), {"key": self.key, **settings})


class JournalFile:
    """One pass's journal: `done` holds the records kept under the same key; `append` (an `Appender`) adds one.
    A file kept under another key, or unreadable, is replaced at the first new record."""

    def __init__(self, path: Path, key: dict):
        self.path = path
        header = (json.dumps({"journal": key}, sort_keys=True, ensure_ascii=False) + "\n").encode()
        self.done: dict[str, dict] = {}
        size = 0  # bytes of complete lines to keep; 0 = write the file anew
        if path.is_file():
            with path.open("rb") as f:
                same = f.readline() == header
            if same:
                try:
                    self.done, size = read_records(path, skip=1)
                except ValueError:  # a damaged journal costs only the time to decode it again
                    self.done, size = {}, 0
        self.append = Appender(path, size, head=header)
