"""The work of `python -m rlsc_jax.experiment` (its module doc says what it runs): each seed's base model, each
arm trained and scored, every part kept with the key that made it, and the table and plots of what is in."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from rlsc_jax import hf
from rlsc_jax.arms import ARMS
from rlsc_jax.config import TrainConfig, load_config
from rlsc_jax.data import SYNTHETIC_SOURCES
from rlsc_jax.files import atomic_write_json, atomic_write_text, exclusive_dir
from rlsc_jax.fingerprint import digests, fingerprint
from rlsc_jax.grading import is_equivalent
from rlsc_jax.loop import evaluate, heldout_questions, run, sampled_metrics, training_questions
from rlsc_jax.metrics import read_metrics
from rlsc_jax.plotting import plot_accuracy, plot_arms
from rlsc_jax.protocols import get_protocol
from rlsc_jax.records import Journal
from rlsc_jax.run_record import MODEL_FILES, flat_config, with_new_defaults
from rlsc_jax.tokenizer import load_tokenizer
from rlsc_jax.validation import validate


def _train_questions(cfg: TrainConfig) -> list:
    """The first eval.num_questions training questions, gold answers kept for scoring."""
    return training_questions(cfg, answer_field="answer")[:cfg.eval.num_questions]


def step_accuracy(cfg: TrainConfig) -> list[float] | None:
    """Per training step, the share of the step's sampled answers (samples.jsonl) that equal their question's gold
    answer: accuracy against steps at no extra sampling (gold read for this report only, never by training);
    None where the training questions have no gold."""
    try:
        gold = {q.id: q.gold for q in training_questions(cfg, answer_field="answer")}
    except ValueError:  # unlabeled training questions (a JSONL file without `answer`)
        return None
    by_step: dict[int, list[bool]] = {}
    with (Path(cfg.output_dir) / "samples.jsonl").open() as f:
        for row in map(json.loads, f):
            by_step.setdefault(row["step"], []).extend(
                is_equivalent(gold[row["id"]], c["answer"]) for c in row["completions"])
    return [statistics.fmean(by_step[step]) for step in sorted(by_step)]


def heldout_metrics(model, tokenizer, cfg: TrainConfig, problems, metrics: dict | None = None,
                    journal: Journal | None = None) -> dict:
    """The held-out metrics the table reads: `loop.evaluate`'s (`metrics`, when already computed). A benchmark or
    JSONL source's named protocol gives one accuracy: the sampled metrics at `eval.temperature` are added, and a
    greedy protocol's accuracy, truncated fraction and length become the greedy ones (the rest under "protocol").
    Each decoding pass keeps its records in `journal`."""
    metrics = evaluate(model, tokenizer, cfg, problems, progress=True, journal=journal) if metrics is None else metrics
    if cfg.eval.source in SYNTHETIC_SOURCES:
        return metrics
    greedy = {}
    if get_protocol(cfg.eval.protocol).sampling.temperature == 0:
        greedy = {"greedy_accuracy": metrics["accuracy"], "greedy_truncated_frac": metrics["truncated_frac"],
                  "greedy_mean_length": metrics["mean_length"]}
    sampled = sampled_metrics(model, tokenizer, cfg, problems, cfg.eval.temperature, progress=True, journal=journal)
    return {**sampled, **greedy, "protocol": metrics}


def _now(name: str, compute):
    """`base_model` / `train_arm`'s default `keep`: compute every part, keep none."""
    return compute(None)


