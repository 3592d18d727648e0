"""Evaluation: pass@k / maj@k summaries, budgets, resumable records, eval.py end to end (protocols, seeds,
--compare, the weights fingerprint) and its bad-input errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from rlsc_jax.benchmarks import BENCHMARKS, Problem, build_messages
from rlsc_jax.eval import main
from rlsc_jax.files import exclusive_dir
from rlsc_jax.evaluation import logprob_profile, make_record, summarize, token_budget
from rlsc_jax.records import read_records
from rlsc_jax.report import truncation_warning

REPO = Path(__file__).resolve().parents[1]


def _record(correct: list[bool], lengths: list[int] | None = None) -> dict:
    """A graded record with just the fields `summarize` reads."""
    n = len(correct)
    return {"correct": correct, "groups": [0 if c else 1 for c in correct], "lengths": lengths or [10] * n,
            "truncated": [False] * n, "majority_correct": False}


def test_pass_at_k_matches_subset_enumeration() -> None:
    """pass@k = the chance that a random k-subset of the n samples holds a correct one, averaged over problems."""
    records = [_record(c) for c in ([1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1] * 6,
                                    [0, 0, 0, 0, 0, 1])]
    summary = summarize(records)
    assert [k for k in summary if k.startswith("pass@")] == ["pass@1", "pass@2", "pass@4", "pass@6"]
    for k in (1, 2, 4, 6):
        brute = [sum(any(r["correct"][i] for i in subset) for subset in itertools.combinations(range(6), k))
                 / len(list(itertools.combinations(range(6), k))) for r in records]
        assert summary[f"pass@{k}"] == pytest.approx(sum(brute) / len(brute))
    assert summary["mean@6"] == summary["accuracy"] == pytest.approx(11 / 30)


def test_majority_vote_counts_equivalent_answers() -> None:
    """Votes are grouped up to math equivalence: three ways of writing 1/2 outvote two 3s."""
    right = make_record(Problem("a", "q", "\\frac{1}{2}"),
                        ["\\boxed{0.5}", "\\boxed{3}", "so \\boxed{\\frac12}", "\\boxed{3}", "The answer is 1/2."],
                        [5, 6, 7, 8, 9], [False] * 5)
    assert right["answers"] == ["0.5", "3", "\\frac12", "3", "1/2"]
    assert right["correct"] == [True, False, True, False, True]
    assert right["majority"] == "0.5" and right["majority_correct"]
    wrong = make_record(Problem("b", "q", "5"), ["\\boxed{7}", "\\boxed{7.0}", "\\boxed{14/2}", "\\boxed{5}", "?"],
                        [1, 1, 1, 1, 1], [False, False, False, False, True])
    assert wrong["majority"] == "7" and not wrong["majority_correct"]
    summary = summarize([right, wrong])
    assert summary["maj@5"] == 0.5
    assert summary["mean@5"] == pytest.approx(4 / 10)
    assert summary["mean_length"] == pytest.approx(4.0)
    assert summary["truncated_frac"] == pytest.approx(0.1)


def test_greedy_summary_has_accuracy_only() -> None:
    records = [_record([True], [4]), _record([False], [8]), _record([False], [6])]
    for record, logprob_sum in zip(records, (-2.0, -4.0, -3.0)):
        record["logprob_sums"] = [logprob_sum]
    summary = summarize(records)
    assert summary == dict(problems=3, num_samples=1, accuracy=pytest.approx(1 / 3), mean_length=6.0,
                           truncated_frac=0.0, mean_token_nll=pytest.approx(9 / 18))


def test_logprob_profile_counts_negligible_and_underflowed_p_old() -> None:
    """Median and fraction below the threshold over every sample; p_old underflows (exactly 0 in fp32 under XLA,
    which flushes subnormals) below about −87.3, not at −80."""
    records = [{"logprob_sums": [-0.5, -20.0, -31.0, -80.0]}, {"logprob_sums": [-88.0, -120.0, -40.0, -2.0]}]
    profile = logprob_profile(records)
    assert profile["samples"] == 8 and profile["median"] == pytest.approx(-35.5)
    assert profile["below_threshold_frac"] == 5 / 8 and profile["p_old_underflow_frac"] == 2 / 8
    assert logprob_profile(records, threshold=-1.0)["below_threshold_frac"] == 7 / 8
    assert profile["q10"] < profile["median"] < profile["q90"]
    with pytest.raises(ValueError, match="no samples"):
        logprob_profile([{"logprob_sums": []}])


def test_read_records_drops_partial_last_line_and_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    full = '{"id": "1", "x": 1}\n{"id": "2", "x": 2}\n'
    path.write_text(full + '{"id": "3", "x"')
    records, size = read_records(path)
    assert list(records) == ["1", "2"] and size == len(full)
    path.write_text('{"id": "1"}\nnot json\n{"id": "3"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2:"):
        read_records(path)


def _eval(model: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """`python eval.py` on GSM8K with 16 new tokens, as a user runs it (a setting amid the options), from another
    directory and with no --data-dir: the benchmarks shipped in the package."""
    return subprocess.run([sys.executable, str(REPO / "eval.py"), "--model", str(model), "max_new_tokens=16",
                           "--benchmarks", "gsm8k", "--limit", str(limit), "--output-dir", str(out)],
                          cwd=out.parent, capture_output=True, text=True, timeout=300)


def test_eval_cli_end_to_end_and_resume(tiny_model: Path, tmp_path: Path) -> None:
    """Two problems, an interrupted write of a third, then four: only problems 3 and 4 are generated."""
    out = tmp_path / "out"
    first = _eval(tiny_model, out, limit=2)
    assert first.returncode == 0, first.stderr
    records_path = out / "gsm8k.jsonl"
    before = records_path.read_text().splitlines()
    assert len(before) == 2
    with records_path.open("a") as f:
        f.write('{"id": "2", "question": "Jo')  # an interrupted append
    second = _eval(tiny_model, out, limit=4)
    assert second.returncode == 0, second.stderr
    assert "gsm8k: 4 problems, 2 already in" in second.stdout and "2 to generate" in second.stdout
    lines = records_path.read_text().splitlines()
    assert lines[:2] == before and len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ["0", "1", "2", "3"]
    for r in records:
        assert len(r["completions"]) == len(r["answers"]) == len(r["correct"]) == 1
        assert 1 <= r["lengths"][0] <= 16 and (r["lengths"][0] == 16 or not r["truncated"][0])
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["max_new_tokens"] == 16
    summary = results["benchmarks"]["gsm8k"]
    assert summary["problems"] == 4 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["mean_length"] == pytest.approx(sum(r["lengths"][0] for r in records) / 4)
    assert "| benchmark | problems | greedy | mean length | truncated % |" in second.stdout
    assert "| gsm8k | 4 |" in second.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "gsm9k"], f"unknown benchmark 'gsm9k'; known: {', '.join(BENCHMARKS)}"),
        (["--benchmarks", "gsm8k", "--data-dir", "{tmp}/nowhere"], "nowhere: benchmark data directory not found"),
        (["--benchmarks", "gsm8k", "--data-dir", "{tmp}"], "gsm8k.jsonl: benchmark file not found"),
        (["--jsonl", "{tmp}/bad.jsonl"], "bad.jsonl:2: malformed JSON"),
        (["--jsonl", "{tmp}/bad.jsonl", "question_field=problem"], "bad.jsonl:1: missing field 'problem'"),
        (["--benchmarks", "gsm8k", "num_sample=4"], "unknown config key 'num_sample'; did you mean 'num_samples'?"),
        (["--benchmarks", "gsm8k", "mesh.fsd=2"], "did you mean 'mesh.fsdp'?"),
        (["--benchmarks", "gsm8k", "num_samples=4"], "num_samples=4 needs temperature > 0"),
        (["--benchmarks", "gsm8k", "template=chat"], "unknown prompt template 'chat'; known: qwen-math"),
        (["--model", "{tmp}/no_model"], "no_model: model directory not found"),
        (["--benchmarks", "gsm8k", "--protocol", "lighteval"], "unknown protocol 'lighteval'; known: qwen-math, paper"),
        (["--benchmarks", "gsm8k", "top_p=1.5"], "top_p=1.5: must be in (0, 1]"),
        (["--benchmarks", "gsm8k", "--seeds", "0", "1"], "'qwen-math' at temperature 0 is greedy"),
        (["--benchmarks", "gsm8k", "--protocol", "paper", "seed=3", "--seeds", "0", "1"], "either --seeds or seed="),
        (["--benchmarks", "gsm8k", f"seed={2**70}"], f"seed={2**70}: must be a 64-bit integer"),
        (["--benchmarks", "gsm8k", "--protocol", "paper", "--seeds", "0", f"{2**70}"], f"--seeds={2**70}: must be"),
        (["--jsonl", "{tmp}/good.jsonl", "--output-dir", "{tmp}/bad.jsonl"], "bad.jsonl: exists and is not a directory"),
    ],
)
def test_bad_input_is_one_line_error(args: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer":\n')
    (tmp_path / "good.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    argv = ["--model", str(tmp_path)] + [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err


def test_plain_template_is_the_bare_question() -> None:
    assert build_messages("plain", "What is 2+2?") == (None, "What is 2+2?")


def test_token_budget_caps_at_the_models_positions() -> None:
    assert token_budget(2048, {"a": 100, "b": 300}, 4096) == (2048, None)
    budget, note = token_budget(32768, {"a": 100, "b": 300}, 4096)
    assert budget == 3796 and note.startswith("note: max_new_tokens 32768 capped to 3796") and "\n" not in note
    with pytest.raises(ValueError, match="2 of 3 prompts leave no room for a new token in the model's 300 positions "
                                         r"\(the first, problem 'b', has 300 tokens\)"):
        token_budget(16, {"a": 100, "b": 300, "c": 301}, 300)


def test_truncation_warning_above_five_percent() -> None:
    assert truncation_warning("aime24", {"truncated_frac": 0.05}) is None
    line = truncation_warning("aime24", {"truncated_frac": 0.2, "max_new_tokens": 2048})
    assert line == ("warning: aime24: 20.0% of completions hit max_new_tokens (2048) without EOS, so its accuracy "
                    "is a lower bound")
    assert "greedy completions" in truncation_warning("held-out", {"truncated_frac": 0.0, "greedy_truncated_frac": 0.1})


def _main(model: Path, data_dir: Path, out: Path, *args: str) -> int:
    """eval.py in-process on the first two GSM8K problems."""
    return main(["--model", str(model), "--benchmarks", "gsm8k", "--limit", "2", "--data-dir", str(data_dir),
                 "--output-dir", str(out), *args])


def test_protocols_are_recorded_and_budgets_capped(tiny_model: Path, benchmark_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The default protocol is greedy with 2048 new tokens, capped at the tiny model's 1024 positions with a
    note; `paper` with an override records both; truncation shows in the table with its warning."""
    assert _main(tiny_model, benchmark_dir, tmp_path / "qm") == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "qm" / "results.json").read_text())
    budget = results["benchmarks"]["gsm8k"]["max_new_tokens"]
    assert results["protocol"] == "qwen-math" and results["overrides"] == {}
    assert results["config"]["max_new_tokens"] == 2048 and 700 < budget < 1024 - 16
    assert f"note: max_new_tokens 2048 capped to {budget}" in out and "protocol: qwen-math\n" in out
    settings = json.loads((tmp_path / "qm" / "settings.json").read_text())
    assert settings["protocol"] == "qwen-math" and set(settings["weights"]) == {"model.safetensors"}
    assert _main(tiny_model, benchmark_dir, tmp_path / "paper", "--protocol", "paper", "max_new_tokens=8",
                 "num_samples=4") == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "paper" / "results.json").read_text())
    summary = results["benchmarks"]["gsm8k"]
    assert results["protocol"] == "paper" and results["overrides"] == {"num_samples": 4, "max_new_tokens": 8}
    assert results["config"]["template"] == "rlsc-paper" and results["config"]["temperature"] == 0.7
    assert [k for k in summary if k.startswith(("maj@", "pass@"))] == ["maj@1", "maj@2", "maj@4", "pass@1", "pass@2",
                                                                       "pass@4"]
    assert "mean@4_stderr" in summary and "| mean@4 | ± se | maj@4 | pass@2 | pass@4 |" in out  # pass@1 = mean@4
    assert "no longer the protocol as published" in out
    assert summary["truncated_frac"] > 0.05 and "warning: gsm8k:" in out and "lower bound" in out
    assert (tmp_path / "paper" / "pass_at_k.png").stat().st_size > 0


