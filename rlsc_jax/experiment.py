"""The default experiment: RLSC and the other label-free objectives over several seeds against the base model
sampled at lower temperatures.

    python -m rlsc_jax.experiment [--config FILE] [--seeds 0 1 2] [--arms rlsc_l2 ...] [--output DIR] [key=value ...]

Every arm is `train.py`'s run of `--config` (default: the embedded default) with a few overrides (the
command-line overrides apply to all of them); the arms share the model, sampler, budget and evaluation.
every seed sets the question order, the training samples and the evaluation samples. Per seed, the
untrained model is evaluated once at the training temperature (the "before" of every arm, so changes are
paired) and at each baseline temperature, the cheap way to sharpen a model without training. Every model
is also scored on the unlabeled training questions themselves, the paper's setting (it trains and reports
on AIME 2024), next to the held-out questions. Writes `results.json`, `table.md` and `curves.png`.

Each base model's and each finished arm's result is kept in `--output` with the config and the model files'
SHA-256 that made it, so a rerun (after an interruption, or with more arms or seeds) reuses what is there and
computes the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rlsc_jax import hf
from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.config import TrainConfig, load_config, to_yaml
from rlsc_jax.data import load_questions
from rlsc_jax.files import atomic_write_json, atomic_write_text, exclusive_dir
from rlsc_jax.fingerprint import digests, fingerprint
from rlsc_jax.loop import evaluate, heldout_questions, run, sampled_metrics
from rlsc_jax.metrics import read_metrics
from rlsc_jax.plotting import plot_arms
from rlsc_jax.run_record import MODEL_FILES
from rlsc_jax.tokenizer import load_tokenizer
from rlsc_jax.validation import validate

# name -> (label, overrides on top of the default run)
ARMS = {
    "rlsc_l2": ("RLSC L2", ["objective=rlsc_l2"]),
    "rlsc_l1": ("RLSC L1", ["objective=rlsc_l1"]),
    "rlsc_l2_topk": ("RLSC L2, sampler top-k 50 (the paper's)", ["objective=rlsc_l2", "sampling.top_k=50"]),
    "rlsc_l2_topp": ("RLSC L2, sampler top-p 0.9", ["objective=rlsc_l2", "sampling.top_p=0.9"]),
    "entropy_min": ("entropy minimisation (EM-FT)", ["objective=entropy_min"]),
    "ttrl": ("TTRL (majority-vote reward)", ["objective=ttrl"]),
    "self_certainty": ("Intuitor (self-certainty reward)", ["objective=self_certainty"]),
    "paper_batch": ("RLSC L2, paper's batch: 1 question x 20 steps, lr 1e-5",
                    ["objective=rlsc_l2", "questions_per_step=1", "steps=20", "optim.lr=1e-5"]),
}


def _train_questions(cfg: TrainConfig) -> list:
    """The first eval.num_questions training questions, gold answers kept for scoring."""
    return load_questions(cfg.data.source, data_dir=cfg.data.data_dir, question_field=cfg.data.question_field,
                          num_questions=cfg.data.num_questions, answer_field="answer")[:cfg.eval.num_questions]


def base_model(cfg: TrainConfig, temperatures: list[float]) -> dict:
    """The untrained model for one seed: held-out before-metrics, lower temperatures, and the training questions."""
    model, tokenizer = hf.load(cfg.model), load_tokenizer(cfg.model)
    heldout = heldout_questions(cfg)
    out = {"before": evaluate(model, tokenizer, cfg, heldout),
           "train": sampled_metrics(model, tokenizer, cfg, _train_questions(cfg), cfg.eval.temperature)}
    for t in temperatures:
        out[f"T={t}"] = sampled_metrics(model, tokenizer, cfg, heldout, t)
    return out


def train_arm(cfg: TrainConfig, before: dict) -> dict:
    """One RLSC run (reusing the seed's before-metrics) and its final model scored on its training questions."""
    result = run(cfg, before=before)
    final = Path(cfg.output_dir) / "final"
    result["train"] = sampled_metrics(hf.load(final), load_tokenizer(final), cfg, _train_questions(cfg),
                                      cfg.eval.temperature)
    rows = read_metrics(cfg.output_dir)
    result["underflow"] = statistics.fmean(r["p_old_underflow_frac"] for r in rows)
    terms = [r for r in rows if "grad_norm_p_old_term" in r]
    if terms:  # the p_old-weighted term's share of the two summands' gradient norms
        result["p_old_share"] = statistics.fmean(
            r["grad_norm_p_old_term"] / max(r["grad_norm_p_old_term"] + r["grad_norm_alpha_term"], 1e-30)
            for r in terms)
    return result


def result_key(cfg: TrainConfig, model_digests: dict, *extra) -> str:
    """What a kept result must match to be reused: the resolved config, the model files' digests, `extra`."""
    return json.dumps([to_yaml(cfg), model_digests, *extra])


def cached(path: Path, key: str, compute):
    """`compute()`'s result, kept at `path` with `key` (`result_key`) and reused while `key` matches."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"   reusing {path}")
            return saved["result"]
    result = compute()
    atomic_write_json(path, {"key": key, "result": result})
    return result


def _mean_sd(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    """'mean ± sd' over seeds (sd omitted for one seed)."""
    mean = f"{scale * statistics.fmean(values):{'+' if signed else ''}.1f}"
    return f"{mean} ± {scale * statistics.stdev(values):.1f}" if len(values) > 1 else mean


def table(base: dict[int, dict], runs: dict[str, dict[int, dict]], n: int, temperature: float) -> str:
    """Markdown rows: the base model at each temperature, then each arm; mean ± sd over seeds, in %.

    "change" is mean@n minus the same seed's base mean@n at the training temperature (paired by seed);
    "underflow" is the training steps' mean `p_old_underflow_frac`, "p_old share" the p_old-weighted term's
    share of RLSC L2's two gradient norms (`grad_terms_every` steps).
    """
    mean, maj, pass_n = f"mean@{n}", f"maj@{n}", f"pass@{n}"
    header = ["model (held-out unless stated)", "greedy", mean, maj, pass_n, f"change in {mean}",
              f"{mean} on training questions", "underflow", "p_old share", "length"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seeds = sorted(base)
    before = [base[s]["before"] for s in seeds]

    def row(name, held, greedy="–", train=None, runs=None):
        share = [r["p_old_share"] for r in runs or [] if "p_old_share" in r]
        cells = [name, greedy, _mean_sd([h[mean] for h in held]), _mean_sd([h[maj] for h in held]),
                 _mean_sd([h[pass_n] for h in held]),
                 _mean_sd([h[mean] - b[mean] for h, b in zip(held, before)], signed=True),
                 _mean_sd([t[mean] for t in train]) if train else "–",
                 _mean_sd([r["underflow"] for r in runs]) if runs else "–",
                 _mean_sd(share) if share else "–",
                 f"{statistics.fmean(h['mean_length'] for h in held):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")

    temps = [k for k in base[seeds[0]] if k.startswith("T=")]
    row(f"base, T={temperature}", before, _mean_sd([b["greedy_accuracy"] for b in before]),
        [base[s]["train"] for s in seeds])
    for key in temps:
        row(f"base, {key}", [base[s][key] for s in seeds])
    for name, by_seed in runs.items():
        after = [by_seed[s]["after"] for s in seeds]
        row(ARMS[name][0], after, _mean_sd([a["greedy_accuracy"] for a in after]), [by_seed[s]["train"] for s in seeds],
            [by_seed[s] for s in seeds])
    return "\n".join(lines)


def run_experiment(args: argparse.Namespace) -> str:
    """Checks every arm's config, the model and `--output` first; then, holding `--output`, computes what it
    does not keep yet and writes the results; returns the table."""
    config = lambda seed, *extra: load_config(  # noqa: E731  the table's "p_old share" needs the gradient terms
        args.config, ["grad_terms_every=10", *args.overrides, f"seed={seed}", *extra])
    for seed in args.seeds:
        for name in args.arms:
            validate(config(seed, *ARMS[name][1], f"output_dir={args.output / f'{name}-seed{seed}'}"))
    hf.check(config(args.seeds[0]).model)
    with exclusive_dir(args.output, "--output"):
        base, runs, dirs = {}, {}, {}
        # every arm trains the same model (the arms override no `model`): hash its files once
        model_digests = digests(fingerprint(config(args.seeds[0]).model, patterns=MODEL_FILES))
        for seed in args.seeds:
            print(f"== base model, seed {seed}")
            cfg = config(seed)
            key = result_key(cfg, model_digests, args.baseline_temperatures)
            base[seed] = cached(args.output / f"base-seed{seed}.json", key,
                                lambda: base_model(cfg, args.baseline_temperatures))
        for name in args.arms:
            for seed in args.seeds:
                out = args.output / f"{name}-seed{seed}"
                print(f"== {ARMS[name][0]}, seed {seed} -> {out}")
                cfg, before = config(seed, *ARMS[name][1], f"output_dir={out}"), base[seed]["before"]
                key = result_key(cfg, model_digests, before)
                runs.setdefault(name, {})[seed] = cached(out / "experiment_result.json", key,
                                                         lambda: train_arm(cfg, before))
                dirs.setdefault(name, {})[seed] = str(out)
        cfg = config(args.seeds[0])
        md = table(base, runs, cfg.eval.num_samples, cfg.eval.temperature)
        atomic_write_json(args.output / "results.json", {"base": base, "runs": runs})
        atomic_write_text(args.output / "table.md", md + "\n")
        plot_arms({ARMS[name][0]: [read_metrics(d) for d in seeds.values()] for name, seeds in dirs.items()},
                  args.output / "curves.png")
    return md


def main(argv: list[str] | None = None) -> int:
    """0; bad input (an unknown key, a missing --config, an --output that is a file) is one `error:` line and 2
    before anything runs, Ctrl-C one line and 130."""
    p = argparse.ArgumentParser(prog=prog("experiment"), description=__doc__.splitlines()[0])
    p.add_argument("--config", help="the task's YAML config, as for train.py (default: the embedded default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--baseline-temperatures", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--output", type=Path, default=Path("runs/experiment"))
    p.add_argument("overrides", nargs="*", metavar="key=value")
    argv = sys.argv[1:] if argv is None else argv
    # key=value may follow a list option (`--arms a b key=value`): set it apart before argparse's lists take it
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    code, md = run_command(lambda: run_experiment(args),
                           "interrupted; rerun the same command to go on from the results it keeps")
    if not code:
        print(md)
    return code


def cli() -> None:
    """`python -m rlsc_jax.experiment`."""
    exit_process(main())


if __name__ == "__main__":
    cli()
