"""The `eval.py` command line: settings, benchmarks to read, resumable per-problem records, results.json.

It writes one JSONL record per problem as soon as it is graded (appended and flushed), so an
interrupted run resumes: problems already in the file are skipped, a partially written last line
is dropped. `settings.json` in the output directory guards against resuming with another model or
other sampling settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from collections.abc import Callable

from rlsc_jax import hf
from rlsc_jax.benchmarks import BENCHMARKS, DEFAULT_PROMPT, Problem, load_benchmark, load_jsonl_problems
from rlsc_jax.config import MeshConfig, load_config
from rlsc_jax.evaluation import check_settings, evaluate_problems, format_table, read_records
from rlsc_jax.sharding import make_mesh
from rlsc_jax.tokenizer import load_tokenizer

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


def parse_config(overrides: list[str]) -> EvalConfig:
    """Defaults merged with `key=value` overrides, checked; unknown keys name the closest valid one."""
    cfg = load_config(None, overrides, schema=EvalConfig)
    check_settings(cfg.template, cfg.num_samples, cfg.temperature, cfg.max_new_tokens, cfg.batch_size)
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype '{cfg.dtype}' is not one of {', '.join(DTYPES)}")
    return cfg


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
