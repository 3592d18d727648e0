"""The default experiment end to end on a tiny model: paired before-metrics, table rows, outputs."""

import json

import pytest

from rlsc_jax import experiment, synthetic
from tests.hf_models import make_chat_model_dir

TINY = ["steps=2", "questions_per_step=2", "sampling.num_samples=8", "sampling.max_new_tokens=8",
        "data.num_questions=8", "eval.num_questions=4", "eval.num_samples=4", "checkpoint_every=100"]


def test_experiment_pairs_every_arm_with_its_seeds_base(tmp_path):
    texts = [p.question + " " + p.solution for p in synthetic.split_problems("pretrain", 200)]
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
    texts = [p.question + " " + p.solution for p in synthetic.split_problems("pretrain", 200)]
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
