"""Benchmark evaluation: sample completions, grade them, summarise.

Metrics. With `num_samples == 1` (temperature 0 is greedy decoding) the headline is `accuracy`, the
fraction of problems whose completion is correct. With `num_samples = n > 1` (temperature > 0 required:
greedy samples would all be identical) `accuracy` is the mean fraction of correct samples and the summary
adds `mean@n` (the same number) and `mean@n_stderr` (the standard deviation of the n repeats' accuracies
over sqrt(n), as Evalchemy reports it), and for k = 1, 2, 4, ... < n and k = n: unbiased `pass@k` and
`maj@k` (the majority answer of k random samples, votes counted up to math equivalence, is correct; exact
over k-subsets, ties split; `maj@n` is the vote of all n, ties to the first seen). Every summary has
`mean_length` (tokens per completion, EOS included), `truncated_frac` (completions that spent the budget
without an EOS: graded wrong, so above a few percent the accuracy is a lower bound), `max_new_tokens` (the
budget after capping at the model's positions) and `mean_token_nll`, the mean −log p of the generated
tokens at the sampling temperature: for sampled completions, an estimate of the per-token entropy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from rlsc_jax.benchmarks import DEFAULT_TEMPLATE, PROMPTS, Problem, build_messages
from rlsc_jax.config import SamplingConfig, check_sampling
from rlsc_jax.grading import answer_groups, extract_answer, is_equivalent, maj_at_k, majority_answer, pass_at_k
from rlsc_jax.models import Decoder
from rlsc_jax.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from rlsc_jax.records import Journal
from rlsc_jax.sampling import sample
from rlsc_jax.sharding import to_host
from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids, generation_eos


def check_settings(template: str, sampling: SamplingConfig, batch_size: int) -> None:
    """Rejects settings that would fail (or silently mislead) only after the model is loaded."""
    if template not in PROMPTS:
        raise ValueError(f"unknown prompt template '{template}'; known: {', '.join(PROMPTS)}")
    check_sampling(sampling)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, problems: list[Problem], template: str) -> dict[str, list[int]]:
    """Each problem's chat prompt under `template`, as token ids, by problem id."""
    return {p.id: chat_prompt_ids(tokenizer, user, system)
            for p, (system, user) in ((p, build_messages(template, p.question)) for p in problems)}


def token_budget(max_new_tokens: int, prompt_lengths: dict[str, int], max_positions: int) -> tuple[int, str | None]:
    """New tokens that fit every prompt: `max_new_tokens` capped at the model's positions minus the longest prompt,
    with a one-line note when capped. A prompt that leaves no room for one new token is an error naming the first
    such problem, how many there are and the limit: scoring the others alone would not be the benchmark's score."""
    too_long = [i for i, n in prompt_lengths.items() if n >= max_positions]
    if too_long:
        raise ValueError(f"{len(too_long)} of {len(prompt_lengths)} prompts leave no room for a new token in the "
                         f"model's {max_positions} positions (the first, problem '{too_long[0]}', has "
                         f"{prompt_lengths[too_long[0]]} tokens); evaluate other problems or a model with more "
                         f"positions")
    longest_id = max(prompt_lengths, key=prompt_lengths.get)
    room = max_positions - prompt_lengths[longest_id]
    if room >= max_new_tokens:
        return max_new_tokens, None
    return room, (f"note: max_new_tokens {max_new_tokens} capped to {room}: the model's {max_positions} positions "
                  f"minus the longest prompt ({prompt_lengths[longest_id]} tokens)")


def make_record(problem: Problem, completions: list[str], lengths: list[int], truncated: list[bool],
                logprob_sums: list[float] | None = None, max_new_tokens: int | None = None) -> dict:
    """One problem's graded completions: extracted answers, their equivalence groups (the votes), correctness,
    the majority answer, and the budget they were drawn with."""
    answers = [extract_answer(text) for text in completions]
    majority, _ = majority_answer(answers)
    return {"id": problem.id, "question": problem.question, "gold": problem.gold, "completions": completions,
            "answers": answers, "groups": answer_groups(answers),
            "correct": [is_equivalent(problem.gold, a) for a in answers], "lengths": lengths,
            "logprob_sums": logprob_sums if logprob_sums is not None else [0.0] * len(lengths),
            "truncated": truncated, "max_new_tokens": max_new_tokens, "majority": majority,
            "majority_correct": is_equivalent(problem.gold, majority)}


def _maj_at_k(record: dict, k: int) -> float:
    """One problem's maj@k from its votes: a group counts as correct when its first answer is."""
    groups, correct = record["groups"], record["correct"]
    counts = Counter(g for g in groups if g is not None)
    return maj_at_k([counts[g] for g in sorted(counts)], [correct[groups.index(g)] for g in sorted(counts)],
                    groups.count(None), k)