def test_seeds_report_mean_and_sd_and_compare_plots_both(tiny_model: Path, benchmark_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    sampled = ["--protocol", "paper", "max_new_tokens=8", "num_samples=2"]
    assert _main(tiny_model, benchmark_dir, tmp_path / "base", *sampled) == 0
    assert _main(tiny_model, benchmark_dir, tmp_path / "seeds", *sampled, "--compare", str(tmp_path / "base"),
                 "--seeds", "0", "1", "2") == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "seeds" / "results.json").read_text())
    assert results["seeds"] == [0, 1, 2] and sorted(results["per_seed"]) == ["0", "1", "2"]
    per_seed = [results["per_seed"][s]["gsm8k"]["mean_length"] for s in ("0", "1", "2")]
    assert results["benchmarks"]["gsm8k"]["mean_length"] == pytest.approx(sum(per_seed) / 3)
    assert results["sd"]["gsm8k"]["mean_length"] > 0 and " ± " in out.split("| gsm8k |")[-1]
    assert all((tmp_path / "seeds" / f"seed-{s}" / "gsm8k.jsonl").is_file() for s in (0, 1, 2))
    assert (tmp_path / "seeds" / "pass_at_k.png").stat().st_size > 0


@pytest.mark.parametrize("other_args, message", [
    (["--protocol", "paper", "max_new_tokens=8", "num_samples=2"],
     "made with protocol 'paper', this run with 'qwen-math'"),
    (["--limit", "1"], "benchmarks {'gsm8k': 1} (name: problems), this run {'gsm8k': 2}"),
])
def test_compare_needs_the_same_protocol_and_benchmarks(tiny_model: Path, benchmark_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture, other_args: list[str],
                                                        message: str) -> None:
    assert _main(tiny_model, benchmark_dir, tmp_path / "other", "max_new_tokens=8", *other_args) == 0
    capsys.readouterr()
    assert _main(tiny_model, benchmark_dir, tmp_path / "new", "max_new_tokens=8", "--compare",
                 str(tmp_path / "other")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --compare") and message in err
    assert not (tmp_path / "new").exists()


def test_changed_weights_at_the_same_path_refuse_to_resume(tiny_model: Path, benchmark_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Same path, same settings, one weight changed: one line, exit 2, the records left as they were."""
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    assert _main(model, benchmark_dir, tmp_path / "out", "max_new_tokens=8") == 0
    records = (tmp_path / "out" / "gsm8k.jsonl").read_text()
    tensors = load_file(str(model / "model.safetensors"))
    name = min(tensors)
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert _main(model, benchmark_dir, tmp_path / "out", "max_new_tokens=8", "--limit", "3") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.safetensors differ" in err and "another --output-dir" in err
    assert (tmp_path / "out" / "gsm8k.jsonl").read_text() == records
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    del settings["weights"]  # as an older eval.py wrote it
    (tmp_path / "out" / "settings.json").write_text(json.dumps(settings))
    assert _main(model, benchmark_dir, tmp_path / "out", "max_new_tokens=8") == 2
    assert "did not record the weights' hash" in capsys.readouterr().err


def test_a_second_eval_on_a_held_output_dir_fails_at_once(tiny_model: Path, benchmark_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    with exclusive_dir(out, "--output-dir"):
        assert _main(tiny_model, benchmark_dir, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output-dir=") and "in use by another run" in err and "\n" not in err, err
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_a_prompt_too_long_for_the_model_fails_before_anything_is_written(tiny_model: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """A question whose prompt fills the model's 1024 positions: one line naming the benchmark, the problem, how
    many and the limit, before the model is loaded or the output dir made."""
    rows = [{"question": "What is 1+1?", "answer": "2"}, {"question": "How many apples? " * 400, "answer": "3"}]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--model", str(tiny_model), "--jsonl", str(tmp_path / "long.jsonl"),
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert err.startswith("error: long: 1 of 2 prompts leave no room for a new token in the model's 1024 positions "
                          "(the first, problem '2', has "), err


def test_a_failed_eval_leaves_no_settings_and_the_retry_may_change_them(
        tiny_model: Path, benchmark_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An eval that fails before its first record writes no settings.json and no records file, so a retry with
    other settings runs; a settings.json without records (as older versions left) binds nothing either."""
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise ValueError("the sampler failed")
    monkeypatch.setattr("rlsc_jax.evaluation.sample", broken)
    assert _main(tiny_model, benchmark_dir, out, "max_new_tokens=8") == 2
    assert "the sampler failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    (out / "settings.json").write_text(json.dumps({"model": "elsewhere", "max_new_tokens": 8, "weights": {}}))
    monkeypatch.undo()
    assert _main(tiny_model, benchmark_dir, out, "max_new_tokens=4") == 0
    assert json.loads((out / "settings.json").read_text())["max_new_tokens"] == 4
    assert len((out / "gsm8k.jsonl").read_text().splitlines()) == 2
