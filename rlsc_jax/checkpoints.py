"""Orbax checkpoints of the train state (params, optimizer state, RNG key) plus JSON metadata.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run killed
mid-save (even with SIGKILL) resumes from the last complete checkpoint. Multi-host: every process
calls save/restore with its global arrays; orbax writes each shard once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def abstract_like(tree):
    """Shape, dtype and sharding of every device array (host numpy arrays stay as they are): the restore
    target, so arrays come back on their mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.Array) else x, tree)


@contextlib.contextmanager
def _deferred_interrupt():
    """Holds SIGINT for the duration of the block and raises KeyboardInterrupt after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def preemption_notice():
    """Yields `reached(step) -> bool`, True from the step at which the run should save and stop for SIGTERM.

    One process: our SIGTERM handler's flag. Several: JAX's preemption sync point, which every process
    reaches at the same step (its service catches the SIGTERM), so all of them save the same step.
    """
    if jax.process_count() > 1:
        yield _sync_point
        return
    if threading.current_thread() is not threading.main_thread():
        yield lambda step: False
        return
    received = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append(True))
    try:
        yield lambda step: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sync_point(step: int) -> bool:
    """JAX's preemption sync point; False where its preemption service is off (it raises there)."""
    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:
        return False


def saved_steps(directory: str | Path) -> list[int]:
    """Steps of the complete checkpoints under `directory` (orbax names them by step; a save in progress
    has a temporary name), without opening a manager."""
    directory = Path(directory)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run under `directory`, indexed by completed steps."""

    def __init__(self, directory: str | Path, keep: int):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Saves asynchronously; the next save or `close` waits for it. A Ctrl-C during the call is held
        until the save is under way, so the interrupt's `close` completes it rather than tearing it."""
        with _deferred_interrupt():
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)))

    def latest_step(self) -> int | None:
        """Completed steps of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def restore(self, step: int, target: dict) -> tuple[dict, dict]:
        """The state (placed like `target`) and metadata saved at `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(target)), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def restore_latest(self, target: dict) -> tuple[int, dict | None, dict | None]:
        """(step, state, meta) of the newest checkpoint that restores, or (0, None, None) when none does.

        A checkpoint that fails to restore (a truncated array file, missing metadata) is reported in one
        line and moved aside to `<step>.unreadable`, so the run resumes from the previous complete one
        and later saves of that step do not collide with it. When none restores, a line says the run starts
        again from step 0.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return step, *self.restore(step, target)
            except Exception as e:  # noqa: BLE001  orbax and TensorStore raise many types for one bad file
                reason = (str(e).strip().splitlines() or [""])[0].split(" See full")[0][:200]
                print(f"checkpoint {step} does not restore ({type(e).__name__}: {reason}); "
                      f"moved aside to {step}.unreadable, trying the previous one")
                self._set_aside(step)
        if steps:
            print(f"no checkpoint in {self.directory} restores ({len(steps)} moved aside): starting again from step 0")
        return 0, None, None

    def _set_aside(self, step: int) -> None:
        """Renames an unreadable step directory (process 0; every process waits) and forgets it."""
        path = self.directory / str(step)
        if jax.process_index() == 0 and path.exists():
            path.rename(path.with_name(f"{step}.unreadable"))
        multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
