"""Evaluate a model on math benchmarks: `python eval.py --model DIR [--benchmarks ...] [key=value ...]`."""

from rlsc_jax.cli import exit_process
from rlsc_jax.eval_cli import main

if __name__ == "__main__":
    exit_process(main())
