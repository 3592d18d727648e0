"""Question sources for training (unlabeled) and held-out evaluation (gold kept)."""

import json

import pytest

from rlsc_jax.benchmarks import BENCHMARK_DIR
from rlsc_jax.data import load_questions


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(3)))
    return path


def test_jsonl_training_questions_are_unlabeled(jsonl):
    problems = load_questions(str(jsonl))
    assert [p.question for p in problems] == ["What is 0 + 1?", "What is 1 + 1?", "What is 2 + 1?"]
    assert {p.gold for p in problems} == {""}


def test_jsonl_eval_questions_keep_gold(jsonl):
    assert [p.gold for p in load_questions(str(jsonl), answer_field="answer", num_questions=2)] == ["1", "2"]


def test_jsonl_eval_without_answers_is_one_line_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: missing field 'answer'"):
        load_questions(str(path), answer_field="answer")


def test_synthetic_heldout_has_gold():
    problems = load_questions("synthetic", num_questions=5, split="heldout")
    assert len(problems) == 5 and all(p.gold for p in problems)


def test_a_non_utf8_jsonl_is_one_line_naming_the_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "a"}\n' + '{"question": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{path}:2: not UTF-8 text \\(byte 0xe9 at column 18\\)$"):
        load_questions(str(path))


def test_offset_takes_a_disjoint_slice(jsonl):
    """A benchmark's tail for training and its head for evaluation: `offset` skips the first questions."""
    assert [p.gold for p in load_questions(str(jsonl), answer_field="answer", offset=1)] == ["2", "3"]
    assert [p.gold for p in load_questions(str(jsonl), answer_field="answer", offset=1, num_questions=1)] == ["2"]
    head = load_questions("gsm8k", data_dir=BENCHMARK_DIR, answer_field="answer", num_questions=200)
    tail = load_questions("gsm8k", data_dir=BENCHMARK_DIR, answer_field="answer", offset=1119)
    assert len(head) == 200 and len(tail) == 200 and not {p.id for p in head} & {p.id for p in tail}
    synthetic = load_questions("synthetic", num_questions=4)
    assert load_questions("synthetic", num_questions=2, offset=2) == synthetic[2:]
    with pytest.raises(ValueError, match="no questions after the first 3"):
        load_questions(str(jsonl), offset=3)