def base_model(cfg: TrainConfig, temperatures: list[float], train_scores: bool = True, keep=_now) -> dict:
    """The untrained model for one seed: held-out before-metrics, lower temperatures, and the training questions.
    `keep(name, compute)` gives each part: `compute(journal)`, where the part's decoding keeps its records (a
    `keeper`'s parts are `cached`, and their journals resume, so an interruption loses little of the part under
    way)."""
    loaded = functools.cache(lambda: (hf.load(cfg.model), load_tokenizer(cfg.model)))
    heldout = heldout_questions(cfg)
    held = keep("heldout", lambda journal: evaluate(*loaded(), cfg, heldout, progress=True, journal=journal))
    out = {"before": keep("before", lambda journal: heldout_metrics(*loaded(), cfg, heldout, held, journal))}
    if train_scores:
        out["train"] = keep("train", lambda journal: sampled_metrics(
            *loaded(), cfg, _train_questions(cfg), cfg.eval.temperature, progress=True, journal=journal))
    for t in temperatures:
        out[f"T={t}"] = keep(f"T={t}", lambda journal: sampled_metrics(
            *loaded(), cfg, heldout, t, progress=True, journal=journal))
    return out


def train_arm(cfg: TrainConfig, before: dict, train_scores: bool = True, keep=_now) -> dict:
    """One RLSC run to `cfg.steps` (reusing the seed's before-metrics; resuming from the newest checkpoint) and its
    final model's held-out metrics, scored on its training questions too with `train_scores`; parts as in
    `base_model` (the run keeps its own final evaluation's records, in its output dir)."""
    result = keep("run", lambda journal: run(cfg, before=before))
    final = Path(cfg.output_dir) / "final"
    loaded = functools.cache(lambda: (hf.load(final), load_tokenizer(final)))
    result["after"] = keep("after", lambda journal: heldout_metrics(*loaded(), cfg, heldout_questions(cfg),
                                                                    result["after"], journal))
    if train_scores:
        result["train"] = keep("train", lambda journal: sampled_metrics(
            *loaded(), cfg, _train_questions(cfg), cfg.eval.temperature, progress=True, journal=journal))
    result["step_accuracy"] = step_accuracy(cfg)
    rows = read_metrics(cfg.output_dir)
    result["underflow"] = statistics.fmean(r["p_old_underflow_frac"] for r in rows)
    terms = [r for r in rows if "grad_norm_p_old_term" in r]
    if terms:  # the p_old-weighted term's share of the two summands' gradient norms
        result["p_old_share"] = statistics.fmean(
            r["grad_norm_p_old_term"] / max(r["grad_norm_p_old_term"] + r["grad_norm_alpha_term"], 1e-30)
            for r in terms)
    return result


def stages(steps: int, eval_steps: list[int]) -> list[int]:
    """The steps at which an arm is scored: each of `eval_steps` below `steps`, then `steps`."""
    return sorted({s for s in eval_steps if 0 < s < steps} | {steps})


# Where things are, not what they are: a clone elsewhere or a moved --output reuses its results (the model's
# content is keyed by its files' digests; the benchmarks are the package's)
PLACES = ("model", "output_dir", "data.data_dir")


def _placeless(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in PLACES}


def result_key(cfg: TrainConfig, model_digests: dict, *extra) -> dict:
    """What a kept result must match to be reused: the resolved config less `PLACES`, the model files' digests,
    `extra`."""
    return json.loads(json.dumps({"config": _placeless(flat_config(cfg)), "model": model_digests,
                                  "extra": list(extra)}))


def _same(saved, key: dict) -> bool:
    """Whether a kept result's key matches: a config key added to the schema since it was kept counts as its
    default (`run_record.with_new_defaults`), so new options do not throw away hours of kept results; `PLACES`
    in keys kept before they were left out are ignored."""
    if not isinstance(saved, dict) or saved.keys() != key.keys():
        return False
    return ({**saved, "config": _placeless(with_new_defaults(saved["config"], key["config"]))} == key)


