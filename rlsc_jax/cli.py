"""What the commands share at the process boundary: one-line errors, exit codes, a clean exit. Imports nothing
heavy, so a command can set up JAX's environment after importing it."""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def prog(module: str) -> str | None:
    """argparse's program name: `python -m rlsc_jax.<module>` when run so, else its default (`train.py`,
    `rlsc-train`)."""
    return f"python -m rlsc_jax.{module}" if sys.argv[0].endswith(os.path.join("rlsc_jax", f"{module}.py")) else None


class Preempted(Exception):
    """SIGTERM (a scheduler's preemption notice) arrived: the run saved a checkpoint and stopped."""


def run_command(fn: Callable[[], T], interrupted: str) -> tuple[int, T | None]:
    """(0, fn()); bad input or an unreadable/unwritable file (ValueError, OSError) is one `error:` line on stderr
    and exit code 2, Ctrl-C the line `interrupted` and 130, a preemption (SIGTERM, checkpoint saved) its line
    and 143, the code of a process ended by SIGTERM, which schedulers read as "requeue"."""
    try:
        return 0, fn()
    except Preempted as e:
        print(e, file=sys.stderr)
        return 143, None
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130, None


def exit_process(code: int) -> None:
    """Ends the process with `code`. After Ctrl-C it skips interpreter teardown: the interrupt can land
    mid-compile, and tearing down XLA's threads then can crash (a segfault instead of exit 130)."""
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
