"""Markdown tables of held-out metrics before and after training, and the truncation warning every report gives."""

from __future__ import annotations

TRUNCATION_WARN = 0.05  # above this fraction of completions cut at the budget, accuracy is reported as a lower bound
NOT_SCORES = ("problems", "num_samples", "max_new_tokens")  # settings, not metrics: no before/after row
SAME_AS_MEAN = ("maj@1", "pass@1")  # mean@n by definition (one sample's vote is its answer): no row of their own
MAJ_2 = ("maj@2 is mean@N except that a sample without an answer loses a two-sample vote to its partner's answer "
         "(a 1-1 split counts half)")


def truncation_warning(label: str, summary: dict) -> str | None:
    """A warning line when more than 5% of a summary's completions hit max_new_tokens without EOS (every
    truncation key: `truncated_frac`, `greedy_truncated_frac`): a cut answer is graded wrong."""
    worst = max((v, k) for k, v in summary.items() if k.endswith("truncated_frac"))
    if worst[0] <= TRUNCATION_WARN:
        return None
    budget = summary.get("max_new_tokens")
    which = "greedy completions" if worst[1].startswith("greedy") else "completions"
    return (f"warning: {label}: {100 * worst[0]:.1f}% of {which} hit max_new_tokens"
            + (f" ({budget})" if budget else "") + " without EOS, so its accuracy is a lower bound")


def before_after_table(before: dict, after: dict) -> str:
    """One row per metric (accuracies as %, length in tokens), before | after | change; maj@1 and pass@1, which
    repeat mean@N, are left out, and maj@2, nearly a repeat, gets a line saying how it differs."""
    lines = ["| held-out metric | before | after | change |", "|---|---|---|---|"]
    for key, value in before.items():
        if (key not in after or not isinstance(value, (int, float)) or key in NOT_SCORES + SAME_AS_MEAN
                or key.endswith("_stderr")):
            continue
        if key.endswith("nll"):
            lines.append(f"| {key} | {value:.4f} | {after[key]:.4f} | {after[key] - value:+.4f} |")
            continue
        scale, unit = (1, "") if key.endswith("length") else (100, "%")
        lines.append(f"| {key} | {value * scale:.1f}{unit} | {after[key] * scale:.1f}{unit} | "
                     f"{(after[key] - value) * scale:+.1f} |")
    return "\n".join(lines + ([MAJ_2] if "maj@2" in before and "maj@2" in after else []))
