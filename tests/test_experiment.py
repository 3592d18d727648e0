"""The default experiment end to end on a tiny model: paired before-metrics, table rows, outputs; bad input and
Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlsc_jax import evaluation, experiment, experiment_runs, synthetic_splits
from rlsc_jax.config import load_config
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
TINY = ["steps=2", "questions_per_step=2", "sampling.num_samples=8", "sampling.max_new_tokens=8",
        "data.num_questions=8", "eval.num_questions=4", "eval.num_samples=4", "checkpoint_every=100"]


def test_experiment_pairs_every_arm_with_its_seeds_base(tmp_path):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 200)]
    model = make_chat_model_dir(tmp_path / "model", texts)
    out = tmp_path / "exp"
    code = experiment.main(["--seeds", "0", "1", "--arms", "rlsc_l2", "ttrl", "--baseline-temperatures", "0.2",
                            "--output", str(out), f"model={model}", *TINY, "objective=rlsc_l1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["base"]) == {"0", "1"} and set(results["runs"]) == {"rlsc_l2", "ttrl"}
    for name, by_seed in results["runs"].items():
        for seed, result in by_seed.items():
            assert result["before"] == results["base"][seed]["before"], (name, seed)
            assert result["train"]["problems"] == 4 and result["after"]["num_samples"] == 4
            run = out / f"{name}-seed{seed}"
            assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
            assert f"objective: {name}\n" in (run / "config.yaml").read_text()  # the arm's overrides win
    lines = (out / "table.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| base, T=0.5", "| base, T=0.2", "| RLSC L2", "| TTRL (majority-vote reward)"]
    header = lines[0].strip("| ").split(" | ")
    cells = {line.split(" | ")[0][2:]: dict(zip(header, line.strip("| ").split(" | "))) for line in lines[2:]}
    assert cells["base, T=0.5"]["change in mean@4"] == "+0.0 ± 0.0"  # the base row's change against itself
    # underflow fraction for trained arms only; the p_old share where rlsc_l2 logged its gradient terms (near 0
    # here: a random model's 8-token answers have log p near -40, so p_old is tiny but not 0)
    for column in ("underflow", "p_old share"):
        assert cells["base, T=0.5"][column] == "–" and 0 <= float(cells["RLSC L2"][column].split(" ± ")[0]) <= 100
    assert cells["TTRL (majority-vote reward)"]["p_old share"] == "–"  # no p_old term to measure
    # the greedy accuracy's binomial standard error over the 4 problems, at the seeds' mean accuracy
    p = sum(results["base"][s]["before"]["greedy_accuracy"] for s in "01") / 2
    assert cells["base, T=0.5"]["greedy se"] == f"{100 * (p * (1 - p) / 4) ** 0.5:.1f}"
    assert cells["base, T=0.2"]["greedy"] == "–" and cells["base, T=0.2"]["truncated"].count("/") == 0
    assert cells["RLSC L2"]["truncated"].count("/") == 1  # greedy / sampled
    assert (out / "curves.png").stat().st_size > 0 and (out / "accuracy_vs_steps.png").stat().st_size > 0


def test_a_benchmark_source_in_stages_on_disjoint_slices(tmp_path, capsys):
    """One JSONL file, training on its tail and scored on its head; the greedy protocol beside the sampled
    metrics; each arm scored after step 1 and 2; seed by seed; checkpoints pruned once a result is kept."""
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 200)]
    model = make_chat_model_dir(tmp_path / "model", texts)
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": p.gold}) + "\n"
                            for p in synthetic_splits.split_questions("heldout", 12)))
    out = tmp_path / "exp"
    args = ["--seeds", "0", "1", "--arms", "ttrl", "--baseline-temperatures", "0.2", "--output", str(out),
            "--eval-steps", "1", "--no-train-scores", "--prune-checkpoints", f"model={model}", *TINY,
            f"data.source={data}", "data.offset=4", "data.num_questions=0", f"eval.source={data}",
            "eval.max_new_tokens=8", "data.template=qwen-math"]
    assert experiment.main(args) == 0
    printed = capsys.readouterr()
    order = [line for line in printed.out.splitlines() if line.startswith("== ")]
    assert [line.split(" -> ")[0] for line in order] == [
        "== base model, seed 0", "== TTRL (majority-vote reward), seed 0",
        "== base model, seed 1", "== TTRL (majority-vote reward), seed 1"]
    results = json.loads((out / "results.json").read_text())
    before = results["base"]["0"]["before"]
    assert before["protocol"]["protocol"] == "qwen-math" and before["protocol"]["max_new_tokens"] == 8
    assert before["greedy_accuracy"] == before["protocol"]["accuracy"] and before["num_samples"] == 4
    assert "train" not in results["base"]["0"]
    trained = {row["id"] for line in (out / "ttrl-seed0" / "samples.jsonl").read_text().splitlines()
               for row in [json.loads(line)]}
    assert trained and trained <= {str(i) for i in range(5, 13)}  # lines 5..12: the 4 evaluated come first
    for seed in "01":
        assert set(results["by_step"]["ttrl"][seed]) == {"1", "2"}
        assert (out / f"ttrl-seed{seed}" / "experiment_step1.json").is_file()
        assert not (out / f"ttrl-seed{seed}" / "checkpoints").exists() and (out / f"ttrl-seed{seed}" / "final").is_dir()
    assert results["runs"]["ttrl"]["1"]["after"] == results["by_step"]["ttrl"]["1"]["2"]
    assert len(results["runs"]["ttrl"]["0"]["step_accuracy"]) == 2
    assert (out / "accuracy_vs_steps.png").stat().st_size > 0
    # every decoding pass shows its progress, named by what it decodes (an evaluation of a real model is hours)
    for bar in ("greedy: 100%", "4 at T = 0.5: 100%", "4 at T = 0.2: 100%"):
        assert bar in printed.err, bar


def test_a_partial_table_pairs_each_arm_with_its_own_seeds_base():
    """While seed 1 of an arm is in and seed 0 is not, its change is against seed 1's base, and the row says so."""
    def metrics(x, greedy=0.4):
        return {"mean@4": x, "maj@4": x, "pass@4": x, "truncated_frac": 0.0, "mean_length": 10.0, "problems": 100,
                "greedy_accuracy": greedy, "greedy_truncated_frac": 0.0}

    base = {0: {"before": metrics(0.5)}, 1: {"before": metrics(0.6)}}
    runs = {"ttrl": {1: {"after": metrics(0.7, greedy=0.5), "underflow": 0.0}}}
    lines = experiment_runs.table(base, runs, 4, 0.5).splitlines()
    cells = lines[3].split(" | ")
    assert cells[0] == "| TTRL (majority-vote reward) (seeds 1 only)" and cells[6] == "+10.0"
    assert cells[1:3] == ["50.0", "5.0"]  # greedy, and its binomial standard error over 100 problems
    assert lines[2].split(" | ")[1:3] == ["40.0 ± 0.0", "4.9"]


