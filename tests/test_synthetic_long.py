"""The long-answer synthetic task (rlsc_jax.synthetic_long): answers parse, gold follows the chain, the phrasings
vary, splits are disjoint, generation is deterministic, and a model of the data puts a sample's log p below −30."""

from __future__ import annotations

import math
import random
import re
import statistics

import pytest

from rlsc_jax import synthetic_long as long_task
from rlsc_jax.data import load_questions
from rlsc_jax.grading import extract_answer
from rlsc_jax.synthetic_splits import split_of, split_problems, split_questions
from tests.test_synthetic import OPS, parse_solution as parse

STEP_NUMBERS = re.compile(r"[Ss]tep (\d+)(?:[:,]| is next:)")


def matches(calc: tuple[int, str, int, int], left: int, op: str, right: int) -> bool:
    """Whether a written calculation is the step `left op right` (+ and doubling in either order, or a + a)."""
    a, o, b, _ = calc
    if op == "-":
        return (a, o, b) == (left, "-", right)
    return (a, o, b) in {(left, op, right), (right, op, left)} or (op == "*" and (a, o, b) == (left, "+", left))


@pytest.fixture(scope="module")
def problems() -> list[long_task.LongProblem]:
    return split_problems("pretrain", 300, task="long") + split_problems("heldout", 100, task="long")


def test_reference_solutions_follow_the_chain(problems):
    for p in problems:
        calcs, boxed = parse(p.solution)
        assert long_task.MIN_STEPS <= len(p.steps) == len(calcs) <= long_task.MAX_STEPS
        for i, (step, calc) in enumerate(zip(p.steps, calcs)):
            assert matches(calc, step.left, step.op, step.right) and calc[3] == step.result
            assert OPS[step.op](step.left, step.right) == step.result and 1 <= step.result < long_task.MAX_VALUE
            if i:
                assert step.left == p.steps[i - 1].result
        assert boxed == p.answer == str(p.steps[-1].result) == extract_answer(p.solution)
        assert [int(k) for k in STEP_NUMBERS.findall(p.solution)] == list(range(1, len(p.steps) + 1))
        at = 0  # each step restates its event as the question words it, in order
        for event in p.events:
            at = p.solution.index(f" {p.pronoun} {event}", at) + 1
        # the question states the start, then every event with its operand in order ("doubles them": 2)
        assert re.findall(r"(?:First|Then) (?:he|she) ([^.]+)\.", p.question) == list(p.events)
        assert [re.findall(r"\d+", e) or ["2"] for e in p.events] == [[str(s.right)] for s in p.steps]
        assert re.findall(r"\d+", p.question.split(" First ")[0]) == [str(p.steps[0].left)]


def test_sampled_solutions_vary_and_stay_correct_without_slips(problems):
    rng = random.Random(0)
    for p in problems[:100]:
        texts = {p.sample_solution(rng, 0.0) for _ in range(8)}
        assert len(texts) == 8  # ~7 nats a step: eight draws never coincide
        for text in texts:
            calcs, boxed = parse(text)
            assert boxed == p.answer
            assert all(matches(c, s.left, s.op, s.right) and c[3] == s.result for c, s in zip(calcs, p.steps))


def test_slips_continue_from_the_written_value(problems):
    rng = random.Random(1)
    for p in problems[:200]:
        calcs, boxed = parse(p.sample_solution(rng, 1.0))
        assert boxed != p.answer and len(calcs) == len(p.steps)
        value = p.steps[0].left
        for calc, step in zip(calcs, p.steps):
            assert matches(calc, value, step.op, step.right)
            assert calc[3] != OPS[step.op](value, step.right) and calc[3] >= 0  # slipped, never negative
            value = calc[3]
        assert boxed == str(value)


def test_a_model_of_the_data_puts_log_p_below_minus_30(problems):
    """`solution_nats` is −log p of a fresh solution under the generator: what a model that learned the
    phrasings exactly gives its samples, at any temperature (uniform choices stay uniform)."""
    rng = random.Random(2)
    nats = [p.solution_nats(rng) for p in problems]
    assert statistics.median(nats) > 40 and sum(n > 30 for n in nats) / len(nats) > 0.9
    writer = long_task.Writer(random.Random(0))
    writer.pick("abcd"), writer.maybe(), writer.pick(long_task.LEADS)
    assert writer.nats == pytest.approx(math.log(4) + math.log(2) + math.log(len(long_task.LEADS)))


def test_deterministic_and_disjoint_splits():
    assert split_questions("train", 30, seed=3, task="long") == split_questions("train", 30, seed=3, task="long")
    assert split_questions("train", 30, seed=3, task="long") != split_questions("train", 30, seed=4, task="long")
    assert split_questions("heldout", 40, task="long")[:20] == split_questions("heldout", 20, task="long")
    assert long_task.make_problem(random.Random(5)) == long_task.make_problem(random.Random(5))
    splits = {name: split_questions(name, 200, task="long") for name in ("pretrain", "train", "heldout")}
    texts = {name: {p.question for p in ps} for name, ps in splits.items()}
    for name, ps in splits.items():
        assert len(texts[name]) == 200 and all(split_of(p.question) == name for p in ps)
        assert all(p.id == f"synthetic_long-{name}-{i}" for i, p in enumerate(ps))
    assert not texts["train"] & texts["heldout"] and not texts["pretrain"] & (texts["train"] | texts["heldout"])
    # the short task is unchanged by the second task: same questions, same ids
    assert split_questions("heldout", 3)[0].id == "synthetic-heldout-0"
    with pytest.raises(ValueError, match="unknown synthetic task"):
        split_problems("train", 1, task="medium")


def test_data_source():
    train = load_questions("synthetic_long", num_questions=5)
    heldout = load_questions("synthetic_long", num_questions=5, split="heldout")
    assert [p.id for p in train] == [f"synthetic_long-train-{i}" for i in range(5)]
    assert all(p.gold for p in heldout) and not {p.question for p in train} & {p.question for p in heldout}
    with pytest.raises(ValueError, match="synthetic_long"):
        load_questions("synthetic_medium")
