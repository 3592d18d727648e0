"""Benchmark evaluation: sample completions, grade them, summarise, and the `eval.py` command line.

Metrics. With `num_samples == 1` (the default; temperature 0 is greedy decoding) the headline is
`accuracy`, the fraction of problems whose completion is correct. With `num_samples = n > 1`
(temperature > 0 required: greedy samples would all be identical) `accuracy` is the mean fraction of
correct samples and the summary adds `mean@n` (the same number), `maj@n` (the majority answer, votes
counted up to math equivalence, is correct) and unbiased `pass@k` for k = 1, 2, 4, ... <= n and k = n.
Every summary has `mean_length` (tokens per completion, EOS included), `truncated_frac` (completions
that spent `max_new_tokens` without an EOS) and `mean_token_nll`, the mean −log p of the generated
tokens at the sampling temperature: for sampled completions, an estimate of the per-token entropy.

The command line writes one JSONL record per problem as soon as it is graded (appended and flushed),
so an interrupted run resumes: problems already in the file are skipped, a partially written last line
is dropped. `settings.json` in the output directory guards against resuming with another model or
other sampling settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from rlsc_jax import hf
from rlsc_jax.benchmarks import BENCHMARKS, DEFAULT_PROMPT, PROMPTS, Problem, build_messages, load_benchmark, \
    load_jsonl_problems
from rlsc_jax.config import MeshConfig, load_config
from rlsc_jax.grading import extract_answer, is_equivalent, majority_answer, pass_at_k
from rlsc_jax.models import Decoder
from rlsc_jax.sampling import sample
from rlsc_jax.sharding import make_mesh, to_host
from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids, load_tokenizer

DTYPES = ("float32", "bfloat16", "float16")
# Settings that change the completions: a resumed run must match them (batch size and mesh do not).
RESUME_KEYS = ("template", "num_samples", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "dtype",
               "question_field", "answer_field")


@dataclasses.dataclass
class EvalConfig:
    """The `key=value` settings of `eval.py`; question/answer fields apply to `--jsonl` files."""

    template: str = DEFAULT_PROMPT
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    batch_size: int = 8
    seed: int = 0
    dtype: str = "float32"
    question_field: str = "question"
    answer_field: str = "answer"
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


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


def parse_config(overrides: list[str]) -> EvalConfig:
    """Defaults merged with `key=value` overrides, checked; unknown keys name the closest valid one."""
    cfg = load_config(None, overrides, schema=EvalConfig)
    check_settings(cfg.template, cfg.num_samples, cfg.temperature, cfg.max_new_tokens, cfg.batch_size)
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype '{cfg.dtype}' is not one of {', '.join(DTYPES)}")
    return cfg


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


def _write_json_atomic(path: Path, value: dict) -> None:
    """Writes JSON to a temporary sibling, then renames it into place (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _check_resume(out_dir: Path, settings: dict) -> None:
    """Records in `out_dir` are reused only if they were made by the same model and settings."""
    path = out_dir / "settings.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path}: corrupt; delete it or use another --output-dir") from None
        for k, v in settings.items():
            if old.get(k) != v:
                raise ValueError(f"{path}: earlier results used {k}={old.get(k)!r}, not {v!r}; "
                                 f"use another --output-dir")
    _write_json_atomic(path, settings)


def _appender(f) -> Callable[[dict], None]:
    """Appends one record as a JSON line and flushes it, so an interruption loses at most that line."""
    def append(record: dict) -> None:
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        f.flush()
    return append


def _load_problems(args: argparse.Namespace, cfg: EvalConfig) -> dict[str, list[Problem]]:
    """Every requested benchmark's problems (all read before the model is loaded, so bad input fails fast)."""
    if args.benchmarks is not None:
        names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    else:
        names = [] if args.jsonl else list(BENCHMARKS)
    out: dict[str, list[Problem]] = {}
    for name in names:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
        if args.data_dir is None:
            raise ValueError(f"benchmark '{name}' needs --data-dir (the directory holding {BENCHMARKS[name].file})")
        out[name] = load_benchmark(name, args.data_dir, args.limit)
    for file in args.jsonl or []:
        name = Path(file).stem
        if name in out:
            raise ValueError(f"{file}: a benchmark named '{name}' is already being evaluated")
        out[name] = load_jsonl_problems(file, cfg.question_field, cfg.answer_field, args.limit)
    if not out:
        raise ValueError("nothing to evaluate: give --benchmarks or --jsonl")
    return out


def run(args: argparse.Namespace) -> dict:
    """Evaluates the model on every requested benchmark; writes records and results.json, prints the table."""
    cfg = parse_config(args.overrides)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    benchmarks = _load_problems(args, cfg)
    out_dir = Path(args.output_dir or Path("outputs") / f"eval-{model_dir.resolve().name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(model=str(model_dir.resolve()), **{k: getattr(cfg, k) for k in RESUME_KEYS})
    _check_resume(out_dir, settings)
    previous = {name: read_records(out_dir / f"{name}.jsonl") for name in benchmarks}

    tokenizer = load_tokenizer(model_dir)
    model = hf.load(model_dir, dtype=cfg.dtype, mesh=make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    summaries = {}
    for name, problems in benchmarks.items():
        path = out_dir / f"{name}.jsonl"
        done, size = previous[name]
        done = {p.id: done[p.id] for p in problems if p.id in done}
        print(f"{name}: {len(problems)} problems, {len(done)} already in {path}, {len(problems) - len(done)} to "
              f"generate", flush=True)
        with path.open("ab") as f:
            f.truncate(size)  # drops a partially written last line
            _, summaries[name] = evaluate_problems(
                model, tokenizer, problems, template=cfg.template, num_samples=cfg.num_samples,
                temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size, seed=cfg.seed, done=done, on_record=_appender(f))
    results = dict(model=settings["model"], limit=args.limit, config=dataclasses.asdict(cfg), benchmarks=summaries)
    _write_json_atomic(out_dir / "results.json", results)
    print(format_table(summaries, cfg.temperature))
    print(f"results: {out_dir / 'results.json'}")
    return results


def parser() -> argparse.ArgumentParser:
    """The `eval.py` argument parser."""
    p = argparse.ArgumentParser(
        prog="eval.py", description="Evaluate an HF-format model on math benchmarks (accuracy, maj@n, pass@k).",
        epilog=f"settings (key=value): {', '.join(f.name for f in dataclasses.fields(EvalConfig) if f.name != 'mesh')}"
               ", mesh.data, mesh.fsdp, mesh.tensor")
    p.add_argument("--model", required=True, help="HF checkpoint directory (config, safetensors, tokenizer)")
    p.add_argument("--benchmarks", help=f"comma-separated, from: {', '.join(BENCHMARKS)} (default: all, "
                                        "or none when --jsonl is given)")
    p.add_argument("--data-dir", help="directory holding the benchmark JSONL files")
    p.add_argument("--jsonl", action="append", metavar="FILE",
                   help="a JSONL of questions and answers (fields: question_field=, answer_field=); repeatable")
    p.add_argument("--output-dir", help="where records and results.json go (default: outputs/eval-<model name>)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="sampling / evaluation settings")
    return p


def main(argv: list[str] | None = None) -> int:
    """`eval.py`: 0 on success; bad input is a one-line `error: ...` on stderr and exit status 2."""
    args = parser().parse_intermixed_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0
