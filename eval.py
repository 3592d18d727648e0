"""`python eval.py --model DIR [--benchmarks ...] [key=value ...]` in a checkout: the same as `rlsc-eval`."""

from rlsc_jax.cli import exit_process
from rlsc_jax.eval import main

if __name__ == "__main__":
    exit_process(main())
