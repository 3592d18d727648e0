"""Pretrains the embedded models: a small Qwen2 decoder taught a synthetic arithmetic task by NLL.

    python -m rlsc_jax.pretrain --output rlsc_jax/assets/default_model [--steps N] [--seed S]
    python -m rlsc_jax.pretrain --task long --output rlsc_jax/assets/long_model

The command line: its settings and checks are `rlsc_jax.pretrain_config` (no JAX, so `--help` and bad flags
answer at once), the work `rlsc_jax.pretraining` (how, and what `--task long` starts from).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.pretrain_config import TASK_DEFAULTS, PretrainConfig, check


def main(argv: list[str] | None = None) -> int:
    """CLI: pretrain, report on held-out questions, save to --output (which must be absent or empty). Bad input
    is one `error:` line and exit 2 before any work; Ctrl-C exits 130 with one line, saving nothing."""
    parser = argparse.ArgumentParser(prog=prog("pretrain"), description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None,
                            help=f"default {field.default}" + (" (--task long: see TASK_DEFAULTS)"
                                                               if field.name in TASK_DEFAULTS["long"] else ""))
    args = parser.parse_args(argv)

    def pretrain() -> dict:
        task = args.task or PretrainConfig.task
        if task not in TASK_DEFAULTS:
            raise ValueError(f"--task {task!r}: expected one of {', '.join(TASK_DEFAULTS)}")
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)
                 if getattr(args, f.name) is not None}
        cfg = PretrainConfig(**{**TASK_DEFAULTS[task], **given})
        check(cfg, args.output)
        from rlsc_jax import pretraining
        start = time.time()
        tok = pretraining.build_tokenizer(cfg)
        model, losses = pretraining.train(cfg, tok)
        pretraining.check_finite(model, losses)
        train_seconds = time.time() - start
        heldout = pretraining.heldout_report(model, tok, cfg)
        report = {"heldout": heldout, "loss_curve": pretraining.loss_curve(losses),
                  "num_params": model.cfg.num_params, "train_seconds": round(train_seconds),
                  "wall_seconds": round(time.time() - start), "config": dataclasses.asdict(cfg)}
        pretraining.save(model, tok, args.output, report)
        return report

    code, report = run_command(pretrain, "interrupted; nothing was saved")
    if not code:
        print(json.dumps({k: report[k] for k in ("heldout", "loss_curve", "wall_seconds")}, indent=2))
    return code


def cli() -> None:
    """`python -m rlsc_jax.pretrain`."""
    exit_process(main())


if __name__ == "__main__":
    cli()
