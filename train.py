"""`python train.py [--config FILE] [key=value ...]` in a checkout: the same as `rlsc-train` (rlsc_jax/train.py)."""

from rlsc_jax.cli import exit_process
from rlsc_jax.train import init_distributed, main, parse_args  # noqa: F401 (tests use them as train.*)

if __name__ == "__main__":
    exit_process(main())
