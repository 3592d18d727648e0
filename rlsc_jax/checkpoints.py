"""Orbax checkpoints of the train state (params, optimizer state, RNG key) plus JSON metadata.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run killed
mid-save (even with SIGKILL) resumes from the last complete checkpoint. Multi-host: every process
calls save/restore with its global arrays; orbax writes each shard once.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def abstract_like(tree):
    """Shape, dtype and sharding of every device array (host numpy arrays stay as they are): the restore
    target, so arrays come back on their mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.Array) else x, tree)


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run under `directory`, indexed by completed steps."""

    def __init__(self, directory: str | Path, keep: int):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True))

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Saves asynchronously; the next save or `close` waits for it."""
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

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
