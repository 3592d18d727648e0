"""The default experiment: RLSC L1 and L2 over several seeds against the base model at lower temperatures.

    python -m rlsc_jax.experiment [--seeds 0 1 2] [--output runs/experiment] [key=value ...]

Every run is `train.py`'s default (the overrides apply to all runs) with one seed and objective; the
baseline evaluates the untrained default model at lower sampling temperatures, which is the cheap way
to sharpen a model without training. Writes `results.json`, `table.md` and `curves.png`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlsc_jax import hf  # noqa: E402
from rlsc_jax.config import load_config  # noqa: E402
from rlsc_jax.data import load_questions  # noqa: E402
from rlsc_jax.evaluation import evaluate_problems  # noqa: E402
from rlsc_jax.loop import run  # noqa: E402
from rlsc_jax.metrics import read_metrics  # noqa: E402
from rlsc_jax.tokenizer import load_tokenizer  # noqa: E402

def baseline(cfg, temperatures: list[float]) -> dict[str, dict]:
    """The untrained model's held-out metrics at each sampling temperature (same questions and budget)."""
    model, tokenizer = hf.load(cfg.model), load_tokenizer(cfg.model)
    problems = load_questions(cfg.eval.source, data_dir=cfg.data.data_dir, num_questions=cfg.eval.num_questions,
                              split="heldout", answer_field="answer")
    out = {}
    for t in temperatures:
        _, summary = evaluate_problems(model, tokenizer, problems, template=cfg.data.template,
                                       num_samples=cfg.eval.num_samples, temperature=t,
                                       max_new_tokens=cfg.sampling.max_new_tokens, batch_size=cfg.eval.batch_size,
                                       seed=cfg.seed, progress=False)
        out[f"base T={t}"] = summary
    return out


def _mean_spread(values: list[float]) -> str:
    """'mean ± sd' in percent (sd over seeds)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def table(runs: dict[str, list[dict]], base: dict[str, dict], n: int) -> str:
    """Markdown: held-out metrics of the base model (before), each objective after (mean ± sd over seeds)."""
    keys = ["greedy_accuracy", f"mean@{n}", f"maj@{n}"]
    lines = ["| model | " + " | ".join(keys) + " | mean length |", "|---" * (len(keys) + 2) + "|"]
    first = next(iter(runs.values()))[0]["before"]
    lines.append("| base (T=0.5) | " + " | ".join(f"{100 * first[k]:.1f}" for k in keys)
                 + f" | {first['mean_length']:.1f} |")
    for name, summary in base.items():
        lines.append(f"| {name} | – | " + " | ".join(f"{100 * summary[k]:.1f}" for k in keys[1:])
                     + f" | {summary['mean_length']:.1f} |")
    for name, results in runs.items():
        after = [r["after"] for r in results]
        lines.append(f"| {name} (T=0.5), {len(after)} seeds | "
                     + " | ".join(_mean_spread([a[k] for a in after]) for k in keys)
                     + f" | {statistics.fmean(a['mean_length'] for a in after):.1f} |")
    return "\n".join(lines)


def plot(output: Path, runs: dict[str, list[str]]) -> None:
    """Per-step curves of every run (one colour per objective)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for colour, (name, dirs) in zip(("tab:blue", "tab:orange"), runs.items()):
        for i, d in enumerate(dirs):
            rows = read_metrics(d)
            steps = [r["step"] for r in rows]
            for ax, key in zip(axes, ("seq_logp_mean", "mean_token_entropy", "majority_share")):
                ax.plot(steps, [r[key] for r in rows], color=colour, alpha=0.7, label=name if i == 0 else None)
                ax.set_title(key)
                ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(output / "curves.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--objectives", nargs="+", default=["rlsc_l2", "rlsc_l1"])
    p.add_argument("--baseline-temperatures", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--output", type=Path, default=Path("runs/experiment"))
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {}
    dirs: dict[str, list[str]] = {}
    for objective in args.objectives:
        for seed in args.seeds:
            out = args.output / f"{objective}-seed{seed}"
            cfg = load_config(None, [*args.overrides, f"objective={objective}", f"seed={seed}", f"output_dir={out}",
                                     "export_final=false"])
            print(f"== {objective}, seed {seed} -> {out}")
            results.setdefault(objective, []).append(run(cfg))
            dirs.setdefault(objective, []).append(str(out))
    cfg = load_config(None, list(args.overrides))
    base = baseline(cfg, args.baseline_temperatures)
    md = table(results, base, cfg.eval.num_samples)
    (args.output / "results.json").write_text(json.dumps({"runs": results, "baseline": base}, indent=2))
    (args.output / "table.md").write_text(md + "\n")
    plot(args.output, dirs)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