def summarize(records: list[dict]) -> dict[str, float | int]:
    """Benchmark metrics from graded records that all hold the same number of samples (see module doc)."""
    if not records:
        raise ValueError("no records to summarise")
    n = len(records[0]["correct"])
    if any(len(r["correct"]) != n for r in records):
        raise ValueError("records hold different numbers of samples; they come from different runs")
    counts = [sum(r["correct"]) for r in records]
    lengths = [x for r in records for x in r["lengths"]]
    summary: dict[str, float | int] = {"problems": len(records), "num_samples": n,
                                       "accuracy": float(np.mean(counts) / n)}
    if n > 1:
        summary[f"mean@{n}"] = summary["accuracy"]
        repeats = np.mean([r["correct"] for r in records], axis=0)  # accuracy of the i-th sample of every problem
        summary[f"mean@{n}_stderr"] = float(np.std(repeats) / np.sqrt(n))
        ks = sorted({1 << i for i in range(n.bit_length()) if 1 << i <= n} | {n})
        for k in ks[:-1]:
            summary[f"maj@{k}"] = float(np.mean([_maj_at_k(r, k) for r in records]))
        summary[f"maj@{n}"] = float(np.mean([r["majority_correct"] for r in records]))
        for k in ks:
            summary[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for c in counts]))
    summary["mean_length"] = float(np.mean(lengths))
    summary["mean_token_nll"] = -sum(x for r in records for x in r.get("logprob_sums", [0.0])) / max(sum(lengths), 1)
    summary["truncated_frac"] = float(np.mean([x for r in records for x in r["truncated"]]))
    return summary


def logprob_profile(records: list[dict], threshold: float = -30.0) -> dict[str, float | int]:
    """Where the sampled completions' sequence log p (at the sampling temperature, EOS included) lies: RLSC's
    p_old = exp(log p) is negligible next to L2's α once log p is far below 0, as for long answers.

    Over all samples of `records`: the median and 10th / 90th percentiles of log p, the fraction below
    `threshold` (−30: p_old < 1e-13), and `p_old_underflow_frac`, the fraction whose p_old is exactly 0 in
    fp32 as training computes it (XLA flushes subnormals: log p below about −87.3).
    """
    logp = np.asarray([x for r in records for x in r["logprob_sums"]], np.float64)
    if not logp.size:
        raise ValueError("no samples to profile")
    underflow = np.asarray(jax.numpy.exp(jax.numpy.asarray(logp, jax.numpy.float32)) == 0)
    q10, median, q90 = np.percentile(logp, [10, 50, 90])
    return {"samples": int(logp.size), "median": float(median), "q10": float(q10), "q90": float(q90),
            "threshold": threshold, "below_threshold_frac": float(np.mean(logp < threshold)),
            "p_old_underflow_frac": float(underflow.mean())}


