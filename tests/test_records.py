"""Journals: a decoding pass's records kept under a key, resumed only under the same key, and an interrupted
sampled pass that resumes draws what an uninterrupted one draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlsc_jax import evaluation, hf
from rlsc_jax.benchmarks import load_benchmark
from rlsc_jax.config import SamplingConfig
from rlsc_jax.records import Journal
from rlsc_jax.tokenizer import load_tokenizer


def _record(i: int) -> dict:
    return {"id": str(i), "x": i}


def test_a_journal_resumes_under_its_key_and_starts_over_under_another(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "sub" / "eval", {"weights": "step 3"})
    first = journal.open("greedy", {"seed": 0})
    assert first.done == {} and not first.path.exists()  # nothing written before the first record
    for i in range(3):
        first.append(_record(i))
    assert first.path == tmp_path / "sub" / "eval-greedy.jsonl"
    with first.path.open("a") as f:
        f.write('{"id": "3", "x"')  # an interrupted append
    again = journal.open("greedy", {"seed": 0})
    assert again.done == {str(i): _record(i) for i in range(3)}
    again.append(_record(3))
    assert journal.open("greedy", {"seed": 0}).done == {str(i): _record(i) for i in range(4)}
    lines = first.path.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0]) == {"journal": {"key": {"weights": "step 3"}, "seed": 0}}
    for other in (Journal(journal.stem, {"weights": "step 4"}).open("greedy", {"seed": 0}),
                  journal.open("greedy", {"seed": 1})):
        assert other.done == {}  # another model or other settings: nothing reused ...
    other.append(_record(9))  # ... and the first new record replaces the file
    assert first.path.read_text().splitlines()[1:] == [json.dumps(_record(9))]
    first.path.write_text(lines[0] + "\nnot json\n")
    assert journal.open("greedy", {"seed": 0}).done == {}  # a damaged journal is decoded again, not an error


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_an_interrupted_pass_resumes_where_it_stopped_and_draws_the_same(
        tiny_model: Path, benchmark_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        temperature: float) -> None:
    """Five problems in batches of two: a pass stopped after its first two batches decodes only the fifth problem
    when run again, and its records equal an uninterrupted pass's, also when sampled (keys by batch position)."""
    model, tokenizer = hf.load(tiny_model), load_tokenizer(tiny_model)
    problems = load_benchmark("gsm8k", benchmark_dir, limit=5)
    sampling = SamplingConfig(num_samples=1 if temperature == 0 else 3, temperature=temperature, max_new_tokens=8)
    run = lambda journal: evaluation.evaluate_problems(  # noqa: E731
        model, tokenizer, problems, template="qwen-math", sampling=sampling, batch_size=2, seed=7, progress=False,
        journal=journal)
    whole, summary = run(None)
    journal = Journal(tmp_path / "eval", {"weights": "base"})
    calls = []
    real_sample = evaluation.sample

    def sample(model, prompts, **kwargs):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped while decoding the third batch
        return real_sample(model, prompts, **kwargs)

    monkeypatch.setattr(evaluation, "sample", sample)
    with pytest.raises(KeyboardInterrupt):
        run(journal)
    assert len(journal.open("greedy" if temperature == 0 else "T1x3", {}).path.read_text().splitlines()) == 5
    calls.clear()
    resumed, resumed_summary = run(journal)
    assert calls == [1]  # only the fifth problem decoded
    assert resumed == whole and resumed_summary == summary
    calls.clear()
    assert run(journal) == (whole, summary) and calls == []  # a finished pass decodes nothing
