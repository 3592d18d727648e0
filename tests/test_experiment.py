"""The default experiment end to end on a tiny model: paired before-metrics, table rows, outputs; bad input and
Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlsc_jax import experiment, synthetic_splits
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
TINY = ["steps=2", "questions_per_step=2", "sampling.num_samples=8", "sampling.max_new_tokens=8",
        "data.num_questions=8", "eval.num_questions=4", "eval.num_samples=4", "checkpoint_every=100"]


def test_experiment_pairs_every_arm_with_its_seeds_base(tmp_path):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 200)]
    model = make_chat_model_dir(tmp_path / "model", texts)
    out = tmp_path / "exp"
    code = experiment.main(["--seeds", "0", "1", "--arms", "rlsc_l2", "paper_batch", "--baseline-temperatures", "0.2",
                            "--output", str(out), f"model={model}", *TINY])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["base"]) == {"0", "1"} and set(results["runs"]) == {"rlsc_l2", "paper_batch"}
    for name, by_seed in results["runs"].items():
        for seed, result in by_seed.items():
            assert result["before"] == results["base"][seed]["before"], (name, seed)
            assert result["train"]["problems"] == 4 and result["after"]["num_samples"] == 4
            rows = (out / f"{name}-seed{seed}" / "metrics.jsonl").read_text().splitlines()
            assert len(rows) == (20 if name == "paper_batch" else 2)
    lines = (out / "table.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| base, T=0.5", "| base, T=0.2", "| RLSC L2", "| RLSC L2, paper's batch: 1 question x 20 steps, lr 1e-5"]
    cells = {line.split(" | ")[0]: line.split(" | ") for line in lines[2:]}
    assert cells["| base, T=0.5"][5] == "+0.0 ± 0.0"  # the base row's change against itself
    # underflow fraction for trained arms only; the p_old share where rlsc_l2 logged its gradient terms (near 0
    # here: a random model's 8-token answers have log p near -40, so p_old is tiny but not 0)
    assert cells["| base, T=0.5"][7] == "–" and 0 <= float(cells["| RLSC L2"][7].split(" ± ")[0]) <= 100
    assert cells["| base, T=0.5"][8] == "–" and 0 <= float(cells["| RLSC L2"][8].split(" ± ")[0]) <= 100
    assert (out / "curves.png").stat().st_size > 0


def test_a_rerun_reuses_finished_results_and_recomputes_when_the_config_changes(tmp_path, monkeypatch):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 200)]
    model = make_chat_model_dir(tmp_path / "model", texts)
    out = tmp_path / "exp"
    args = ["--seeds", "0", "--arms", "rlsc_l2", "--baseline-temperatures", "0.2", "--output", str(out),
            f"model={model}", *TINY]
    assert experiment.main(args) == 0
    first = json.loads((out / "results.json").read_text())

    def fail(*_):
        raise AssertionError("recomputed a finished result")

    monkeypatch.setattr(experiment, "base_model", fail)
    monkeypatch.setattr(experiment, "train_arm", fail)
    assert experiment.main(args) == 0
    assert json.loads((out / "results.json").read_text()) == first
    with pytest.raises(AssertionError, match="recomputed"):  # a changed config is not served from the cache
        experiment.main([*args, "eval.num_samples=2"])
    with (model / "config.json").open("a") as f:  # nor are other model files at the same path
        f.write("\n")
    with pytest.raises(AssertionError, match="recomputed"):
        experiment.main(args)


def test_overrides_may_follow_the_list_options(monkeypatch, tmp_path):
    class Stop(Exception):
        pass

    def capture(cfg, temperatures):
        raise Stop(cfg)

    monkeypatch.setattr(experiment, "base_model", capture)
    with pytest.raises(Stop) as stop:
        experiment.main(["--seeds", "3", "--arms", "rlsc_l1", "steps=7", "--output", str(tmp_path), "optim.lr=2e-5"])
    cfg = stop.value.args[0]
    assert (cfg.steps, cfg.optim.lr, cfg.seed) == (7, 2e-5, 3)


@pytest.mark.parametrize("args,needle", [
    (["stepz=3"], "unknown config key 'stepz'; did you mean 'steps'?"),
    (["--config", "{tmp}/missing.yaml"], "missing.yaml: config file not found"),
    (["--output", "{tmp}/a_file"], "a_file': cannot create the directory"),
    (["--arms", "rlsc_l1", "optim.lr=-1"], "optim.lr=-1.0: must be finite and > 0"),
])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.setattr(experiment, "base_model", lambda *a: pytest.fail("ran despite bad input"))
    (tmp_path / "a_file").write_text("mine")
    argv = ["--seeds", "0", "--output", str(tmp_path / "exp"), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    assert experiment.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "rlsc_jax.experiment", "--output", str(tmp_path), "--seeds", "0",
                             "--arms", "rlsc_l2", *TINY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().startswith("== base model")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert proc.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted"), err
