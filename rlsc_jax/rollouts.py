"""What the host reads from a step's sampled completions: each one's answer vote, label-free statistics
(distinct answers, the majority's share, truncation) logged for every objective, and samples.jsonl's rows."""

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


def truncated(tokens: np.ndarray, lengths: np.ndarray, max_new_tokens: int, eos: list[int]) -> np.ndarray:
    """[rows] bool: each completion ran to `max_new_tokens` without an end-of-sequence token."""
    lengths = np.asarray(lengths)
    last = np.asarray(tokens)[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    return (lengths >= max_new_tokens) & ~np.isin(last, eos)


def sample_rows(tokenizer, step: int, questions: list, prompts: list[list[int]], result, cut: np.ndarray,
                num_samples: int) -> list[dict]:
    """samples.jsonl's rows of one step (`result`: its `StepResult`, `cut`: `truncated`): per question its id, text
    and prompt, and each completion's text, log p, length, truncated flag, extracted answer and that answer's
    share of the question's N votes (None without an answer)."""
    rows = []
    for q, (question, prompt) in enumerate(zip(questions, prompts)):
        votes = result.votes[q * num_samples:(q + 1) * num_samples]
        completions = []
        for r in range(q * num_samples, (q + 1) * num_samples):
            text = tokenizer.decode(result.tokens[r, :result.lengths[r]].tolist(), skip_special_tokens=True)
            vote = int(result.votes[r])
            completions.append({"text": text, "logp": float(result.logps[r]), "length": int(result.lengths[r]),
                                "truncated": bool(cut[r]), "answer": extract_answer(text),
                                "vote_share": float((votes == vote).mean()) if vote >= 0 else None})
        rows.append({"step": step, "id": question.id, "question": question.question,
                     "prompt": tokenizer.decode(list(prompt)), "completions": completions})
    return rows


def _short(text: str, width: int = 110) -> str:
    """`text` on one line, cut to `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def sample_summary(row: dict) -> str:
    """Console lines for one `sample_rows` row: the question, then its most and least likely completion."""
    ranked = sorted(row["completions"], key=lambda c: c["logp"])
    lines = [f"step {row['step']}, question {row['id']}: {_short(row['question'])}"]
    for label, c in (("most likely ", ranked[-1]), ("least likely", ranked[0])):
        lines.append(f"  {label} (log p {c['logp']:.1f}, answer {c['answer']}): {_short(c['text'])}")
    return "\n".join(lines)
