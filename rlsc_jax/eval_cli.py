"""What `eval.py` runs (rlsc_jax/eval.py parses its command line): a named protocol and its overrides, the
benchmarks to read, resumable per-problem records, results.json, the table, the pass@k plot, repeats over seeds
and a comparison with another folder.

It writes one JSONL record per problem as soon as it is graded (appended and flushed), so an
interrupted run resumes: problems already in the file are skipped, a partially written last line
is dropped. `settings.json` in the output directory, written with the first record, guards against resuming
with another model, other weights at the same path (a hash of the weight files) or other settings. Every check
that needs no weights (options, benchmark files, the model's config and tensor headers, every prompt against
the model's positions) runs before anything is written, and a run that fails before its first record leaves
no file behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from rlsc_jax import hf
from rlsc_jax.benchmarks import BENCHMARKS, Problem, load_benchmark, load_jsonl_problems
from rlsc_jax.config import MeshConfig, SamplingConfig, check_seed, load_config
from rlsc_jax.dtypes import DTYPES
from rlsc_jax.evaluation import check_settings, evaluate_problems, format_table, prompt_ids, token_budget
from rlsc_jax.files import atomic_write_json, exclusive_dir, make_dir
from rlsc_jax.fingerprint import digests, fingerprint
from rlsc_jax.models import ModelConfig
from rlsc_jax.protocols import DEFAULT_PROTOCOL, SAMPLING_KEYS, SETTINGS, get_protocol
from rlsc_jax.records import Appender, read_records
from rlsc_jax.report import truncation_warning
from rlsc_jax.sharding import axis_rules, make_mesh
from rlsc_jax.tokenizer import load_tokenizer

# Settings that change the completions: a resumed run must match them (batch size and mesh do not).
RESUME_KEYS = (*SETTINGS, "seed", "dtype", "question_field", "answer_field")
FIXED = ("problems", "num_samples", "max_new_tokens")  # summary entries that are settings, not scores


@dataclasses.dataclass
class EvalRunConfig:
    """`eval.py`'s settings: a protocol's prompt template and decoding (`sampling`, the type training's
    `sampling.*` uses), each replaced by a flat `key=value` (`num_samples=4`), and the rest; question/answer
    fields apply to `--jsonl` files. Unlike `config.EvalConfig` (train.py's `eval.*`: which held-out questions
    to score before and after training), this one evaluates one model."""

    template: str = ""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    batch_size: int = 8
    seed: int = 0
    dtype: str = "float32"
    question_field: str = "question"
    answer_field: str = "answer"
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def flat(self) -> dict:
        """Every setting by its command-line name (the sampling keys without `sampling.`), as settings.json and
        results.json record them."""
        out = dataclasses.asdict(self)
        return {"template": out.pop("template"), **out.pop("sampling"), **out}


def parse_config(overrides: list[str], protocol: str = DEFAULT_PROTOCOL) -> tuple[EvalRunConfig, dict]:
    """The protocol's settings with explicit `key=value` overrides on top, checked; also returns the overrides
    that depart from the protocol (a run with any is no longer the protocol as published)."""
    values = get_protocol(protocol)
    base = EvalRunConfig(template=values.template, sampling=dataclasses.replace(values.sampling))
    nested = [f"sampling.{o.strip()}" if o.split("=", 1)[0].strip() in SAMPLING_KEYS else o for o in overrides]
    try:
        cfg = load_config(None, nested, schema=base)
    except ValueError as e:  # name the keys as the user gives them
        raise ValueError(str(e).replace("'sampling.", "'")) from None
    published = EvalRunConfig(template=values.template, sampling=values.sampling).flat()
    departures = {k: v for k, v in cfg.flat().items() if k in SETTINGS and v != published[k]}
    check_settings(cfg.template, cfg.sampling, cfg.batch_size)
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype '{cfg.dtype}' is not one of {', '.join(DTYPES)}")
    axis_rules(cfg.mesh.rules)
    return cfg, departures


def _has_records(run_dir: Path) -> bool:
    """Whether `run_dir` holds a graded record (a non-empty per-benchmark JSONL)."""
    return run_dir.is_dir() and any(f.stat().st_size for f in run_dir.glob("*.jsonl"))


def _check_resume(run_dir: Path, settings: dict, model_dir: Path, weights: dict | None = None) -> dict:
    """Records in `run_dir` are reused only if the same model path, weights and settings made them; returns the
    weights' fingerprint (hashes reused from `weights`, else from settings.json when size and mtime match).
    A settings.json without records binds nothing: nothing was evaluated under it. Writes nothing."""
    path = run_dir / "settings.json"
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path}: corrupt; delete it or use another --output-dir") from None
    weights = weights or fingerprint(model_dir, old.get("weights"))
    if not _has_records(run_dir):
        return weights
    if not old:
        raise ValueError(f"{run_dir}: per-problem records without the settings.json that made them; "
                         "use another --output-dir")
    if "weights" not in old:
        raise ValueError(f"{path}: written by an eval.py that did not record the weights' hash; "
                         "use another --output-dir")
    was, now = digests(old["weights"]), digests(weights)
    if was != now:
        changed = sorted(set(was) ^ set(now) | {k for k in was.keys() & now.keys() if was[k] != now[k]})
        raise ValueError(f"{path}: the weights in {model_dir} are not those that made these records "
                         f"({', '.join(changed)} differ); use another --output-dir")
    for k, v in settings.items():
        if old.get(k) != v:
            raise ValueError(f"{path}: earlier results used {k}={old.get(k)!r}, not {v!r}; "
                             f"use another --output-dir")
    return weights


def _appender(run_dir: Path, settings: dict, name: str, size: int) -> Appender:
    """The appender of benchmark `name`'s records (`<run_dir>/<name>.jsonl`, holding `size` bytes of complete
    lines). Nothing is written before the first record: then settings.json, which guards the records."""
    def before() -> None:
        make_dir(run_dir, "--output-dir")
        atomic_write_json(run_dir / "settings.json", settings)
    return Appender(run_dir / f"{name}.jsonl", size, before=before)


def _load_problems(args: argparse.Namespace, cfg: EvalRunConfig) -> dict[str, list[Problem]]:
    """Every requested benchmark's problems (all read before the model is loaded, so bad input fails fast)."""
    if args.benchmarks is not None:
        names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    else:
        names = [] if args.jsonl else list(BENCHMARKS)
    out: dict[str, list[Problem]] = {}
    for name in names:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
        out[name] = load_benchmark(name, args.data_dir, args.limit)
    for file in args.jsonl or []:
        name = Path(file).stem
        if name in out:
            raise ValueError(f"{file}: a benchmark named '{name}' is already being evaluated")
        out[name] = load_jsonl_problems(file, cfg.question_field, cfg.answer_field, args.limit)
    if not out:
        raise ValueError("nothing to evaluate: give --benchmarks or --jsonl")
    return out


