"""Label-free fine-tuning (RLSC unless `objective=` names another). `rlsc-train [--config FILE] [key=value ...]`
(or `python -m rlsc_jax.train`, or `python train.py` in a checkout); no arguments runs the CPU default.

Several processes (multi-host GPU or a TPU pod slice) run the same command with `--distributed`
(JAX auto-detects TPU / SLURM / Open MPI) or with `--coordinator HOST:PORT --num-processes N --process-id I`.
"""

from __future__ import annotations

import argparse
import os

from rlsc_jax.cli import exit_process, prog, run_command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("train"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (keys as in rlsc_jax/config.py)")
    p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with auto-detection")
    p.add_argument("--coordinator", help="HOST:PORT of process 0, for an explicit multi-process launch")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=10 mesh.fsdp=-1")
    return p.parse_args(argv)


def init_distributed(args: argparse.Namespace) -> None:
    """Starts JAX's multi-controller runtime when asked to (CPU processes talk through gloo)."""
    import jax
    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id")
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def train():
        from rlsc_jax.config import load_config
        cfg = load_config(args.config, args.overrides)
        init_distributed(args)
        from rlsc_jax.loop import run
        return cfg, run(cfg)

    code, done = run_command(train, "interrupted; rerun the same command to resume from the last complete checkpoint")
    if code:
        return code
    cfg, result = done
    from rlsc_jax.report import before_after_table, truncation_warning
    if result.get("before") and result.get("after"):
        if "protocol" in result["before"]:
            print(f"held-out evaluation: protocol {result['before']['protocol']}, before and after")
        print(before_after_table(result["before"], result["after"]))
        for label in ("before", "after"):
            warning = truncation_warning(f"held-out {label}", result[label])
            if warning:
                print(warning)
    out = cfg.output_dir
    written = ["metrics.jsonl", "samples.jsonl"] + (["final/"] if cfg.export_final else [])
    curves = f"; curves: {os.path.join(out, 'curves.png')}" if cfg.plot else ""
    print(f"done: {result['steps']} steps in {out} ({', '.join(written)}){curves}")
    return 0


def cli() -> None:
    """The `rlsc-train` console script."""
    exit_process(main())


if __name__ == "__main__":
    cli()