def evaluate_problems(model: Decoder, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], *,
                      template: str = DEFAULT_TEMPLATE, sampling: SamplingConfig = PROTOCOLS[DEFAULT_PROTOCOL].sampling, batch_size: int = 8,
                      seed: int = 0, progress: bool = True, done: dict[str, dict] | None = None,
                      on_record: Callable[[dict], Any] | None = None,
                      model_dir: str | Path | None = None, prompts: dict[str, list[int]] | None = None,
                      journal: Journal | None = None) -> tuple[list[dict], dict]:
    """Samples, decodes and grades every problem not already in `done` (id -> record); returns (records, summary).

    `sampling` decides the completions (`num_samples` per problem, at most `max_new_tokens` each; default: the
    default protocol's greedy decoding). Problems `i * batch_size` .. `(i + 1) * batch_size - 1` share one `sample`
    call (those not done), whose key is the seed folded with `i * batch_size`, so that a pass resumed after whole
    batches draws what an uninterrupted one would. `on_record` sees each new record as soon as it is graded;
    `journal` keeps them and resumes from them in place of `done` and `on_record`. The budget is
    `token_budget` over all of `problems` (so it does not depend on batching or on what is already done);
    the summary's `max_new_tokens` is that budget.
    EOS ids: the tokenizer's plus those of `model_dir`'s `generation_config.json` (the checkpoint the model
    came from), if any. `prompts`: `prompt_ids` of `problems` under `template`, when the caller has them.
    """
    check_settings(template, sampling, batch_size)
    num_samples = sampling.num_samples
    if not problems:
        raise ValueError("no problems to evaluate")
    duplicates = [i for i, count in Counter(p.id for p in problems).items() if count > 1]
    if duplicates:
        raise ValueError(f"duplicate problem id '{duplicates[0]}'")
    prompts = prompts or prompt_ids(tokenizer, problems, template)
    budget, note = token_budget(sampling.max_new_tokens, {i: len(ids) for i, ids in prompts.items()},
                                model.cfg.max_position_embeddings)
    if note:
        print(note, flush=True)
    if journal is not None:
        if done or on_record:
            raise ValueError("give a journal or done / on_record, not both")
        tag = "greedy" if sampling.temperature == 0 else f"T{sampling.temperature:g}x{num_samples}"
        listed = json.dumps([[p.id, p.question, p.gold] for p in problems], ensure_ascii=False).encode()
        kept = journal.open(tag, {"problems": hashlib.sha256(listed).hexdigest(), "template": template,
                                  "sampling": dataclasses.asdict(sampling), "budget": budget,
                                  "batch_size": batch_size, "seed": seed})
        done, on_record = kept.done, kept.append
    records = {i: r for i, r in (done or {}).items() if i in prompts}
    for record in records.values():
        if len(record["correct"]) != num_samples or record.get("max_new_tokens") != budget:
            raise ValueError(f"problem '{record['id']}' was evaluated with {len(record['correct'])} samples of at "
                             f"most {record.get('max_new_tokens')} tokens, not {num_samples} of at most {budget}")
    eos = eos_ids(tokenizer, generation_eos(model_dir))
    key = jax.random.key(seed)
    what = "greedy" if sampling.temperature == 0 else f"{num_samples} at T = {sampling.temperature:g}"
    with tqdm(total=len(problems), initial=len(records), unit="problem", desc=what,
              leave=None, disable=not progress) as bar:  # leave=None: kept unless inside another bar
        for start in range(0, len(problems), batch_size):
            batch = [p for p in problems[start:start + batch_size] if p.id not in records]
            if not batch:
                continue
            out = sample(model, [prompts[p.id] for p in batch], num_samples=num_samples, max_new_tokens=budget,
                         temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, eos_ids=eos,
                         seed=jax.random.fold_in(key, start))
            tokens, lengths = to_host(out.tokens), to_host(out.lengths).tolist()
            logprob_sums = to_host(out.logprobs).sum(axis=1).tolist()
            for j, problem in enumerate(batch):
                rows = range(j * num_samples, (j + 1) * num_samples)
                texts = [tokenizer.decode(tokens[r, :lengths[r]].tolist(), skip_special_tokens=True) for r in rows]
                truncated = [int(tokens[r, lengths[r] - 1]) not in eos for r in rows]  # no EOS within the budget
                record = make_record(problem, texts, [lengths[r] for r in rows], truncated,
                                     [logprob_sums[r] for r in rows], budget)
                records[problem.id] = record
                if on_record is not None:
                    on_record(record)
            bar.update(len(batch))
    ordered = [records[p.id] for p in problems]
    return ordered, {**summarize(ordered), "max_new_tokens": budget}


def evaluate_protocol(model: Decoder, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], protocol: str, *,
                      seed: int = 0, batch_size: int = 8, model_dir: str | Path | None = None,
                      max_new_tokens: int | None = None, progress: bool = False, journal: Journal | None = None) -> dict:
    """The named protocol's summary of `problems`, labelled with its name: train.py's held-out evaluation of
    benchmark sources, so that before and after are measured with the same prompt, decoding and budget
    (`max_new_tokens`, when given, in place of the protocol's). `model_dir`, `progress`, `journal` as for
    `evaluate_problems`."""
    p = get_protocol(protocol)
    sampling = dataclasses.replace(p.sampling, max_new_tokens=max_new_tokens or p.sampling.max_new_tokens)
    _, summary = evaluate_problems(model, tokenizer, problems, template=p.template, sampling=sampling,
                                   batch_size=batch_size, seed=seed, progress=progress, model_dir=model_dir,
                                   journal=journal)
    return {"protocol": protocol, **summary}


def format_table(summaries: dict[str, dict], temperature: float, spread: dict[str, dict] | None = None) -> str:
    """A markdown table, one row per benchmark (percentages; mean length in tokens). With n samples, mean@n has
    its standard error over the n repeats (pass@1, the same number, has no column); with `spread` (per benchmark, per metric: sd over seeds) every
    score reads "mean ± sd" instead."""
    first = next(iter(summaries.values()))
    n = first["num_samples"]
    if n == 1:
        score_keys = {"accuracy": "greedy" if temperature == 0 else "accuracy"}
    else:
        score_keys = {f"mean@{n}": f"mean@{n}", f"maj@{n}": f"maj@{n}"}
        score_keys |= {k: k for k in first if k.startswith("pass@") and k != "pass@1"}  # pass@1 is mean@n
    stderr = n > 1 and spread is None
    header = ["benchmark", "problems", *score_keys.values(), "mean length", "truncated %", "max new tokens"]
    if stderr:
        header.insert(3, "± se")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summaries.items():
        sd = (spread or {}).get(name, {})
        scores = [f"{100 * s[k]:.1f}" + (f" ± {100 * sd[k]:.1f}" if k in sd else "") for k in score_keys]
        if stderr:
            scores.insert(1, f"{100 * s[f'mean@{n}_stderr']:.1f}")
        cells = [name, str(s["problems"]), *scores, f"{s['mean_length']:.1f}", f"{100 * s['truncated_frac']:.1f}",
                 str(s.get("max_new_tokens", "?"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
