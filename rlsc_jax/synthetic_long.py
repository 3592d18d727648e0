"""The long-answer synthetic task: answers long enough that a sample's probability is ≈ 0, as at AIME scale.

At the paper's AIME scale an answer is hundreds to thousands of tokens and a sampled answer's log p is far
below −30, so RLSC's p_old = exp(log p) is negligible next to α and L2 = −Σ (p_old + α) log p is α · NLL of
the model's own samples. The short task (`rlsc_jax.synthetic`, ~42 tokens, log p ≈ −1) never gets there.

A question tells a story of 4-7 events over + - and doubling in the short task's words, every value in
[1, 100): "Ann has 7 apples. First she buys 5 more. Then she doubles them. ... How many apples does Ann have
now?". A solution writes one sentence per step, "Step 2: she doubles them, so 12 * 2 = 24. That makes 24.",
restating the event as the question words it, with equivalent phrasings drawn uniformly at random: the
lead-in (12), the connective (12), the operand order of + and of a doubling (which may also read 12 + 12),
an optional restatement of the new count (a coin, then 12), the opening (4) and the closing (4). A uniform
choice stays uniform at any sampling temperature, so a model that learned them keeps ~7 nats of entropy per
step at T = 0.5: a ~180-token answer has log p of about −45, while the arithmetic, on which samples should
agree, is as learnable as the short task's. Slips (`synthetic.steps_with_slips`) make a single sample wrong
part of the time.

`Writer.nats` adds up the entropy of the choices made while writing a solution: −log p of the text under
the generator, what a perfect model of the data gives it (`LongProblem.solution_nats`).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from rlsc_jax.synthetic import (ADD_EVENTS, COUNT_QUESTIONS, MUL_EVENTS, NAMES, OBJECTS, OPENERS, SUB_EVENTS, Step,
                                apply_op, steps_with_slips)

MAX_VALUE = 100  # every value of a slip-free chain lies in [1, MAX_VALUE)
MIN_STEPS, MAX_STEPS = 4, 7

# The question tells the story as the short task does (its openers, events and closing questions), one sentence
# per event: "Ann has 7 apples. First she buys 5 more. Then she doubles them. ... How many apples does Ann have now?"
# No step numbers in the question: a solution finds each operand after the one it used last, as in the short task.

# The solution's phrasings; every list is drawn uniformly, so none is favoured by a model of the data. Each step
# restates its event as the question words it ("she gives 12 to Sam"), so the operation is read off the words just
# written; the rest names no person or object.
OPENINGS = ("We start with {n}.", "At first there are {n}.", "The count starts at {n}.", "First, there are {n}.")
LEADS = ("Step {k}:", "In step {k},", "For step {k},", "At step {k},", "Then in step {k},", "Next, in step {k},",
         "Now, step {k}:", "Moving to step {k},", "On to step {k}:", "After that, in step {k},", "Step {k} is next:",
         "Later, in step {k},")
LINKS = (", so", ", thus", ", hence", ", which gives", ", giving", ", and", ", that is", ", meaning", ", therefore",
         ", and so", ", so we get", ", which makes")
RESTATEMENTS = ("The count is now {r}.", "That makes {r}.", "Now there are {r}.", "So there are {r} now.",
                "Now it is {r}.", "That is {r} so far.", "The total is {r}.", "We are at {r}.", "We have {r} now.",
                "So far, {r}.", "The new count is {r}.", "That leaves {r}.")
CLOSINGS = ("In the end there are {r}.", "So the final count is {r}.", "After step {k} we have {r}.",
            "That leaves {r} at the end.")


class Writer:
    """Draws a solution's phrasings from `rng`, adding the entropy (nats) of every choice to `nats`."""

    def __init__(self, rng: random.Random):
        self.rng, self.nats = rng, 0.0

    def pick(self, options):
        """One of `options`, uniformly."""
        self.nats += math.log(len(options))
        return self.rng.choice(options)

    def maybe(self) -> bool:
        """A fair coin."""
        self.nats += math.log(2)
        return self.rng.random() < 0.5


