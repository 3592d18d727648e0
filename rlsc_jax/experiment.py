"""The default experiment: RLSC and the other label-free objectives over several seeds against the base model
sampled at lower temperatures.

    python -m rlsc_jax.experiment [--config FILE] [--seeds 0 1 2] [--arms rlsc_l2 ...] [--output DIR] [key=value ...]

Every arm is `train.py`'s run of `--config` (default: the embedded default) with a few overrides (the
command-line overrides apply to all of them); the arms share the model, sampler, budget and evaluation.
every seed sets the question order, the training samples and the evaluation samples. Per seed, the
untrained model is evaluated once at the training temperature (the "before" of every arm, so changes are
paired) and at each baseline temperature, the cheap way to sharpen a model without training. Every model
is also scored on the unlabeled training questions themselves, the paper's setting (it trains and reports
on AIME 2024), next to the held-out questions (`--no-train-scores` skips that). A benchmark or JSONL source's
held-out protocol gives one accuracy (greedy for `qwen-math`); the sampled metrics at `eval.temperature` are added
to it. `--eval-steps` also scores each arm at those earlier steps (constant schedule: the arm trains in stages).
Writes `results.json`, `table.md`, `curves.png` and `accuracy_vs_steps.png`. Seeds come one after another (a
seed's base model, then each arm of that seed), so one seed of every arm is in before the next seed starts.

Each base model's and each finished arm's (and stage's) result is kept in `--output` with the config and the model
files' SHA-256 that made it, so a rerun (after an interruption, or with more arms or seeds) reuses what is there
and computes the rest; an arm killed mid-training resumes from its newest checkpoint. `--prune-checkpoints` deletes
an arm's checkpoints once its result is kept (a real model's are gigabytes each; its `final/` stays).

The arms are `rlsc_jax.arms`; the work is `rlsc_jax.experiment_runs`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlsc_jax.arms import ARMS
from rlsc_jax.cli import exit_process, prog, run_command


def main(argv: list[str] | None = None) -> int:
    """0; bad input (an unknown key, a missing --config, an --output that is a file) is one `error:` line and 2
    before anything runs, Ctrl-C one line and 130."""
    p = argparse.ArgumentParser(prog=prog("experiment"), description=__doc__.splitlines()[0])
    p.add_argument("--config", help="the task's YAML config, as for train.py (default: the embedded default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--baseline-temperatures", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--output", type=Path, default=Path("runs/experiment"))
    p.add_argument("--eval-steps", type=int, nargs="+", default=[],
                   help="also score every arm at these earlier steps (for accuracy_vs_steps.png)")
    p.add_argument("--train-scores", action=argparse.BooleanOptionalAction, default=True,
                   help="score every model on eval.num_questions of its training questions too (default: yes)")
    p.add_argument("--prune-checkpoints", action="store_true",
                   help="delete an arm's checkpoints once its result is kept (its final/ stays)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    argv = sys.argv[1:] if argv is None else argv
    # key=value may follow a list option (`--arms a b key=value`): set it apart before argparse's lists take it
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides

    def experiment() -> str:
        from rlsc_jax.experiment_runs import run_experiment  # JAX and the rest only past the command line
        return run_experiment(args)

    code, md = run_command(experiment,
                           "interrupted; rerun the same command to go on from the results it keeps")
    if not code:
        print(md)
    return code


def cli() -> None:
    """`python -m rlsc_jax.experiment`."""
    exit_process(main())


if __name__ == "__main__":
    cli()