def _seeds(args: argparse.Namespace, cfg: EvalRunConfig) -> list[int]:
    """The seeds to run: `--seeds` (a sampled protocol, distinct seeds, no `seed=` beside it) or `seed=`."""
    for seed in args.seeds or [cfg.seed]:
        check_seed(seed, "--seeds" if args.seeds else "seed")
    if not args.seeds:
        return [cfg.seed]
    if any(o.split("=", 1)[0].strip() == "seed" for o in args.overrides):
        raise ValueError("give either --seeds or seed=, not both")
    if cfg.sampling.temperature == 0:
        raise ValueError(f"--seeds repeats a sampled protocol; '{args.protocol}' at temperature 0 is greedy, "
                         "so every seed gives the same completions")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated")
    return list(args.seeds)


def _read_compare(folder: str, protocol: str, cfg: EvalRunConfig, benchmarks: dict[str, list[Problem]]) -> dict:
    """The results of `--compare DIR`, which must come from the same protocol and settings and the same
    benchmarks (names and problem counts) as this run, or the curves would not be comparable."""
    path = Path(folder) / "results.json"
    try:
        other = json.loads(path.read_text())
        theirs = {k: other["config"][k] for k in SETTINGS}
        counts = {name: s["problems"] for name, s in other["benchmarks"].items()}
    except FileNotFoundError:
        raise FileNotFoundError(f"--compare {folder}: no results.json there") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ValueError(f"--compare {path}: not an eval.py results file") from None
    flat = cfg.flat()
    ours = {k: flat[k] for k in SETTINGS}
    if other.get("protocol") != protocol or theirs != ours:
        diff = ", ".join(f"{k}={theirs[k]!r} vs {ours[k]!r}" for k in SETTINGS if theirs[k] != ours[k])
        raise ValueError(f"--compare {folder}: made with protocol '{other.get('protocol')}', this run with "
                         f"'{protocol}'" + (f" ({diff})" if diff else ""))
    mine = {name: len(problems) for name, problems in benchmarks.items()}
    if counts != mine:
        raise ValueError(f"--compare {folder}: benchmarks {counts} (name: problems), this run {mine}")
    return other


def _evaluate(model, tokenizer, cfg: EvalRunConfig, seed: int, benchmarks: dict[str, list[Problem]],
              prompts: dict[str, dict[str, list[int]]], run_dir: Path, settings: dict,
              model_dir: Path) -> dict[str, dict]:
    """One seed over every benchmark, resuming from and appending to `run_dir/<benchmark>.jsonl` (EOS ids from
    `model_dir`, the checkpoint the model was loaded from)."""
    summaries = {}
    for name, problems in benchmarks.items():
        path = run_dir / f"{name}.jsonl"
        done, size = read_records(path)
        done = {p.id: done[p.id] for p in problems if p.id in done}
        print(f"{name}: {len(problems)} problems, {len(done)} already in {path}, {len(problems) - len(done)} to "
              f"generate", flush=True)
        _, summaries[name] = evaluate_problems(
            model, tokenizer, problems, template=cfg.template, sampling=cfg.sampling, batch_size=cfg.batch_size,
            seed=seed, done=done, on_record=_appender(run_dir, settings, name, size), model_dir=model_dir,
            prompts=prompts[name])
    return summaries


