"""Tests for the synthetic arithmetic task (rlsc_jax.synthetic) and the small BPE tokenizer (rlsc_jax.bpe)."""

from __future__ import annotations

import math
import random
import re

import pytest
from transformers import AutoTokenizer

from rlsc_jax.bpe import train_tokenizer
from rlsc_jax.synthetic import (
    MAX_VALUE,
    SyntheticProblem,
    make_problem,
    solution_with_slips,
)
from rlsc_jax.synthetic_splits import split_of, split_problems, split_questions
from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids, load_tokenizer

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
BOXED = re.compile(r"The answer is \\boxed\{(\d+)\}\.$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def parse_solution(text: str) -> tuple[list[tuple[int, str, int, int]], str]:
    """The (left, op, right, result) steps and the boxed answer of a solution text."""
    steps = [(int(a), op, int(b), int(c)) for a, op, b, c in STEP.findall(text)]
    boxed = BOXED.search(text)
    assert boxed is not None, text
    return steps, boxed.group(1)


def question_numbers(question: str) -> list[int]:
    """The numbers a question states, in order, with "doubles"/"triples" read as 2 and 3."""
    return [int(n) for n in re.findall(r"\d+", question.replace("doubles", "2").replace("triples", "3"))]


@pytest.fixture(scope="module")
def problems() -> list[SyntheticProblem]:
    return split_problems("pretrain", 600) + split_problems("train", 200) + split_problems("heldout", 200)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, problems):
    texts = [p.question for p in problems] + [p.solution for p in problems]
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=512).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


# ---- task ----


def test_deterministic():
    assert split_questions("train", 40, seed=3) == split_questions("train", 40, seed=3)
    assert split_questions("train", 40, seed=3) != split_questions("train", 40, seed=4)
    assert split_questions("heldout", 60)[:25] == split_questions("heldout", 25)
    assert make_problem(random.Random(7)) == make_problem(random.Random(7))


def test_splits_disjoint_and_distinct():
    splits = {name: split_questions(name, 300, seed=s) for s, name in enumerate(("pretrain", "train", "heldout"))}
    texts = {name: {p.question for p in ps} for name, ps in splits.items()}
    for name, ps in splits.items():
        assert len(texts[name]) == len(ps) == 300
        assert len({p.id for p in ps}) == 300
        assert all(split_of(p.question) == name for p in ps)
    assert not texts["train"] & texts["heldout"]
    assert not texts["pretrain"] & (texts["train"] | texts["heldout"])
    with pytest.raises(ValueError, match="unknown split"):
        split_questions("test", 1)


def test_solutions_are_correct(problems):
    for p in problems:
        steps, boxed = parse_solution(p.solution)
        assert 2 <= len(steps) == len(p.steps) <= 4
        assert [(s.left, s.op, s.right, s.result) for s in p.steps] == steps
        for i, (a, op, b, c) in enumerate(steps):
            assert OPS[op](a, b) == c and 0 <= c < MAX_VALUE
            if i:
                assert a == steps[i - 1][3]
        assert boxed == p.answer == str(steps[-1][3])
        assert question_numbers(p.question) == [steps[0][0]] + [b for _, _, b, _ in steps]
        assert 12 <= len(p.question.split()) <= 50


def test_no_slips_is_reference(problems):
    rng = random.Random(0)
    assert all(solution_with_slips(p, rng, 0.0) == p.solution for p in problems)


def test_slips_make_answer_wrong(problems):
    rng = random.Random(1)
    for p in problems:
        steps, boxed = parse_solution(solution_with_slips(p, rng, 1.0))
        assert boxed != p.answer
        for i, (a, op, b, c) in enumerate(steps):
            assert OPS[op](a, b) != c and c >= 0  # every step slipped, none went negative
            assert a == (steps[i - 1][3] if i else p.steps[0].left)  # continues from the written value
            assert b == p.steps[i].right


def test_slip_rate_matches_theory(problems):
    """Wrong iff some step slipped, and the wrong-answer count is within 5 sigma of sum 1-(1-p)^steps."""
    rng, slip_prob = random.Random(2), 0.15
    pool = problems * 4
    wrong, mean, var = 0, 0.0, 0.0
    for p in pool:
        steps, boxed = parse_solution(solution_with_slips(p, rng, slip_prob))
        slipped = any(OPS[op](a, b) != c for a, op, b, c in steps)
        assert (boxed != p.answer) == slipped
        wrong += slipped
        q = 1 - (1 - slip_prob) ** len(p.steps)
        mean, var = mean + q, var + q * (1 - q)
    assert abs(wrong - mean) < 5 * math.sqrt(var), (wrong, mean, var)


# ---- tokenizer ----


def test_chat_template(tok, tokenizer_dir):
    user = [{"role": "user", "content": "Q?"}]
    system = [{"role": "system", "content": "S."}] + user
    assert tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(system, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n"
    )
    lead = load_tokenizer(tokenizer_dir)
    ids = chat_prompt_ids(lead, "Q?", system="S.")
    assert lead.decode(ids) == "<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(lead.convert_tokens_to_ids("<|im_start|>")) == 3


def test_round_trip(tok, problems):
    rng = random.Random(3)
    texts = [p.solution for p in problems] + [solution_with_slips(p, rng, 0.5) for p in problems]
    texts += [p.question for p in problems] + ["héllo wörld 😀  \n\t x  12.5 ", " leading and trailing  "]
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_single_tokens(tok, problems):
    for d in "0123456789":
        assert len(tok(d, add_special_tokens=False)["input_ids"]) == 1
    assert [tok.decode([i]) for i in tok("x 1234", add_special_tokens=False)["input_ids"]][-4:] == list("1234")
    for p in problems[:100]:
        for i in tok(p.solution, add_special_tokens=False)["input_ids"]:
            piece = tok.decode([i])
            assert not any(c.isdigit() for c in piece) or len(piece) == 1


def test_special_tokens(tok, tokenizer_dir):
    assert len(tok) == 512
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == im_end
    assert tok.pad_token == "<|endoftext|>"
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [im_end]
    assert im_end in eos_ids(load_tokenizer(tokenizer_dir))
