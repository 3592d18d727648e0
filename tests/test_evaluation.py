"""Evaluation: pass@k and maj@n summaries, resumable records, eval.py end to end, and its bad-input errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlsc_jax.benchmarks import BENCHMARKS, Problem, build_messages, load_benchmark
from rlsc_jax.bpe import train_tokenizer
from rlsc_jax.eval_cli import main
from rlsc_jax.evaluation import make_record, read_records, summarize
from tests.hf_models import make_hf_model

REPO = Path(__file__).resolve().parents[1]


def _record(correct: list[bool], lengths: list[int] | None = None) -> dict:
    """A graded record with just the fields `summarize` reads."""
    n = len(correct)
    return dict(correct=correct, lengths=lengths or [10] * n, truncated=[False] * n, majority_correct=False)


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


def test_read_records_drops_partial_last_line_and_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    full = '{"id": "1", "x": 1}\n{"id": "2", "x": 2}\n'
    path.write_text(full + '{"id": "3", "x"')
    records, size = read_records(path)
    assert list(records) == ["1", "2"] and size == len(full)
    path.write_text('{"id": "1"}\nnot json\n{"id": "3"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2:"):
        read_records(path)


@pytest.fixture(scope="module")
def tiny_model(benchmark_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 whose vocabulary is a BPE tokenizer trained on GSM8K questions, in one HF directory."""
    tok = train_tokenizer([p.question for p in load_benchmark("gsm8k", benchmark_dir, limit=200)], vocab_size=320)
    model = make_hf_model("qwen2", vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id,
                          max_position_embeddings=1024)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _eval(model: Path, data_dir: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """`python eval.py` on GSM8K with 16 new tokens, as a user runs it (a setting amid the options)."""
    return subprocess.run([sys.executable, "eval.py", "--model", str(model), "max_new_tokens=16", "--benchmarks",
                           "gsm8k", "--limit", str(limit), "--data-dir", str(data_dir), "--output-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_eval_cli_end_to_end_and_resume(tiny_model: Path, benchmark_dir: Path, tmp_path: Path) -> None:
    """Two problems, an interrupted write of a third, then four: only problems 3 and 4 are generated."""
    out = tmp_path / "out"
    first = _eval(tiny_model, benchmark_dir, out, limit=2)
    assert first.returncode == 0, first.stderr
    records_path = out / "gsm8k.jsonl"
    before = records_path.read_text().splitlines()
    assert len(before) == 2
    with records_path.open("a") as f:
        f.write('{"id": "2", "question": "Jo')  # an interrupted append
    second = _eval(tiny_model, benchmark_dir, out, limit=4)
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
        (["--benchmarks", "gsm8k"], "benchmark 'gsm8k' needs --data-dir"),
        (["--benchmarks", "gsm8k", "--data-dir", "{tmp}/nowhere"], "nowhere: benchmark data directory not found"),
        (["--benchmarks", "gsm8k", "--data-dir", "{tmp}"], "gsm8k.jsonl: benchmark file not found"),
        (["--jsonl", "{tmp}/bad.jsonl"], "bad.jsonl:2: malformed JSON"),
        (["--jsonl", "{tmp}/bad.jsonl", "question_field=problem"], "bad.jsonl:1: missing field 'problem'"),
        (["--benchmarks", "gsm8k", "num_sample=4"], "unknown config key 'num_sample'; did you mean 'num_samples'?"),
        (["--benchmarks", "gsm8k", "mesh.fsd=2"], "did you mean 'mesh.fsdp'?"),
        (["--benchmarks", "gsm8k", "num_samples=4"], "num_samples=4 needs temperature > 0"),
        (["--benchmarks", "gsm8k", "template=chat"], "unknown prompt template 'chat'; known: qwen-math"),
        (["--model", "{tmp}/no_model"], "no_model: model directory not found"),
    ],
)
def test_bad_input_is_one_line_error(args: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer":\n')
    argv = ["--model", str(tmp_path)] + [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err


def test_plain_template_is_the_bare_question() -> None:
    assert build_messages("plain", "What is 2+2?") == (None, "What is 2+2?")
