"""The fused (cuDNN) attention against this project's own, on the accelerator: hidden states and gradients of a
random model with the config's shapes at a few layers, rows padded on both sides, in the config's compute dtype.

    JAX_PLATFORMS=cuda python bench/fused_check.py model=configs/models/qwen2.5-math-1.5b [--layers 2]

Prints the largest error on real positions relative to the largest value, for the hidden states and for each
gradient; exit 1 when any exceeds --tol (bf16 attention: the two kernels round differently).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config, as for train.py")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--implementation", default="cudnn", help="jax.nn.dot_product_attention's implementation")
    p.add_argument("--tol", type=float, default=3e-2)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_intermixed_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rlsc_jax.config import load_config
    from rlsc_jax.dtypes import DTYPES
    from rlsc_jax.models import Decoder, ModelConfig

    cfg = load_config(args.config, args.overrides)
    model_cfg = dataclasses.replace(ModelConfig.from_file(cfg.model), num_layers=args.layers)
    model = Decoder(model_cfg, dtype=DTYPES[cfg.dtype], compute_dtype=DTYPES[cfg.compute_dtype], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, model_cfg.vocab_size, (args.rows, args.width)), jnp.int32)
    mask = np.ones((args.rows, args.width), np.int32)
    for r in range(args.rows):  # prompts of different lengths on the left, completions ending early on the right
        mask[r, : 37 * r] = 0
        mask[r, args.width - 53 * r:] = 0
    weights = jnp.asarray(rng.normal(size=(args.rows, args.width, model_cfg.hidden_size)), jnp.float32)
    graphdef, state = nnx.split(model)

    def value_and_grad(state, fused):
        def loss(state):
            hidden = nnx.merge(graphdef, state).forward(ids, attention_mask=jnp.asarray(mask), fused_attention=fused)
            hidden = hidden.astype(jnp.float32)
            return jnp.sum(jnp.where(jnp.asarray(mask)[..., None] == 1, hidden * weights, 0.0)), hidden
        return jax.value_and_grad(loss, has_aux=True)(state)

    value_and_grad = jax.jit(value_and_grad, static_argnums=1)
    (_, want), want_grads = value_and_grad(state, None)
    (_, got), grads = value_and_grad(state, args.implementation)
    real = mask == 1
    rel = lambda a, b: float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))  # noqa: E731
    errors = {"hidden": rel(np.asarray(got)[real], np.asarray(want)[real])}
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
        errors["grad " + jax.tree_util.keystr(path)] = rel(np.asarray(g, np.float32), np.asarray(w, np.float32))
    worst = max(errors, key=errors.get)
    print(f"{args.implementation} vs this project's attention on {jax.devices()[0].device_kind}, {args.layers} layers "
          f"of {cfg.model}, {args.rows} x {args.width} tokens, {cfg.compute_dtype} compute: hidden states "
          f"{errors['hidden']:.2e}, worst gradient {max(v for k, v in errors.items() if k != 'hidden'):.2e} "
          f"(relative to the largest value; worst of all: {worst})")
    return int(errors[worst] > args.tol)


if __name__ == "__main__":
    sys.exit(main())
