"""Unlabeled training questions: a built-in synthetic task, a benchmark by name, or any JSONL file."""

from __future__ import annotations

import random
from pathlib import Path

from rlsc_jax import synthetic_splits
from rlsc_jax.benchmarks import BENCHMARKS, Problem, load_benchmark, load_jsonl_problems

SYNTHETIC_DEFAULT_SIZE = 256
# data.source / eval.source name -> synthetic task: the default's short answers, or the long-answer regime
SYNTHETIC_SOURCES = {"synthetic": "short", "synthetic_long": "long"}


def load_questions(source: str, *, data_dir: str | Path = ".", question_field: str = "question",
                   num_questions: int = 0, offset: int = 0, split: str = "train",
                   answer_field: str | None = None) -> list[Problem]:
    """`num_questions` (0 = all; synthetic: 256) questions after the first `offset` of `synthetic` or
    `synthetic_long` (the given split), a benchmark name (from data_dir), or a `.jsonl` path.

    Gold answers are kept when the source has them (for evaluation) and never used by training; a JSONL
    file's gold comes from `answer_field` (required in every row when given, ignored when None).
    """
    if offset < 0 or num_questions < 0:
        raise ValueError(f"offset ({offset}) and num_questions ({num_questions}) must be >= 0")
    limit = offset + num_questions if num_questions else None
    if source in SYNTHETIC_SOURCES:
        problems = synthetic_splits.split_questions(split, offset + (num_questions or SYNTHETIC_DEFAULT_SIZE),
                                             task=SYNTHETIC_SOURCES[source])
    elif source in BENCHMARKS:
        problems = load_benchmark(source, data_dir, limit)
    elif source.endswith(".jsonl"):
        problems = load_jsonl_problems(source, question_field, answer_field, limit)
    else:
        raise ValueError(f"data source {source!r}: expected 'synthetic', 'synthetic_long', a benchmark "
                         f"({', '.join(BENCHMARKS)}) or a path ending in .jsonl")
    if not problems[offset:]:
        raise ValueError(f"data source {source!r}: no questions" + (f" after the first {offset}" if offset else ""))
    return problems[offset:]


def questions_for_step(questions: list[Problem], step: int, per_step: int, seed: int, shuffle: bool = True,
                       ) -> list[Problem]:
    """The questions of one training step: a fresh seeded permutation each epoch, so any step is reproducible
    from (step, seed) alone and a resumed run sees exactly the questions it would have seen."""
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, index = divmod(position, len(questions))
        order = list(range(len(questions)))
        if shuffle:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(questions[order[index]])
    return out
