"""Benchmark evaluation: sample completions, grade them, summarise.

Metrics. With `num_samples == 1` (the default; temperature 0 is greedy decoding) the headline is
`accuracy`, the fraction of problems whose completion is correct. With `num_samples = n > 1`
(temperature > 0 required: greedy samples would all be identical) `accuracy` is the mean fraction of
correct samples and the summary adds `mean@n` (the same number), `maj@n` (the majority answer, votes
counted up to math equivalence, is correct) and unbiased `pass@k` for k = 1, 2, 4, ... <= n and k = n.
Every summary has `mean_length` (tokens per completion, EOS included), `truncated_frac` (completions
that spent `max_new_tokens` without an EOS) and `mean_token_nll`, the mean −log p of the generated
tokens at the sampling temperature: for sampled completions, an estimate of the per-token entropy.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from rlsc_jax.benchmarks import DEFAULT_PROMPT, PROMPTS, Problem, build_messages
from rlsc_jax.grading import extract_answer, is_equivalent, majority_answer, pass_at_k
from rlsc_jax.models import Decoder
from rlsc_jax.sampling import sample
from rlsc_jax.sharding import to_host
from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids


def check_settings(template: str, num_samples: int, temperature: float, max_new_tokens: int,
                   batch_size: int) -> None:
    """Rejects settings that would fail (or silently mislead) only after the model is loaded."""
    if template not in PROMPTS:
        raise ValueError(f"unknown prompt template '{template}'; known: {', '.join(PROMPTS)}")
    if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"num_samples ({num_samples}), max_new_tokens ({max_new_tokens}) and batch_size "
                         f"({batch_size}) must be >= 1")
    if num_samples > 1 and temperature == 0:
        raise ValueError(f"num_samples={num_samples} needs temperature > 0 (greedy samples are all identical)")


def generation_eos(model_dir: str | Path | None) -> int | list[int] | None:
    """The `eos_token_id` of the model's `generation_config.json`, if it has one."""
    path = Path(model_dir) / "generation_config.json" if model_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e})") from None


def make_record(problem: Problem, completions: list[str], lengths: list[int], truncated: list[bool],
                logprob_sums: list[float] | None = None) -> dict:
    """One problem's graded completions: extracted answers, correctness, the majority answer."""
    answers = [extract_answer(text) for text in completions]
    majority, _ = majority_answer(answers)
    return dict(id=problem.id, question=problem.question, gold=problem.gold, completions=completions,
                answers=answers, correct=[is_equivalent(problem.gold, a) for a in answers], lengths=lengths,
                logprob_sums=logprob_sums if logprob_sums is not None else [0.0] * len(lengths),
                truncated=truncated, majority=majority, majority_correct=is_equivalent(problem.gold, majority))


def summarize(records: list[dict]) -> dict[str, float | int]:
    """Benchmark metrics from graded records that all hold the same number of samples (see module doc)."""
    if not records:
        raise ValueError("no records to summarise")
    n = len(records[0]["correct"])
    if any(len(r["correct"]) != n for r in records):
        raise ValueError("records hold different numbers of samples; they come from different runs")
    counts = [sum(r["correct"]) for r in records]
    lengths = [x for r in records for x in r["lengths"]]
    summary: dict[str, float | int] = dict(problems=len(records), num_samples=n,
                                           accuracy=float(np.mean(counts) / n))
    if n > 1:
        summary[f"mean@{n}"] = summary["accuracy"]
        summary[f"maj@{n}"] = float(np.mean([r["majority_correct"] for r in records]))
        for k in sorted({1 << i for i in range(n.bit_length()) if 1 << i <= n} | {n}):
            summary[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for c in counts]))
    summary["mean_length"] = float(np.mean(lengths))
    summary["mean_token_nll"] = -sum(x for r in records for x in r.get("logprob_sums", [0.0])) / max(sum(lengths), 1)
    summary["truncated_frac"] = float(np.mean([x for r in records for x in r["truncated"]]))
    return summary


