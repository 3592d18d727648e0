"""What the host reads from a step's sampled completions: each one's answer vote, and label-free statistics
(distinct answers, the majority's share, truncation) logged for every objective."""

from __future__ import annotations

import numpy as np

from rlsc_jax.grading import answer_classes, extract_answer


def answer_ids(tokenizer, tokens: np.ndarray, lengths: np.ndarray, num_samples: int) -> np.ndarray:
    """[rows] int32: each completion's final answer (the grader's extraction) as its class among its question's
    N samples, numbered by votes (0 = the majority answer, −1 = no answer); rows of a question are adjacent."""
    out = []
    for start in range(0, len(lengths), num_samples):
        rows = range(start, start + num_samples)
        out += answer_classes([extract_answer(tokenizer.decode(tokens[r, :lengths[r]].tolist(),
                                                                skip_special_tokens=True)) for r in rows])
    return np.asarray(out, np.int32)


def answer_stats(ids: np.ndarray, num_samples: int) -> dict[str, float]:
    """Mean over questions of the number of distinct answers (up to equivalence) among the N samples and of the
    majority answer's share (0 when no sample has an answer): how confident the model is, without labels."""
    by_question = np.asarray(ids).reshape(-1, num_samples)
    return {"distinct_answers": float((by_question.max(axis=1) + 1).mean()),
            "majority_share": float((by_question == 0).mean())}


def truncated_fraction(tokens: np.ndarray, lengths: np.ndarray, max_new_tokens: int, eos: list[int]) -> float:
    """Fraction of completions that ran to `max_new_tokens` without an end-of-sequence token."""
    lengths = np.asarray(lengths)
    last = np.asarray(tokens)[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    return float(((lengths >= max_new_tokens) & ~np.isin(last, eos)).mean())
