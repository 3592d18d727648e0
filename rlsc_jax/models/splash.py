"""Causal GQA attention through Pallas splash attention, the fused TPU kernel (`attention: splash`).

Padding is given to the kernel as segment ids (real tokens 1, padding 0), so rows padded on the left and on the right
need no re-layout; the sequence is padded to a multiple of 128. Under a mesh the kernel runs per device on its rows
and kv heads (`jax.shard_map`), as MaxText does: GSPMD cannot partition a Pallas call. Off TPU (the platform the
program is for, `sharding.platform`) the same kernel runs in Pallas' interpreter, which is how the tests check it
on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rlsc_jax.sharding import Rules, ambient_mesh, logical_spec, platform

BLOCKS = (512, 256, 128)  # the kernel's query and key block: the largest that divides the length padded to 128


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, rules: Rules) -> jax.Array:
    """Causal attention of q [B,T,K,G,D] over k, v [B,T,K,D]; key_mask [B,T] marks real tokens (any padding).
    Query rows at padding see only padding. Returns [B,T,K,G,D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    b, t, kv_heads, groups, d = q.shape
    width = -(-t // BLOCKS[-1]) * BLOCKS[-1]
    block = next(size for size in BLOCKS if width % size == 0)
    pad = ((0, 0), (0, width - t))
    q = jnp.pad(q, pad + ((0, 0),) * 3).transpose(0, 2, 3, 1, 4) * d**-0.5  # [B,K,G,T,D]
    k, v = (jnp.pad(x, pad + ((0, 0),) * 2).transpose(0, 2, 1, 3) for x in (k, v))  # [B,K,T,D]
    segments = jnp.pad(key_mask.astype(jnp.int32), pad)
    sizes = dict(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block, block_kv_dkv=block,
                 block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = kernel_lib.make_splash_mqa(mask_lib.MultiHeadMask([mask_lib.CausalMask((width, width))] * groups),
                                        block_sizes=kernel_lib.BlockSizes(**sizes), head_shards=1, q_seq_shards=1,
                                        interpret=platform() != "tpu")

    def one_head(q, k, v, segments):  # q [G,T,D], k and v [T,D]: one kv head's query group (MQA)
        return kernel(q, k, v, segment_ids=kernel_lib.SegmentIds(segments, segments))

    attend = jax.vmap(jax.vmap(one_head, (0, 0, 0, None)), (0, 0, 0, 0))
    mesh = ambient_mesh()
    if mesh is not None:
        rows, heads = logical_spec(("batch", "kv_heads"), (b, kv_heads), mesh, rules)
        attend = jax.shard_map(attend, in_specs=(P(rows, heads), P(rows, heads), P(rows, heads), P(rows)),
                               out_specs=P(rows, heads), check_vma=False)
    out = attend(q, k, v, segments)  # [B,K,G,T,D]
    return out.transpose(0, 3, 1, 2, 4)[:, :t]