def test_step_accuracy_grades_each_steps_samples_against_the_gold(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "2"}\n{"question": "2 + 2?", "answer": "4"}\n')
    rows = [{"step": 1, "id": "1", "completions": [{"answer": "2"}, {"answer": "2.0"}]},
            {"step": 2, "id": "2", "completions": [{"answer": "4"}, {"answer": None}, {"answer": "5"}]}]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.source={data}", f"output_dir={tmp_path}"])
    assert experiment_runs.step_accuracy(cfg) == [1.0, 1 / 3]
    data.write_text('{"question": "1 + 1?"}\n')  # unlabeled training questions: no curve
    assert experiment_runs.step_accuracy(cfg) is None


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

    # an interruption loses only what it was decoding: each decoding pass journals its records, the run's final
    # evaluation in the run's folder, the parts' beside them; with the whole results and the parts that hold only
    # decoding gone, the journals rebuild them without decoding a token
    (out / "base-seed0.json").unlink()
    (out / "rlsc_l2-seed0" / "experiment_result.json").unlink()
    for part in ("heldout", "before", "T=0.2", "train"):
        (out / "parts" / f"base-seed0-{part}.json").unlink()
    for part in ("after", "train"):
        (out / "rlsc_l2-seed0" / "parts" / f"step2-{part}.json").unlink()
    assert sorted(p.name for p in (out / "parts").glob("*.jsonl")) == [
        "base-seed0-T=0.2-T0.2x4.jsonl", "base-seed0-heldout-T0.5x4.jsonl", "base-seed0-heldout-greedy.jsonl",
        "base-seed0-train-T0.5x4.jsonl"]
    for name in ("eval_after-greedy", "eval_after-T0.5x4"):
        assert len((out / "rlsc_l2-seed0" / f"{name}.jsonl").read_text().splitlines()) == 1 + 4
    monkeypatch.setattr(experiment_runs, "run", fail)
    monkeypatch.setattr(evaluation, "sample", fail)
    assert experiment.main(args) == 0
    assert json.loads((out / "results.json").read_text()) == first
    for name in ("evaluate", "sampled_metrics"):
        monkeypatch.setattr(experiment_runs, name, fail)
    assert experiment.main(args) == 0
    monkeypatch.setattr(experiment_runs, "base_model", fail)
    monkeypatch.setattr(experiment_runs, "train_arm", fail)
    assert experiment.main(args) == 0
    assert json.loads((out / "results.json").read_text()) == first
    # where things are is not what they are: a moved output folder and a copy of the model reuse the results,
    # and so do keys kept while they still recorded the places
    moved, copy = tmp_path / "moved", tmp_path / "model-copy"
    out.rename(moved)
    shutil.copytree(model, copy)
    for path in (moved / "base-seed0.json", moved / "rlsc_l2-seed0" / "experiment_result.json"):
        kept = json.loads(path.read_text())
        kept["key"]["config"].update({"model": "/elsewhere", "output_dir": "/elsewhere", "data.data_dir": "/elsewhere"})
        path.write_text(json.dumps(kept))
    assert experiment.main([*args[:-len(TINY) - 2], str(moved), f"model={copy}", *TINY]) == 0
    moved.rename(out)
    # a result kept before a config key existed is reused while that key is at its default
    for path in (out / "base-seed0.json", out / "rlsc_l2-seed0" / "experiment_result.json"):
        kept = json.loads(path.read_text())
        del kept["key"]["config"]["data.offset"]
        path.write_text(json.dumps(kept))
    assert experiment.main(args) == 0
    with pytest.raises(AssertionError, match="recomputed"):
        experiment.main([*args, "data.offset=1"])
    with pytest.raises(AssertionError, match="recomputed"):  # a changed config is not served from the cache
        experiment.main([*args, "eval.num_samples=2"])
    with (model / "config.json").open("a") as f:  # nor are other model files at the same path
        f.write("\n")
    with pytest.raises(AssertionError, match="recomputed"):
        experiment.main(args)


