"""Trackers: the config list's checks, and TensorBoard, W&B (offline) and MLflow (a local file store) receiving
the same scalars, a resumed run continuing the same W&B and MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlsc_jax import trackers
from rlsc_jax.trackers import Trackers


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """W&B offline and an MLflow file store under tmp_path: nothing leaves the machine. Returns the store's URI."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


@pytest.mark.parametrize("names, message", [
    (["neptune"], "trackers: unknown tracker 'neptune'; known: tensorboard, wandb, mlflow"),
    (["tensorboard", "tensorboard"], "names a tracker twice"),
    (["mlflow"], "trackers: 'mlflow' needs the mlflow-skinny package: pip install mlflow-skinny"),
])
def test_bad_tracker_lists_are_one_line(names: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackers, "installed", lambda module: module != "mlflow")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        trackers.check(names)


def test_every_tracker_gets_the_finite_scalars_and_a_resume_continues_its_runs(tmp_path: Path, offline: str) -> None:
    import mlflow
    out = tmp_path / "run"
    out.mkdir()
    config = {"optim.lr": 3e-5, "objective": "rlsc_l2"}
    with Trackers(["tensorboard", "wandb", "mlflow"], out, "rlsc-test", config) as t:
        t.log(1, {"loss": 0.5, "skipped": 0, "nan": float("nan"), "protocol": "qwen-math"})
        t.log(2, {"loss": 0.25})
    ids = json.loads((out / "trackers.json").read_text())
    assert set(ids) == {"wandb", "mlflow"}
    with Trackers(["wandb", "mlflow"], out, "rlsc-test", config) as t:
        t.log(3, {"loss": 0.125})
    assert json.loads((out / "trackers.json").read_text()) == ids

    client = mlflow.MlflowClient(offline)
    history = client.get_metric_history(ids["mlflow"], "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25), (3, 0.125)]
    run = client.get_run(ids["mlflow"])
    assert run.data.params == {"optim.lr": "3e-05", "objective": "rlsc_l2"} and "nan" not in run.data.metrics
    assert run.info.run_name == "run" and run.info.status == "FINISHED"

    # the first run's folder and the resumed one's (wandb adds "-1" to a name taken within the same second)
    folders = list((out / "wandb").glob(f"offline-run-*-{ids['wandb']}*"))
    assert len(folders) == 2, folders
    records = b"".join(p.read_bytes() for folder in folders for p in folder.glob("*.wandb"))
    for value in (b"0.5", b"0.25", b"0.125", b"rlsc_l2"):  # the values as the run's protobuf records hold them
        assert value in records, value
    assert list((out / "tensorboard").iterdir())


def test_a_tracker_that_cannot_start_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MLflow store it cannot use (here a file store without MLflow's opt-in) names the tracker and the cause,
    and the trackers already started are closed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match=r"^trackers: mlflow could not start \(MlflowException: "):
        Trackers(["tensorboard", "mlflow"], tmp_path, "rlsc-test", {})
    assert not (tmp_path / "trackers.json").exists()