def _prompts(tokenizer, model_dir: Path, cfg: EvalRunConfig,
             benchmarks: dict[str, list[Problem]]) -> dict[str, dict[str, list[int]]]:
    """Every benchmark's prompts, checked against the model's positions (`token_budget`) before anything is
    loaded or written: a prompt that leaves no room is one line naming the benchmark, the problem and the limit."""
    positions = ModelConfig.from_file(model_dir).max_position_embeddings
    out = {}
    for name, problems in benchmarks.items():
        out[name] = prompt_ids(tokenizer, problems, cfg.template)
        try:
            token_budget(cfg.sampling.max_new_tokens, {i: len(ids) for i, ids in out[name].items()}, positions)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return out


def over_seeds(per_seed: list[dict[str, dict]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per benchmark, each score's mean over seeds and its standard deviation (sample sd; 0 for one seed)."""
    means, sds = {}, {}
    for name, first in per_seed[0].items():
        values = {k: [run[name][k] for run in per_seed] for k in first if k not in FIXED}
        means[name] = {k: first[k] for k in FIXED if k in first} | {k: statistics.fmean(v) for k, v in values.items()}
        sds[name] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
    return means, sds


def _report(results: dict, temperature: float, spread: dict | None) -> None:
    """Prints the protocol, the table and a warning per benchmark whose accuracy truncation makes a lower bound."""
    departures = ", ".join(f"{k}={v!r}" for k, v in results["overrides"].items())
    print(f"protocol: {results['protocol']}" + (f", overridden: {departures} (no longer the protocol as "
                                                 "published; compare only with runs of the same settings)"
                                                 if departures else ""))
    print(format_table(results["benchmarks"], temperature, spread))
    for name, summary in results["benchmarks"].items():
        warning = truncation_warning(name, summary)
        if warning:
            print(warning)


def run(args: argparse.Namespace) -> dict:
    """Evaluates the model on every requested benchmark (for each seed); writes records, results.json and
    pass_at_k.png, prints the table. Bad input fails before anything is written."""
    cfg, departures = parse_config(args.overrides, args.protocol)
    seeds = _seeds(args, cfg)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    benchmarks = _load_problems(args, cfg)
    other = _read_compare(args.compare, args.protocol, cfg, benchmarks) if args.compare else None
    out_dir = Path(args.output_dir or Path("outputs") / f"eval-{model_dir.resolve().name}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output-dir {out_dir}: exists and is not a directory")
    hf.check(model_dir)
    tokenizer = load_tokenizer(model_dir)
    prompts = _prompts(tokenizer, model_dir, cfg, benchmarks)
    with exclusive_dir(out_dir, "--output-dir"):
        run_dirs = {seed: out_dir / f"seed-{seed}" if args.seeds else out_dir for seed in seeds}
        weights, settings, flat = None, {}, cfg.flat()
        for seed, run_dir in run_dirs.items():
            settings[seed] = {"model": str(model_dir.resolve()), "protocol": args.protocol,
                              **{k: flat[k] for k in RESUME_KEYS}, "seed": seed}
            weights = _check_resume(run_dir, settings[seed], model_dir, weights)

        model = hf.load(model_dir, dtype=cfg.dtype, mesh=make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor),
                        rules=cfg.mesh.rules)
        common = {"model": str(model_dir.resolve()), "weights": digests(weights), "protocol": args.protocol,
                  "overrides": departures, "limit": args.limit, "config": flat}
        per_seed = []
        for seed, run_dir in run_dirs.items():
            per_seed.append(_evaluate(model, tokenizer, cfg, seed, benchmarks, prompts, run_dir,
                                      {**settings[seed], "weights": weights}, model_dir))
            atomic_write_json(run_dir / "results.json", {**common, "seed": seed, "benchmarks": per_seed[-1]})
        results, spread = {**common, "seed": seeds[0], "benchmarks": per_seed[0]}, None
        if args.seeds:
            means, spread = over_seeds(per_seed)
            results = {**common, "seeds": seeds, "benchmarks": means, "sd": spread,
                       "per_seed": {str(s): run for s, run in zip(seeds, per_seed)}}
            atomic_write_json(out_dir / "results.json", results)
        _report(results, cfg.sampling.temperature, spread)
        from rlsc_jax.plotting import plot_pass_at_k
        curves = {out_dir.name: results["benchmarks"]}
        if other:
            label = Path(args.compare).name
            curves[label if label != out_dir.name else f"{label} (--compare)"] = other["benchmarks"]
        plot_pass_at_k(curves, out_dir / "pass_at_k.png")
        print(f"results: {out_dir / 'results.json'}\npass@k plot: {out_dir / 'pass_at_k.png'}")
        return results
