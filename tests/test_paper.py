"""The paper's pipeline end to end on the shipped default model at a tiny size: plan, base evaluation, training,
the trained model's evaluation, the before/after table; a rerun resumes every part without redoing any."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlsc_jax import paper

TINY = ["steps=2", "questions_per_step=2", "sampling.num_samples=4", "sampling.max_new_tokens=16",
        "data.num_questions=8", "eval.num_questions=0", "checkpoint_every=1"]
EVAL = ["--benchmarks", "gsm8k", "--limit", "2", "--eval-set", "max_new_tokens=8"]


@pytest.mark.slow
def test_the_pipeline_plans_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The plan runs as a subprocess for this host's 8 (simulated) devices before anything else (2 minutes on
    2 busy cores: its compilations, hence slow)."""
    out = tmp_path / "run"
    assert paper.main([*EVAL, f"output_dir={out}", *TINY]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["rows"] == 8 and plan["devices"] == 8 and plan["model"]["num_layers"] == 4
    assert printed.index("== plan: 8 devices") < printed.index("== evaluate the base model")


def test_the_pipeline_runs_end_to_end_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert paper.main([*EVAL, "--no-plan", f"output_dir={out}", *TINY]) == 0
    printed = capsys.readouterr().out
    assert not (out / "plan.json").exists()
    before, after = (json.loads((out / d / "results.json").read_text()) for d in ("eval-base", "eval-final"))
    assert before["protocol"] == after["protocol"] == "qwen-math" and after["model"] == str((out / "final").resolve())
    assert before["config"] == after["config"] and before["benchmarks"]["gsm8k"]["problems"] == 2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "eval-final" / "pass_at_k.png").stat().st_size > 0
    table = (out / "before_after.md").read_text()
    length = before["benchmarks"]["gsm8k"]["mean_length"], after["benchmarks"]["gsm8k"]["mean_length"]
    assert "## gsm8k (2 problems)" in table and f"| mean_length | {length[0]:.1f} | {length[1]:.1f} |" in table
    assert printed.index("== evaluate the base model") < printed.index("== train") < printed.index(
        "== evaluate the trained model") < printed.index("paper pipeline done")

    records = {d: (out / d / "gsm8k.jsonl").read_text() for d in ("eval-base", "eval-final")}
    metrics = (out / "metrics.jsonl").read_text()
    assert paper.main([*EVAL, "--no-plan", f"output_dir={out}", *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("gsm8k: 2 problems, 2 already in") == 2 and "== plan" not in printed
    assert {d: (out / d / "gsm8k.jsonl").read_text() for d in records} == records
    assert (out / "metrics.jsonl").read_text() == metrics and (out / "before_after.md").read_text() == table


def test_bad_input_is_one_line_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert paper.main(["--limit", "0", f"output_dir={tmp_path / 'run'}"]) == 2
    assert paper.main([f"output_dir={tmp_path / 'run'}", "export_final=false"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --limit 0: must be >= 1",
                   "error: export_final=false: the pipeline evaluates the trained model's final/"]
    assert not (tmp_path / "run").exists()