def cached(path: Path, key: dict, compute):
    """`compute()`'s result, kept at `path` with `key` (`result_key`) and the seconds it took, and reused while
    `key` matches."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if _same(saved.get("key"), key):
            print(f"   reusing {path}", flush=True)
            return saved["result"]
    start = time.perf_counter()
    result = compute()
    atomic_write_json(path, {"key": key, "result": result, "seconds": time.perf_counter() - start})
    return result


def keeper(folder: Path, prefix: str, key: dict):
    """`keep` for `base_model` / `train_arm`: each part `cached` as folder/<prefix><part>.json under `key`, its
    decoding passes' records journaled beside it under the same key."""
    return lambda name, compute: cached(folder / f"{prefix}{name}.json", key,
                                        lambda: compute(Journal(folder / f"{prefix}{name}", key)))


def _mean_sd(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    """'mean ± sd' over seeds (sd omitted for one seed)."""
    mean = f"{scale * statistics.fmean(values):{'+' if signed else ''}.1f}"
    return f"{mean} ± {scale * statistics.stdev(values):.1f}" if len(values) > 1 else mean


def _binomial_se(accuracies: list[float], problems: int) -> str:
    """The standard error of one accuracy over `problems` problems, sqrt(p (1 - p) / n), at the seeds' mean p."""
    p = statistics.fmean(accuracies)
    return f"{100 * math.sqrt(p * (1 - p) / problems):.1f}"


def table(base: dict[int, dict], runs: dict[str, dict[int, dict]], n: int, temperature: float) -> str:
    """Markdown rows: the base model at each temperature, then each arm; mean ± sd over seeds, in %.

    "greedy se" is one seed's binomial standard error of the greedy accuracy (the noise of the problem sample);
    "change" is mean@n minus the same seed's base mean@n at the training temperature (paired by seed);
    "truncated" the share of completions cut at the budget (greedy / sampled); "underflow" the training steps'
    mean `p_old_underflow_frac`, "p_old share" the p_old-weighted term's share of RLSC L2's two gradient norms
    (`grad_terms_every` steps).
    """
    mean, maj, pass_n = f"mean@{n}", f"maj@{n}", f"pass@{n}"
    header = ["model (held-out unless stated)", "greedy", "greedy se", mean, maj, pass_n, f"change in {mean}",
              f"{mean} on training questions", "truncated", "underflow", "p_old share", "length"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seeds = sorted(base)

    def row(name, held: dict, greedy=False, rows=None):
        """`held`: seed -> held-out metrics; `rows`: seed -> the base or arm result (its training-question
        scores and training diagnostics)."""
        done = sorted(held)
        hs, results = [held[s] for s in done], [rows[s] for s in done] if rows else []
        trained = [r for r in results if "underflow" in r]
        share = [r["p_old_share"] for r in trained if "p_old_share" in r]
        train = [r["train"] for r in results] if results and all("train" in r for r in results) else None
        greedy = greedy and all("greedy_accuracy" in h for h in hs)
        cells = [name, _mean_sd([h["greedy_accuracy"] for h in hs]) if greedy else "–",
                 _binomial_se([h["greedy_accuracy"] for h in hs], hs[0]["problems"]) if greedy else "–",
                 _mean_sd([h[mean] for h in hs]), _mean_sd([h[maj] for h in hs]), _mean_sd([h[pass_n] for h in hs]),
                 _mean_sd([held[s][mean] - base[s]["before"][mean] for s in done], signed=True),
                 _mean_sd([t[mean] for t in train]) if train else "–",
                 (_mean_sd([h["greedy_truncated_frac"] for h in hs]) + " / " if greedy else "")
                 + _mean_sd([h["truncated_frac"] for h in hs]),
                 _mean_sd([r["underflow"] for r in trained]) if trained else "–",
                 _mean_sd(share) if share else "–",
                 f"{statistics.fmean(h['mean_length'] for h in hs):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")

    row(f"base, T={temperature}", {s: base[s]["before"] for s in seeds}, True, base)
    for key in [k for k in base[seeds[0]] if k.startswith("T=")]:
        row(f"base, {key}", {s: base[s][key] for s in seeds})
    for name, by_seed in runs.items():
        done = [s for s in seeds if s in by_seed]
        row(ARMS[name][0] + ("" if len(done) == len(seeds) else f" (seeds {', '.join(map(str, done))} only)"),
            {s: by_seed[s]["after"] for s in done}, True, by_seed)
    return "\n".join(lines)


def run_experiment(args: argparse.Namespace) -> str:
    """Checks every arm's config, the model and `--output` first; then, holding `--output`, computes what it
    does not keep yet and writes the results; returns the table."""
    config = lambda seed, *extra: load_config(  # noqa: E731  the table's "p_old share" needs the gradient terms
        args.config, ["grad_terms_every=10", *args.overrides, f"seed={seed}", *extra])
    for seed in args.seeds:
        for name in args.arms:
            cfg = config(seed, *ARMS[name][1], f"output_dir={args.output / f'{name}-seed{seed}'}")
            validate(cfg)
            if len(stages(cfg.steps, args.eval_steps)) > 1 and cfg.optim.schedule != "constant":
                raise ValueError(f"--eval-steps trains {name} in stages, which needs optim.schedule=constant "
                                 f"(a {cfg.optim.schedule} schedule depends on the total steps)")
    hf.check(config(args.seeds[0]).model)
    # a result computed without the training-question scores is not one computed with them
    extra = [] if args.train_scores else ["no training-question scores"]
    with exclusive_dir(args.output, "--output"):
        base, runs, dirs, by_step = {}, {}, {}, {}
        # every arm trains the same model (the arms override no `model`): hash its files once
        model_digests = digests(fingerprint(config(args.seeds[0]).model, patterns=MODEL_FILES))
        def report() -> str:
            """results.json, table.md and the plots of what is in so far (rewritten as each result lands)."""
            md = table(base, runs, cfg.eval.num_samples, cfg.eval.temperature)
            atomic_write_json(args.output / "results.json", {"base": base, "runs": runs, "by_step": by_step})
            atomic_write_text(args.output / "table.md", md + "\n")
            if dirs:  # none yet while only the base model is in
                plot_arms({ARMS[name][0]: [read_metrics(d) for d in seeds.values()] for name, seeds in dirs.items()},
                          args.output / "curves.png")
            plot_accuracy(base, runs, by_step, cfg.eval.num_samples, {name: ARMS[name][0] for name in by_step},
                          args.output / "accuracy_vs_steps.png")
            return md

        cfg = config(args.seeds[0])
        for seed in args.seeds:  # seed by seed: one seed of every arm is in before the next seed starts
            print(f"== base model, seed {seed}", flush=True)
            seed_cfg = config(seed)
            key = result_key(seed_cfg, model_digests, args.baseline_temperatures, *extra)
            keep = keeper(args.output / "parts", f"base-seed{seed}-", key)
            base[seed] = cached(args.output / f"base-seed{seed}.json", key,
                                lambda: base_model(seed_cfg, args.baseline_temperatures, args.train_scores, keep))
            md = report()
            for name in args.arms:
                out = args.output / f"{name}-seed{seed}"
                print(f"== {ARMS[name][0]}, seed {seed} -> {out}", flush=True)
                arm_cfg, before = config(seed, *ARMS[name][1], f"output_dir={out}"), base[seed]["before"]
                for stage in stages(arm_cfg.steps, args.eval_steps):
                    last = stage == arm_cfg.steps
                    staged = dataclasses.replace(arm_cfg, steps=stage)
                    key = result_key(staged, model_digests, before, *extra)
                    path = out / ("experiment_result.json" if last else f"experiment_step{stage}.json")
                    keep = keeper(out / "parts", f"step{stage}-", key)
                    result = cached(path, key, lambda: train_arm(staged, before, args.train_scores and last, keep))
                    by_step.setdefault(name, {}).setdefault(seed, {})[stage] = result["after"]
                runs.setdefault(name, {})[seed] = result
                dirs.setdefault(name, {})[seed] = str(out)
                if args.prune_checkpoints:
                    shutil.rmtree(out / "checkpoints", ignore_errors=True)
                md = report()
    return md
