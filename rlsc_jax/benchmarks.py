"""Math benchmarks (JSONL) as a list of problems with gold answers, and the prompt templates that pose them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The six test sets shipped in the package (provenance and licence beside them); `data.data_dir`'s default
BENCHMARK_DIR = Path(__file__).resolve().parent / "data" / "benchmarks"


@dataclass(frozen=True)
class Problem:
    """One question and its gold answer (a string for `grading.is_equivalent`)."""

    id: str
    question: str
    gold: str


def _plain(value: Any) -> str:
    """A string or number answer as a string, unchanged ("27.0" stays "27.0"; grading handles 27 vs 27.0)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("is not a string or number")
    return str(value).strip()


def _after_hashes(value: Any) -> str:
    """GSM8K: the text after the final `####`, thousands commas removed."""
    if not isinstance(value, str) or "####" not in value:
        raise ValueError("has no '####' final answer")
    return value.rsplit("####", 1)[1].strip().replace(",", "")


def _last_box(value: Any) -> str:
    """Minerva: the last balanced `\\boxed{}` of the worked solution."""
    from rlsc_jax.grading import last_boxed  # here: grading imports math-verify, slow for `eval.py --help`
    boxed = last_boxed(value) if isinstance(value, str) else None
    if boxed is None:
        raise ValueError("has no \\boxed{} answer")
    return boxed


def _first_without_dollars(value: Any) -> str:
    """OlympiadBench: the first element of the `final_answer` list, every `$` removed."""
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValueError("is not a non-empty list of strings")
    return value[0].replace("$", "").strip()


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark's question, gold answer and id live in its JSONL rows."""

    file: str
    question_field: str
    answer_field: str
    gold: Callable[[Any], str]  # raw answer field -> gold string; raises ValueError saying what is wrong
    id_field: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("aime24.jsonl", "problem", "answer", _plain, "id"),
    "amc23": BenchmarkSpec("amc23.jsonl", "question", "answer", _plain, "id"),
    "math500": BenchmarkSpec("math500.jsonl", "problem", "answer", _plain, "unique_id"),
    "minerva_math": BenchmarkSpec("minerva_math.jsonl", "problem", "solution", _last_box, "idx"),
    "olympiadbench": BenchmarkSpec("olympiadbench.jsonl", "question", "final_answer", _first_without_dollars, "id"),
    "gsm8k": BenchmarkSpec("gsm8k.jsonl", "question", "answer", _after_hashes, "idx"),
}


def _read_problems(
    path: Path, question_field: str, answer_field: str | None, gold: Callable[[Any], str], id_field: str,
    limit: int | None
) -> list[Problem]:
    """Problems from one JSONL file; every error is one line naming `file:line` (and the field).

    With `answer_field` None the questions are unlabeled (gold is "").
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of problems, got {limit}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    problems: list[Problem] = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if limit is not None and len(problems) >= limit:
                break
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = f"byte {raw[e.start]:#04x} at column {e.start + 1}"
                raise ValueError(f"{where}: not UTF-8 text ({bad})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for field in (question_field, answer_field):
                if field is not None and field not in row:
                    raise ValueError(f"{where}: missing field '{field}'")
            question = row[question_field]
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"{where}: field '{question_field}' is not a non-empty string")
            try:
                answer = gold(row[answer_field]) if answer_field is not None else ""
            except ValueError as e:
                raise ValueError(f"{where}: field '{answer_field}' {e}") from None
            problems.append(Problem(id=str(row.get(id_field, line_no)), question=question, gold=answer))
    if not problems:
        raise ValueError(f"{path}: no problems (empty file)")
    return problems


def load_benchmark(name: str, data_dir: str | Path, limit: int | None = None) -> list[Problem]:
    """The first `limit` (default all) problems of a named benchmark read from `data_dir`."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: benchmark data directory not found")
    spec = BENCHMARKS[name]
    return _read_problems(
        data_dir / spec.file, spec.question_field, spec.answer_field, spec.gold, spec.id_field, limit
    )


def load_jsonl_problems(
    path: str | Path, question_field: str, answer_field: str | None, limit: int | None = None
) -> list[Problem]:
    """Problems from any JSONL file whose answer field holds a plain answer (None: unlabeled questions);
    ids from `id` or the line number."""
    return _read_problems(Path(path), question_field, answer_field, _plain, "id", limit)


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt: optional system message and a user message with a `{problem}` slot."""

    system: str | None
    user: str


PROMPTS: dict[str, PromptTemplate] = {
    # Qwen2.5-Math's evaluation prompt.
    "qwen-math": PromptTemplate("Please reason step by step, and put your final answer within \\boxed{}.", "{problem}"),
    # The RLSC paper's prompt (no system message).
    "rlsc-paper": PromptTemplate(None, "Problem: {problem}\nMark your solution with \\boxed\nAnswer:"),
    # The question alone as the user message (no system prompt); the embedded default model is trained with it.
    "plain": PromptTemplate(None, "{problem}"),
}
DEFAULT_TEMPLATE = "qwen-math"


def build_messages(template: str, question: str) -> tuple[str | None, str]:
    """The (system, user) messages posing `question` with the named template."""
    if template not in PROMPTS:
        raise ValueError(f"unknown prompt template '{template}'; known: {', '.join(PROMPTS)}")
    prompt = PROMPTS[template]
    return prompt.system, prompt.user.format(problem=question)
