"""The synthetic tasks' splits "pretrain", "train" and "heldout": a question's split is a hash of its text, so the
splits are disjoint by construction whatever their sizes and seeds; the problems of a split are drawn from a seeded
RNG of the task (`rlsc_jax.synthetic`, the short task, or `rlsc_jax.synthetic_long`)."""

from __future__ import annotations

import hashlib
import random

from rlsc_jax import synthetic, synthetic_long
from rlsc_jax.benchmarks import Problem

SPLIT_BUCKETS = {"heldout": range(0, 2), "train": range(2, 4), "pretrain": range(4, 10)}  # of 10


def split_of(question: str) -> str:
    """The split a question text belongs to, from a hash of the text (so splits never overlap)."""
    bucket = hashlib.sha256(question.encode()).digest()[0] % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def _generator(task: str):
    """(RNG namespace, problem maker) of a task: "short" (`rlsc_jax.synthetic`) or "long" (`rlsc_jax.synthetic_long`).
    The namespaces seed every split: changing one changes every synthetic problem set."""
    if task == "short":
        return "rlsc_jax.synthetic", synthetic.make_problem
    if task == "long":
        return "rlsc_jax.synthetic_long", synthetic_long.make_problem
    raise ValueError(f"unknown synthetic task {task!r}; expected 'short' or 'long'")


def split_problems(split: str, n: int, seed: int = 0, task: str = "short") -> list:
    """The first `n` distinct problems of `split` ("pretrain", "train" or "heldout") of `task` for `seed`."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BUCKETS)}")
    namespace, make = _generator(task)
    rng = random.Random(f"{namespace}:{split}:{seed}")
    seen: set[str] = set()
    problems = []
    while len(problems) < n:
        problem = make(rng)
        if split_of(problem.question) == split and problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


def split_questions(split: str, n: int, seed: int = 0, task: str = "short") -> list[Problem]:
    """The first `n` problems of `split` as benchmark records (id, question, gold answer); ids name the task
    ("synthetic-heldout-0", "synthetic_long-heldout-0")."""
    prefix = "synthetic" if task == "short" else f"synthetic_{task}"
    return [Problem(f"{prefix}-{split}-{i}", p.question, p.answer)
            for i, p in enumerate(split_problems(split, n, seed, task))]