def evaluate_problems(model: Decoder, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], *,
                      template: str = DEFAULT_PROMPT, num_samples: int = 1, temperature: float = 0.0,
                      top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 512, batch_size: int = 8,
                      seed: int = 0, progress: bool = True, done: dict[str, dict] | None = None,
                      on_record: Callable[[dict], Any] | None = None) -> tuple[list[dict], dict]:
    """Samples, decodes and grades every problem not already in `done` (id -> record); returns (records, summary).

    `batch_size` problems share one `sample` call, whose key is the seed folded with the index of the
    batch's first problem. `on_record` sees each new record as soon as it is graded.
    EOS ids: the tokenizer's plus those of the `generation_config.json` beside the loaded model, if any.
    """
    check_settings(template, num_samples, temperature, max_new_tokens, batch_size)
    if not problems:
        raise ValueError("no problems to evaluate")
    duplicates = [i for i, count in Counter(p.id for p in problems).items() if count > 1]
    if duplicates:
        raise ValueError(f"duplicate problem id '{duplicates[0]}'")
    records = dict(done or {})
    for record in records.values():
        if len(record["correct"]) != num_samples:
            raise ValueError(f"problem '{record['id']}' was evaluated with {len(record['correct'])} samples, "
                             f"not {num_samples}")
    eos = eos_ids(tokenizer, generation_eos(getattr(model, "hf_source", None)))
    pending = [(i, p) for i, p in enumerate(problems) if p.id not in records]
    key = jax.random.key(seed)
    with tqdm(total=len(problems), initial=len(problems) - len(pending), unit="problem", disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            prompts = [chat_prompt_ids(tokenizer, user, system)
                       for system, user in (build_messages(template, p.question) for _, p in batch)]
            out = sample(model, prompts, num_samples=num_samples, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=eos,
                         seed=jax.random.fold_in(key, batch[0][0]))
            tokens, lengths = to_host(out.tokens), to_host(out.lengths).tolist()
            logprob_sums = to_host(out.logprobs).sum(axis=1).tolist()
            for j, (_, problem) in enumerate(batch):
                rows = range(j * num_samples, (j + 1) * num_samples)
                texts = [tokenizer.decode(tokens[r, :lengths[r]].tolist(), skip_special_tokens=True) for r in rows]
                truncated = [int(tokens[r, lengths[r] - 1]) not in eos for r in rows]  # no EOS within the budget
                record = make_record(problem, texts, [lengths[r] for r in rows], truncated,
                                     [logprob_sums[r] for r in rows])
                records[problem.id] = record
                if on_record is not None:
                    on_record(record)
            bar.update(len(batch))
    ordered = [records[p.id] for p in problems]
    return ordered, summarize(ordered)


def read_records(path: Path) -> tuple[dict[str, dict], int]:
    """Records of a per-problem JSONL by id, and the byte size of its complete lines.

    A last line without its newline is an interrupted write and is ignored; any other bad line is an error.
    """
    if not path.is_file():
        return {}, 0
    records: dict[str, dict] = {}
    size = 0
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            size += len(line)
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{line_no}: not a per-problem record; delete the file to start over") from None
    return records, size


def format_table(summaries: dict[str, dict], temperature: float) -> str:
    """A markdown table, one row per benchmark (percentages; mean length in tokens)."""
    n = next(iter(summaries.values()))["num_samples"]
    if n == 1:
        score_keys = {"accuracy": "greedy" if temperature == 0 else "accuracy"}
    else:
        score_keys = {f"mean@{n}": f"mean@{n}", f"maj@{n}": f"maj@{n}"}
        score_keys |= {k: k for k in next(iter(summaries.values())) if k.startswith("pass@")}
    header = ["benchmark", "problems", *score_keys.values(), "mean length", "truncated %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summaries.items():
        cells = [name, str(s["problems"]), *(f"{100 * s[k]:.1f}" for k in score_keys),
                 f"{s['mean_length']:.1f}", f"{100 * s['truncated_frac']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
