"""The train state: step, parameters, optimizer state and the run's RNG key, one typed pytree (as levanter's
`TrainerState`) that the jitted step takes, donates and returns, and its checkpoint layout."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import struct


@struct.dataclass
class TrainState:
    """step: [] int32, steps taken (skipped ones too); opt_state: the optimizer's; params: the model's `nnx.State`;
    rng: the run's base key, never advanced: step k draws its samples with `sample_key()` = fold_in(rng, k), so any
    step's randomness follows from (seed, step) alone, on resume as in an uninterrupted run."""

    step: jax.Array
    # opt_state before params, the order the step's arguments had as a dict: with params first, XLA's buffer
    # assignment gives the 0.5B step 7.72 GB of temp instead of 6.28 GB (tests/test_memory.py's shape, on CPU)
    opt_state: Any
    params: Any
    rng: jax.Array

    def sample_key(self) -> jax.Array:
        """The key this step's sampler draws with."""
        return jax.random.fold_in(self.rng, self.step)

    def to_checkpoint(self) -> dict:
        """The tree a checkpoint holds: params, opt_state and the key's raw data; the step is the checkpoint's."""
        return {"params": self.params, "opt_state": self.opt_state, "rng": np.asarray(jax.random.key_data(self.rng))}

    def from_checkpoint(self, tree: dict, step: int) -> TrainState:
        """This state with a checkpoint's tree (`to_checkpoint`'s layout) restored at `step`, placed as this one is."""
        return TrainState(step=jax.device_put(np.int32(step), self.step.sharding), params=tree["params"],
                          opt_state=tree["opt_state"],
                          rng=jax.device_put(jax.random.wrap_key_data(np.asarray(tree["rng"])), self.rng.sharding))