@dataclass(frozen=True)
class LongProblem:
    """A long-answer problem: its question, slip-free chain, the story's pronoun and events, a reference solution."""

    question: str
    steps: tuple[Step, ...]
    pronoun: str
    events: tuple[str, ...]  # each step's verb phrase, as the question states it
    solution: str  # one rendering without slips, its phrasings seeded by the question
    answer: str

    def sample_solution(self, rng: random.Random, slip_prob: float) -> str:
        """A solution with fresh phrasings and slips (`steps_with_slips`), as pretraining sees them."""
        return render(self, steps_with_slips(self.steps, rng, slip_prob), Writer(rng))

    def solution_nats(self, rng: random.Random) -> float:
        """The entropy of one freshly drawn slip-free solution's phrasings: −log p of its text under the
        generator (for slip-free steps)."""
        writer = Writer(rng)
        render(self, list(self.steps), writer)
        return writer.nats


def _calc(step: Step, writer: Writer) -> str:
    """The step's arithmetic as "a op b = c"; + and doubling in either operand order (doubling also as a + a)."""
    a, b, c = step.left, step.right, step.result
    if step.op == "+":
        return writer.pick((f"{a} + {b} = {c}", f"{b} + {a} = {c}"))
    if step.op == "*":
        return writer.pick((f"{a} * {b} = {c}", f"{b} * {a} = {c}", f"{a} + {a} = {c}"))
    return f"{a} {step.op} {b} = {c}"


def render(problem: LongProblem, written: list[Step], writer: Writer) -> str:
    """The solution text of the written chain `written` (slips included), phrasings drawn by `writer`."""
    sentences = [writer.pick(OPENINGS).format(n=written[0].left)]
    for k, (step, event) in enumerate(zip(written, problem.events), start=1):
        lead, link = writer.pick(LEADS).format(k=k), writer.pick(LINKS)
        sentence = f"{lead} {problem.pronoun} {event}{link} {_calc(step, writer)}."
        if writer.maybe():
            sentence += " " + writer.pick(RESTATEMENTS).format(r=step.result)
        sentences.append(sentence)
    result = written[-1].result
    sentences.append(writer.pick(CLOSINGS).format(r=result, k=len(written)))
    return " ".join(sentences + [f"The answer is \\boxed{{{result}}}."])


def _event(rng: random.Random, value: int, other: str) -> tuple[str, int, str]:
    """A feasible (op, operand, phrase) for the current value, keeping every value in [1, MAX_VALUE)."""
    ops = ["+"] * 4 * (value < MAX_VALUE - 1) + ["-"] * 4 * (value >= 2) + ["*"] * (2 * value < MAX_VALUE)
    op = rng.choice(ops)
    if op == "+":
        operand = rng.randint(1, min(20, MAX_VALUE - 1 - value))
        return op, operand, rng.choice(ADD_EVENTS).format(o=operand)
    if op == "-":
        operand = rng.randint(1, min(20, value - 1))
        return op, operand, rng.choice(SUB_EVENTS).format(o=operand, M=other)
    return op, 2, MUL_EVENTS[2]


def make_problem(rng: random.Random) -> LongProblem:
    """Draws one problem of MIN_STEPS..MAX_STEPS steps from `rng` (deterministic given its state)."""
    (name, pron, _), (_, pl) = rng.choice(NAMES), rng.choice(OBJECTS)
    other = rng.choice([n for n, _, _ in NAMES if n != name])
    value = rng.randint(2, 40)
    steps, events = [], []
    for _ in range(rng.randint(MIN_STEPS, MAX_STEPS)):
        op, operand, event = _event(rng, value, other)
        steps.append(Step(value, op, operand, apply_op(value, op, operand)))
        events.append(event)
        value = steps[-1].result
    sentences = [rng.choice(OPENERS).format(N=name, n=steps[0].left, pl=pl), f"First {pron} {events[0]}."]
    sentences += [f"Then {pron} {e}." for e in events[1:]]
    question = " ".join(sentences + [rng.choice(COUNT_QUESTIONS).format(pl=pl, N=name, p=pron)])
    problem = LongProblem(question, tuple(steps), pron, tuple(events), "", str(steps[-1].result))
    seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return LongProblem(**{**problem.__dict__, "solution": render(problem, steps, Writer(random.Random(seed)))})
