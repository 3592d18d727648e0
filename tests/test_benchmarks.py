"""Benchmark loading (the six JSONL files shipped in the package and user JSONL), its error messages, and prompt
templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlsc_jax.benchmarks import BENCHMARKS, PROMPTS, Problem, build_messages, load_benchmark, load_jsonl_problems


def _write(path: Path, lines: list[str]) -> Path:
    """A JSONL file holding exactly these lines."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, count",
    [("aime24", 30), ("amc23", 40), ("gsm8k", 1319), ("math500", 500), ("minerva_math", 272), ("olympiadbench", 675)],
)
def test_benchmark_sizes(benchmark_dir: Path, name: str, count: int) -> None:
    problems = load_benchmark(name, benchmark_dir)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.question.strip() and p.gold for p in problems)


def test_gold_extraction_rules(benchmark_dir: Path) -> None:
    """The first problem of each benchmark, gold answer as the data README's rules give it."""
    first = {name: load_benchmark(name, benchmark_dir, limit=1)[0] for name in BENCHMARKS}
    assert first["aime24"].gold == "204"
    assert first["amc23"].gold == "27.0"
    assert first["gsm8k"].gold == "18"
    assert first["math500"].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first["minerva_math"].gold == "1.6"
    assert first["olympiadbench"].gold == "2"
    assert first["gsm8k"].question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first["math500"].id == "test/precalculus/807.json"


def test_gold_edge_cases(benchmark_dir: Path) -> None:
    """AIME keeps leading zeros, GSM8K drops thousands commas, OlympiadBench drops every `$`."""
    assert "025" in {p.gold for p in load_benchmark("aime24", benchmark_dir)}
    gsm8k = [json.loads(line) for line in (benchmark_dir / "gsm8k.jsonl").read_text(encoding="utf-8").splitlines()]
    with_comma = next(i for i, row in enumerate(gsm8k) if "," in row["answer"].rsplit("####", 1)[1])
    assert "," not in load_benchmark("gsm8k", benchmark_dir)[with_comma].gold
    assert "69,84" in {p.gold for p in load_benchmark("olympiadbench", benchmark_dir)}  # raw: "$69$,$84$"


def test_limit(benchmark_dir: Path) -> None:
    assert [p.id for p in load_benchmark("math500", benchmark_dir, limit=3)] == [
        p.id for p in load_benchmark("math500", benchmark_dir)[:3]
    ]
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("math500", benchmark_dir, limit=0)


def test_unknown_benchmark_lists_known(benchmark_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'aime25'.*aime24, amc23, math500"):
        load_benchmark("aime25", benchmark_dir)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        load_benchmark("aime24", tmp_path / "nowhere")


def test_missing_benchmark_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="aime24.jsonl: benchmark file not found"):
        load_benchmark("aime24", tmp_path)


def test_user_jsonl(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.jsonl",
        ['{"id": "a", "q": "What is 1+1?", "ans": 2}', "", '{"q": "Half of 1?", "ans": "\\\\frac{1}{2}"}'],
    )
    assert load_jsonl_problems(path, "q", "ans") == [
        Problem(id="a", question="What is 1+1?", gold="2"),
        Problem(id="3", question="Half of 1?", gold="\\frac{1}{2}"),
    ]
    assert len(load_jsonl_problems(path, "q", "ans", limit=1)) == 1


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"q": "ok", "a": "1"}', '{"q": "broken", "a": '])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON") as info:
        load_jsonl_problems(path, "q", "a")
    assert "\n" not in str(info.value)


def test_non_object_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.jsonl", ['["q", "a"]'])
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object"):
        load_jsonl_problems(path, "q", "a")


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "fields.jsonl", ['{"q": "ok", "a": "1"}', '{"q": "no answer here"}'])
    with pytest.raises(ValueError, match=r"fields\.jsonl:2: missing field 'a'"):
        load_jsonl_problems(path, "q", "a")


def test_bad_answer_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "value.jsonl", ['{"q": "ok", "a": null}'])
    with pytest.raises(ValueError, match=r"value\.jsonl:1: field 'a' is not a string or number"):
        load_jsonl_problems(path, "q", "a")


def test_benchmark_rule_failure_names_line(tmp_path: Path) -> None:
    _write(tmp_path / "gsm8k.jsonl", ['{"question": "q", "answer": "no final marker", "idx": 0}'])
    with pytest.raises(ValueError, match=r"gsm8k\.jsonl:1: field 'answer' has no '####'"):
        load_benchmark("gsm8k", tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no problems"):
        load_jsonl_problems(path, "q", "a")


def test_prompt_templates() -> None:
    question = "What is $\\{1\\}$?"
    assert build_messages("qwen-math", question) == (
        "Please reason step by step, and put your final answer within \\boxed{}.",
        question,
    )
    assert build_messages("rlsc-paper", question) == (
        None,
        "Problem: What is $\\{1\\}$?\nMark your solution with \\boxed\nAnswer:",
    )
    assert set(PROMPTS) == {"qwen-math", "rlsc-paper", "plain"}


def test_unknown_prompt_template_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'.*qwen-math, rlsc-paper"):
        build_messages("chatml", "q")