def test_overrides_may_follow_the_list_options(monkeypatch, tmp_path):
    class Stop(Exception):
        pass

    def capture(cfg, *_):
        raise Stop(cfg)

    monkeypatch.setattr(experiment_runs, "base_model", capture)
    with pytest.raises(Stop) as stop:
        experiment.main(["--seeds", "3", "--arms", "rlsc_l1", "steps=7", "--output", str(tmp_path), "optim.lr=2e-5"])
    cfg = stop.value.args[0]
    assert (cfg.steps, cfg.optim.lr, cfg.seed) == (7, 2e-5, 3)


@pytest.mark.parametrize("args,needle", [
    (["stepz=3"], "unknown config key 'stepz'; did you mean 'steps'?"),
    (["--config", "{tmp}/missing.yaml"], "missing.yaml: config file not found"),
    (["--output", "{tmp}/a_file"], "a_file': cannot create the directory"),
    (["--arms", "rlsc_l1", "optim.lr=-1"], "optim.lr=-1.0: must be finite and > 0"),
    (["--arms", "rlsc_l1", "--eval-steps", "1", "optim.schedule=cosine"], "needs optim.schedule=constant"),
])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.setattr(experiment_runs, "base_model", lambda *a: pytest.fail("ran despite bad input"))
    (tmp_path / "a_file").write_text("mine")
    argv = ["--seeds", "0", "--output", str(tmp_path / "exp"), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    assert experiment.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, interruptible_popen):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = interruptible_popen([sys.executable, "-m", "rlsc_jax.experiment", "--output", str(tmp_path), "--seeds",
                                "0", "--arms", "rlsc_l2", *TINY], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("== base model")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert proc.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted"), err
