"""PNGs: a run's curves (loss, log p, entropy, answer agreement, length) and held-out before/after; the
experiment's arms side by side; its accuracy against steps; pass@k vs k."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# metrics.jsonl key, title, y-axis label, scale (100: a fraction drawn in %, as the console prints it)
CURVES = (("loss", "loss", "loss", 1), ("seq_logp_mean", "mean sequence log p", "log p (nats)", 1),
          ("mean_token_entropy", "token entropy", "nats per token", 1),
          ("majority_share", "majority share of N", "% of samples", 100),
          ("completion_length", "completion length", "tokens", 1))


def plot_run(rows: list[dict], result: dict, path: str | Path) -> Path:
    """Draws the per-step curves and, when both exist, the held-out accuracies from before training (step 0)
    through the evaluations during it (`eval/` keys of `rows`) to after it (step `result["steps"]`)."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    steps = [r["step"] for r in rows]
    for ax, (key, title, ylabel, scale) in zip(axes.flat, CURVES):
        ax.plot(steps, [None if r.get(key) is None else scale * r[key] for r in rows], marker=".")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    ax = axes.flat[-1]
    before, after = result.get("before"), result.get("after")
    if before and after:
        n = before.get("num_samples")
        keys = [k for k in ("greedy_accuracy", "accuracy", f"mean@{n}", f"maj@{n}") if k in before and k in after]
        during = [(r["step"], {k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}) for r in rows]
        points = [(0, before), *[(step, m) for step, m in during if m], (result.get("steps", steps[-1]), after)]
        for key in keys:
            ax.plot([s for s, m in points if key in m], [100 * m[key] for _, m in points if key in m], marker="o",
                    label=key)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    ax.set_title("held-out accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("% of questions")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_pass_at_k(curves: dict[str, dict[str, dict]], path: str | Path) -> Path:
    """pass@k (solid) and maj@k (dashed) in % against k, one panel per benchmark, one colour per results folder
    (label -> benchmark -> summary): sharpening tends to raise pass@1 and can lower pass@k at large k. A folder
    with one sample per problem is one point, its accuracy."""
    names = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        ticks = set()
        for colour, (label, summaries) in enumerate(curves.items()):
            summary = summaries[name]
            for metric, style in (("pass", "-"), ("maj", "--")):
                ks = sorted(int(k.split("@")[1]) for k in summary if k.startswith(f"{metric}@"))
                name_k = f"{label} {metric}@k"
                if metric == "pass" and not ks:  # one sample per problem: its accuracy is pass@1
                    ks, summary, name_k = [1], {**summary, "pass@1": summary["accuracy"]}, f"{label} (1 sample)"
                if not ks:  # no maj@k of one sample: no legend entry for an empty line
                    continue
                ax.plot(ks, [100 * summary[f"{metric}@{k}"] for k in ks], style, marker="o", color=f"C{colour}",
                        label=name_k)
                ticks.update(ks)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
        ax.set_ylim(0, 100)
        ax.set_xlabel("k (samples per problem)")
        ax.set_ylabel("% of problems")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_arms(arms: dict[str, list[list[dict]]], path: str | Path) -> Path:
    """Per-step mean sequence log p, token entropy and majority share of every run, one colour per arm
    (label -> each run's metrics rows)."""
    keys = ("seq_logp_mean", "mean_token_entropy", "majority_share")
    fig, axes = plt.subplots(1, len(keys), figsize=(13, 3.6))
    for colour, (label, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], arms.items()):
        for i, rows in enumerate(runs):
            for ax, key in zip(axes, keys):
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], color=colour, alpha=0.7,
                        label=label if i == 0 else None)
                ax.set_title(key)
                ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_accuracy(base: dict[int, dict], runs: dict[str, dict[int, dict]],
                  by_step: dict[str, dict[int, dict[int, dict]]], n: int, labels: dict[str, str],
                  path: str | Path) -> Path:
    """Accuracy against training steps, one colour per arm, one line per seed: held-out greedy accuracy (where
    measured) and mean@n at step 0 (the seed's base model), at any `--eval-steps` and at the end; and the share
    of each step's training samples whose answer is right (`experiment_runs.step_accuracy`); `labels`: arm -> legend."""
    keys = [k for k in ("greedy_accuracy", f"mean@{n}") if all(k in b["before"] for b in base.values())]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(5 * (len(keys) + 1), 3.8), squeeze=False)
    for colour, (name, seeds) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], by_step.items()):
        for i, (seed, stages_) in enumerate(sorted(seeds.items())):
            label = labels[name] if i == 0 else None
            steps = [0, *sorted(stages_)]
            points = [base[seed]["before"], *(stages_[k] for k in sorted(stages_))]
            for ax, key in zip(axes[0], keys):
                ax.plot(steps, [100 * p[key] for p in points], "o-", color=colour, alpha=0.7, label=label)
                ax.set_title(f"held-out {key} (%)")
            accuracy = runs[name][seed].get("step_accuracy")
            if accuracy:
                axes[0][-1].plot(range(1, len(accuracy) + 1), [100 * a for a in accuracy], color=colour, alpha=0.7,
                                 label=label)
    axes[0][-1].set_title("training samples answered right (%)")
    for ax in axes[0]:
        ax.set_xlabel("step")
    if by_step:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
