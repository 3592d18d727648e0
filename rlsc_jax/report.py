"""Markdown tables of held-out metrics before and after training."""

from __future__ import annotations


def before_after_table(before: dict, after: dict) -> str:
    """One row per metric (accuracies as %, length in tokens), before | after | change."""
    lines = ["| held-out metric | before | after | change |", "|---|---|---|---|"]
    for key, value in before.items():
        if key not in after or not isinstance(value, (int, float)) or key in ("problems", "num_samples"):
            continue
        if key.endswith("entropy"):
            lines.append(f"| {key} | {value:.4f} | {after[key]:.4f} | {after[key] - value:+.4f} |")
            continue
        scale, unit = (1, "") if key.endswith("length") else (100, "%")
        lines.append(f"| {key} | {value * scale:.1f}{unit} | {after[key] * scale:.1f}{unit} | "
                     f"{(after[key] - value) * scale:+.1f} |")
    return "\n".join(lines)
