"""Where a run's step metrics go besides metrics.jsonl, which is always written and stays the source of truth: the
`trackers` config list. `tensorboard` (tensorboardX, installed with the package) writes <output_dir>/tensorboard;
`wandb` (Weights & Biases) and `mlflow` (an MLflow tracking server or store) are optional installs
(`pip install "rlsc_jax[track]"`), configured by their own environment variables (`WANDB_MODE=offline`,
`WANDB_ENTITY`, `MLFLOW_TRACKING_URI`, ...). A resumed run continues the same W&B / MLflow run: their ids are kept
in <output_dir>/trackers.json.

Each tracker takes finite scalars by step (`log`) and is closed once (`close`), as in levanter's and tunix's
tracker interfaces.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

from rlsc_jax.files import atomic_write_json

# tracker -> (module it imports, package that provides it)
PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}
IDS = "trackers.json"  # the W&B and MLflow run ids of this output dir


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def check(names: list[str]) -> None:
    """One line (ValueError) for an unknown or repeated tracker, or one whose package is not installed."""
    for name in names:
        if name not in PACKAGES:
            raise ValueError(f"trackers: unknown tracker {name!r}; known: {', '.join(PACKAGES)}")
        module, package = PACKAGES[name]
        if not installed(module):
            raise ValueError(f"trackers: {name!r} needs the {package} package: pip install {package} "
                             f"(or pip install \"rlsc_jax[track]\")")
    if len(set(names)) != len(names):
        raise ValueError(f"trackers: {names} names a tracker twice")


class TensorBoard:
    """Scalars in <output_dir>/tensorboard (tensorboardX event files)."""

    def __init__(self, output_dir: Path, project: str, run_id: str | None, config: dict):
        from tensorboardX import SummaryWriter
        self.writer, self.id = SummaryWriter(str(output_dir / "tensorboard")), None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """A W&B run named after the output dir, its files in <output_dir>/wandb, the config as its config."""

    def __init__(self, output_dir: Path, project: str, run_id: str | None, config: dict):
        import wandb
        self.run = wandb.init(project=project, name=output_dir.resolve().name, id=run_id, resume="allow",
                              dir=str(output_dir), config=config)
        self.id = self.run.id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """An MLflow run in experiment `project`, named after the output dir, the config's values as its params.
    MLflow names allow no `@`: `mean@16` is logged as `mean_at_16`."""

    def __init__(self, output_dir: Path, project: str, run_id: str | None, config: dict):
        import mlflow
        self.client = mlflow.MlflowClient()
        if run_id is None:
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            run_id = self.client.create_run(experiment_id, run_name=output_dir.resolve().name).info.run_id
            params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in config.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i:i + 100])
        self.id, self.metric = run_id, mlflow.entities.Metric

    def log(self, step: int, scalars: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[self.metric(k.replace("@", "_at_"), v, now, step)
                                                for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.id)


TRACKERS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow}


class Trackers:
    """The configured trackers (a context manager that closes them), started together, resuming the runs named in
    trackers.json; `config` (flat: dotted keys) becomes the W&B config and the MLflow params. Process 0 only."""

    def __init__(self, names: list[str], output_dir: str | Path, project: str, config: dict):
        check(names)
        out = Path(output_dir)
        ids = json.loads((out / IDS).read_text()) if (out / IDS).is_file() else {}
        self.trackers = []
        for name in names:
            try:
                self.trackers.append(TRACKERS[name](out, project, ids.get(name), config))
            except Exception as e:  # a tracker's own error (no API key, unreachable server): one line, exit 2
                self.close()
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ValueError(f"trackers: {name} could not start ({type(e).__name__}: {first})") from None
        new = {name: t.id for name, t in zip(names, self.trackers) if t.id is not None}
        if any(ids.get(k) != v for k, v in new.items()):
            atomic_write_json(out / IDS, {**ids, **new})

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, step: int, metrics: dict) -> None:
        """Every finite number of `metrics` at `step` (non-finite ones stay in metrics.jsonl only)."""
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(step, scalars)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
