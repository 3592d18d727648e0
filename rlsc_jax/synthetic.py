"""Synthetic multi-step arithmetic word problems: the embedded default task for CPU-sized RLSC runs.

A problem is a short story ("Ann has 7 apples. She buys 5 more, then gives away 3. ...") whose answer
is a chain of 2-4 integer steps over + - *, every intermediate result in [0, 1000). Its reference
solution writes one step per sentence and ends with "The answer is \\boxed{N}." `solution_with_slips`
writes the same chain with occasional arithmetic slips, so a model pretrained on it is right on a
single sample only part of the time while the majority of many samples is usually right -- the
regime RLSC needs. `rlsc_jax.synthetic_splits` assigns questions to the splits "pretrain", "train" and
"heldout" by a hash of their text, so the splits are disjoint by construction whatever their sizes and seeds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

MAX_VALUE = 1000  # every intermediate result lies in [0, MAX_VALUE)
MAX_COUNT = 120  # item counts stay at most this, so a final per-item value keeps the total < MAX_VALUE

NAMES = (
    ("Ann", "she", "her"), ("Ben", "he", "his"), ("Cara", "she", "her"), ("Dan", "he", "his"),
    ("Eva", "she", "her"), ("Finn", "he", "his"), ("Gina", "she", "her"), ("Hugo", "he", "his"),
    ("Ivy", "she", "her"), ("Jack", "he", "his"), ("Kate", "she", "her"), ("Leo", "he", "his"),
    ("Mia", "she", "her"), ("Noah", "he", "his"), ("Olga", "she", "her"), ("Omar", "he", "his"),
    ("Rosa", "she", "her"), ("Sam", "he", "his"), ("Tina", "she", "her"), ("Paul", "he", "his"),
)
OBJECTS = (
    ("apple", "apples"), ("pear", "pears"), ("marble", "marbles"), ("card", "cards"), ("book", "books"),
    ("pen", "pens"), ("shell", "shells"), ("cookie", "cookies"), ("stamp", "stamps"), ("egg", "eggs"),
    ("ball", "balls"), ("cup", "cups"), ("flower", "flowers"), ("rock", "rocks"), ("candle", "candles"),
)
CONTAINERS = ("bags", "boxes", "jars", "baskets")

# Opening sentence: ({n} = starting count) or, for a multiplication opener, ({a} groups of {b}).
OPENERS = ("{N} has {n} {pl}.", "{N} starts with {n} {pl}.", "There are {n} {pl} in {N}'s room.")
GROUP_OPENERS = ("{N} has {a} {box} with {b} {pl} in each.", "{N} buys {a} packs of {b} {pl}.")
# Middle events, in the subject's voice ({o} = operand); "*" events carry their factor in the wording.
ADD_EVENTS = ("buys {o} more", "finds {o} more", "gets {o} more from a friend", "wins {o} more")
SUB_EVENTS = ("gives away {o}", "sells {o}", "loses {o}", "gives {o} to {M}")
MUL_EVENTS = {2: "doubles them", 3: "triples them"}
# Closing: plain count, or a per-item value that turns the count into another unit.
COUNT_QUESTIONS = ("How many {pl} does {N} have now?", "How many {pl} does {p} have in the end?")
VALUE_CLOSERS = (
    "Each {sg} costs {o} coins. How many coins are {q} {pl} worth?",
    "Each {sg} weighs {o} grams. What is the total weight in grams?",
    "Each {sg} is worth {o} points. How many points does {N} get?",
)


@dataclass(frozen=True)
class Step:
    """One arithmetic step `left op right = result`; `left` is the previous result except in step one."""

    left: int
    op: str
    right: int
    result: int


@dataclass(frozen=True)
class SyntheticProblem:
    """A generated problem: question text, its steps, reference solution and answer string."""

    question: str
    steps: tuple[Step, ...]
    solution: str
    answer: str

    def sample_solution(self, rng: random.Random, slip_prob: float) -> str:
        """A solution with slips (`solution_with_slips`), as pretraining sees them; `LongProblem` has the same."""
        return solution_with_slips(self, rng, slip_prob)


def apply_op(left: int, op: str, right: int) -> int:
    """The exact integer value of `left op right` for op in + - *."""
    return {"+": left + right, "-": left - right, "*": left * right}[op]


def render_solution(steps: Iterable[Step]) -> str:
    """Solution text: one "a op b = c." sentence per step, then the boxed final result."""
    steps = list(steps)
    lines = [f"{s.left} {s.op} {s.right} = {s.result}." for s in steps]
    return " ".join(lines + [f"The answer is \\boxed{{{steps[-1].result}}}."])


def _middle_event(rng: random.Random, value: int) -> tuple[str, int, str]:
    """A feasible (op, operand, phrase template) for the current count, keeping it in [1, MAX_COUNT]."""
    factors = [f for f in MUL_EVENTS if value * f <= MAX_COUNT]
    op = rng.choice(["+"] * 4 * (value < MAX_COUNT) + ["-"] * 4 * (value >= 2) + ["*"] * 2 * bool(factors))
    if op == "+":
        return op, rng.randint(1, min(20, MAX_COUNT - value)), rng.choice(ADD_EVENTS)
    if op == "-":
        return op, rng.randint(1, min(20, value - 1)), rng.choice(SUB_EVENTS)
    factor = rng.choice(factors)
    return op, factor, MUL_EVENTS[factor]


def make_problem(rng: random.Random) -> SyntheticProblem:
    """Draws one problem of 2-4 steps from `rng` (deterministic given its state)."""
    (name, pron, poss), (sg, pl) = rng.choice(NAMES), rng.choice(OBJECTS)
    other = rng.choice([n for n, _, _ in NAMES if n != name])
    n_steps = rng.randint(2, 4)
    grouped, valued = rng.random() < 0.35, rng.random() < 0.5
    n_middle = n_steps - grouped - valued

    steps: list[Step] = []
    if grouped:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        steps.append(Step(a, "*", b, a * b))
        sentences = [rng.choice(GROUP_OPENERS).format(N=name, a=a, b=b, box=rng.choice(CONTAINERS), pl=pl)]
        value = a * b
    else:
        value = rng.randint(2, 30)
        sentences = [rng.choice(OPENERS).format(N=name, n=value, pl=pl)]

    phrases = []
    for _ in range(n_middle):
        op, operand, phrase = _middle_event(rng, value)
        steps.append(Step(value, op, operand, apply_op(value, op, operand)))
        value = steps[-1].result
        phrases.append(phrase.format(o=operand, M=other))
    if phrases:
        if len(phrases) == 1 or rng.random() < 0.5:
            sentences.append(f"{pron.capitalize()} " + ", then ".join(phrases) + ".")
        else:
            sentences.append(f"First {pron} {phrases[0]}." + "".join(f" Then {pron} {p}." for p in phrases[1:]))

    if valued:
        price = rng.randint(2, (MAX_VALUE - 1) // MAX_COUNT)
        steps.append(Step(value, "*", price, value * price))
        sentences.append(rng.choice(VALUE_CLOSERS).format(sg=sg, pl=pl, o=price, q=poss, N=name))
    else:
        sentences.append(rng.choice(COUNT_QUESTIONS).format(pl=pl, N=name, p=pron))
    return SyntheticProblem(" ".join(sentences), tuple(steps), render_solution(steps), str(steps[-1].result))


def _stays_nonnegative(value: int, rest: Iterable[Step]) -> bool:
    """Whether continuing from `value` through the remaining steps (no more slips) never goes below 0."""
    for step in rest:
        value = apply_op(value, step.op, step.right)
        if value < 0:
            return False
    return True


def _slip(rng: random.Random, correct: int, avoid: int, rest: tuple[Step, ...]) -> int:
    """A plausible wrong result: off by 1, 2 or 10, or two digits swapped.

    Never `correct` or `avoid`, and never a value from which the remaining steps `rest` go negative
    (+1, +2 and +10 always qualify, as + - and * by a positive operand are increasing).
    """
    candidates = {correct + d for d in (-10, -2, -1, 1, 2, 10)}
    digits = str(correct)
    for i in range(len(digits) - 1):
        swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        if swapped[0] != "0":
            candidates.add(int(swapped))
    allowed = [c for c in sorted(candidates) if c >= 0 and c not in (correct, avoid) and _stays_nonnegative(c, rest)]
    return rng.choice(allowed)


def steps_with_slips(steps: tuple[Step, ...], rng: random.Random, slip_prob: float) -> list[Step]:
    """The chain `steps` as written with slips: each step, with probability `slip_prob`, writes a wrong result.

    Later steps continue from the written (wrong) value, which never makes a result negative. A slip
    never lands back on the slip-free value, and + - * by a fixed nonzero operand are injective, so
    the final result is wrong exactly when at least one step slipped:
    P(wrong) = 1 - (1 - slip_prob) ** len(steps).
    """
    written, value = [], None
    for i, step in enumerate(steps):
        left = step.left if value is None else value
        result = apply_op(left, step.op, step.right)
        if rng.random() < slip_prob:
            result = _slip(rng, result, avoid=step.result, rest=steps[i + 1 :])
        written.append(Step(left, step.op, step.right, result))
        value = result
    return written


def solution_with_slips(problem: SyntheticProblem, rng: random.Random, slip_prob: float) -> str:
    """The problem's solution where each step, with probability `slip_prob`, writes a wrong result
    (`steps_with_slips`): the final answer is wrong exactly when at least one step slipped."""
    return render_solution(steps_with_slips(problem.steps, rng, slip_prob))
