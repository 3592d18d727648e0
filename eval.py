"""Evaluate a model on math benchmarks: `python eval.py --model DIR [--benchmarks ...] [key=value ...]`."""

import sys

from rlsc_jax.eval_cli import main

if __name__ == "__main__":
    sys.exit(main())
