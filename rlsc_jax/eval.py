"""`rlsc-eval` (or `python -m rlsc_jax.eval`, or `python eval.py` in a checkout): evaluate an HF-format model on
math benchmarks. Parsing imports no JAX, so `--help` and bad options answer at once; the work is in eval_cli."""

from __future__ import annotations

import argparse

from rlsc_jax.benchmarks import BENCHMARK_DIR, BENCHMARKS
from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.protocols import DEFAULT_PROTOCOL, PROTOCOLS, SETTINGS

# eval_cli.EvalRunConfig's settings by their command-line names, but mesh (a test keeps the two equal; eval_cli
# imports JAX)
SETTING_NAMES = (*SETTINGS, "batch_size", "seed", "dtype", "question_field", "answer_field")


def parser() -> argparse.ArgumentParser:
    """The `eval.py` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog("eval"), description="Evaluate an HF-format model on math benchmarks (accuracy, maj@k, pass@k).",
        epilog=f"settings (key=value; each overrides the protocol's value): {', '.join(SETTING_NAMES)}"
               ", mesh.data, mesh.fsdp, mesh.tensor, mesh.rules.<logical axis>")
    p.add_argument("--model", required=True, help="HF checkpoint directory (config, safetensors, tokenizer)")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL,
                   help=f"named settings: {', '.join(PROTOCOLS)} (default {DEFAULT_PROTOCOL}; see docs/evaluation.md)")
    p.add_argument("--benchmarks", help=f"comma-separated, from: {', '.join(BENCHMARKS)} (default: all, "
                                        "or none when --jsonl is given)")
    p.add_argument("--data-dir", default=str(BENCHMARK_DIR),
                   help="directory holding the benchmark JSONL files (default: the copies shipped in the package)")
    p.add_argument("--jsonl", action="append", metavar="FILE",
                   help="a JSONL of questions and answers (fields: question_field=, answer_field=); repeatable")
    p.add_argument("--output-dir", help="where records and results.json go (default: outputs/eval-<model name>)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="repeat a sampled protocol once per seed (in OUTPUT_DIR/seed-S); report mean and sd")
    p.add_argument("--compare", metavar="DIR",
                   help="another eval.py output folder (same protocol and benchmarks): both pass@k curves in one plot")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="sampling / evaluation settings")
    return p


def main(argv: list[str] | None = None) -> int:
    """0 on success; bad input is a one-line `error: ...` on stderr and exit status 2."""
    args = parser().parse_intermixed_args(argv)
    from rlsc_jax.eval_cli import run
    return run_command(lambda: run(args), "interrupted: run the same command again to resume")[0]


def cli() -> None:
    """The `rlsc-eval` console script."""
    exit_process(main())


if __name__ == "__main__":
    cli()
