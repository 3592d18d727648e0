"""The Qwen2/Llama decoder in Flax NNX: one module for full forwards, KV-cache decoding and training.

Parameters carry logical axis names in their `logical_axes` metadata (layers, vocab, embed, heads,
kv_heads, head_dim, mlp); the model's `rules` (`rlsc_jax.sharding`) map those names to mesh axes, for the
parameters' placement and for every sharding constraint inside: the residual stream's rows are pinned to
the batch axes of whatever mesh the caller set (`jax.set_mesh`; none: no-op).

The decoder layers' parameters are stacked on a leading `layers` axis and run as one `jax.lax.scan`
(docs/memory.md): compile time and, with remat, training memory stay flat in depth.

Mixed precision: parameters live in `dtype` (fp32 masters by default); matmuls and attention run in
`compute_dtype`. RMSNorm statistics, softmax, RoPE, the residual stream and the LM head's accumulation
are fp32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rlsc_jax.models.config import ModelConfig
from rlsc_jax.models.splash import splash_attention
from rlsc_jax.sharding import (Rules, axis_rules, constrain_rows, decode_split, gather_fsdp, platform,
                               to_decode_layout)

# One layer's (k, v), each [batch, kv_heads, slots, head_dim]: kv-head-major, so a decode step's attention reads
# each head's keys as one contiguous block. The decode path holds one per layer, as a list (`init_cache`).
LayerCache = tuple[jax.Array, jax.Array]
DecodeCache = list[LayerCache]
_INIT = nnx.initializers.normal(0.02)

# Full-sequence attention (training, plain forwards) runs this many queries at a time, so a layer's
# scores take [rows, heads, QUERY_BLOCK, T] instead of [rows, heads, T, T] (docs/memory.md).
QUERY_BLOCK = 512

# What a rematerialised layer keeps for the backward pass: "nothing" (only each layer's input; the
# layer is recomputed) or "dots" (also the weight-matmul outputs: less recomputation, more memory).
REMAT_POLICIES = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _stacked(shape: tuple[int, ...], axes: tuple[str, ...], stack: int | None):
    """Shape and logical axes with a leading `layers` axis of size `stack` (unchanged when None)."""
    return (shape, axes) if stack is None else ((stack, *shape), ("layers", *axes))


def _param(rngs: nnx.Rngs | None, init, shape, dtype, axes: tuple[str, ...], stack: int | None = None) -> nnx.Param:
    """A parameter tagged with its logical axis names; with `stack`, `stack` of them on a leading `layers` axis."""
    shape, axes = _stacked(shape, axes, stack)
    value = init(rngs.params(), shape, dtype) if rngs is not None else jnp.zeros(shape, dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    """RMSNorm with fp32 statistics; the normalised input is cast to the weight's dtype, as transformers does."""

    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs | None, stack: int | None = None):
        self.eps = eps
        shape, axes = _stacked((dim,), ("embed",), stack)
        self.weight = nnx.Param(jnp.ones(shape, dtype), logical_axes=axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        weight = self.weight[...]
        return weight * x32.astype(weight.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half layout) of x [B, T, H, D] at integer positions [B, T], in fp32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2 :]
    rotated = jnp.concatenate([-x2, x1], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query attention with optional QKV bias and an optional dense KV cache."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs | None, stack: int | None = None):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q = _param(rngs, _INIT, (e, h, d), dtype, ("embed", "heads", "head_dim"), stack)
        self.k = _param(rngs, _INIT, (e, k, d), dtype, ("embed", "kv_heads", "head_dim"), stack)
        self.v = _param(rngs, _INIT, (e, k, d), dtype, ("embed", "kv_heads", "head_dim"), stack)
        self.o = _param(rngs, _INIT, (h, d, e), dtype, ("heads", "head_dim", "embed"), stack)
        if cfg.attention_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = _param(rngs, zeros, (h, d), dtype, ("heads", "head_dim"), stack)
            self.k_bias = _param(rngs, zeros, (k, d), dtype, ("kv_heads", "head_dim"), stack)
            self.v_bias = _param(rngs, zeros, (k, d), dtype, ("kv_heads", "head_dim"), stack)

    def __call__(self, x, positions, key_mask, cache=None, cache_index=None, fused: Callable | None = None):
        """x [B,T,E]; positions [B,T]; key_mask [B,S] marks real (non-pad) key slots.

        Without a cache the keys are this call's T tokens (S = T, query slot t sees key slots <= t).
        With a cache (k, v) of [B,K,S,D] the T new keys are written at slot `cache_index` and
        query t (slot cache_index + t) sees every real slot up to its own. Returns (out, new cache).
        `fused` (no cache): a fused attention (`fused_kernel`) in place of this module's own.
        """
        cfg = self.cfg
        q = jnp.einsum("bte,ehd->bthd", x, self.q[...])
        k = jnp.einsum("bte,ekd->btkd", x, self.k[...])
        v = jnp.einsum("bte,ekd->btkd", x, self.v[...])
        if cfg.attention_bias:
            q, k, v = q + self.q_bias[...], k + self.k_bias[...], v + self.v_bias[...]
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        b, t, h, d = q.shape
        q = q.reshape(b, t, cfg.num_kv_heads, h // cfg.num_kv_heads, d)
        if cache is not None:
            k_cache = jax.lax.dynamic_update_slice(cache[0], k.swapaxes(1, 2).astype(cache[0].dtype),
                                                   (0, 0, cache_index, 0))
            v_cache = jax.lax.dynamic_update_slice(cache[1], v.swapaxes(1, 2).astype(cache[1].dtype),
                                                   (0, 0, cache_index, 0))
            cache = (k_cache, v_cache)
            out = _cached_attention(q, k_cache, v_cache, cache_index + jnp.arange(t), key_mask)
        elif fused is not None:
            out = fused(q, k, v, key_mask)
        elif t > QUERY_BLOCK:
            out = _blocked_attention(q, k, v, key_mask)
        else:
            out = _attention(q, k, v, jnp.arange(t), key_mask)
        return jnp.einsum("bthd,hde->bte", out.reshape(b, t, h, d), self.o[...]), cache


def _attention(q, k, v, q_slot, key_mask):
    """Causal GQA attention of queries q [B,T,K,G,D] at cache slots q_slot [T] over keys/values [B,S,K,D]:
    fp32 scores and softmax; query slot t sees the real key slots <= t. Returns [B,T,K,G,D]."""
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    return _masked_softmax_values(scores, v, "bkgts,bskd->btkgd", q_slot, key_mask)


def _dot_product_attention(q, k, v, key_mask, implementation: str):
    """Causal GQA attention of q [B,T,K,G,D] over k, v [B,T,K,D] through `jax.nn.dot_product_attention`, whose
    cuDNN kernel takes padding only as per-row lengths: key_mask [B,T] must mark a prefix of each row
    (`Decoder.forward` moves the rows' left padding to the right first). Query rows past a row's length
    come out as zeros. Returns [B,T,K,G,D]."""
    b, t, kv_heads, groups, d = q.shape
    lengths = jnp.maximum(jnp.sum(key_mask, axis=-1, dtype=jnp.int32), 1)
    out = jax.nn.dot_product_attention(q.reshape(b, t, kv_heads * groups, d), k, v, is_causal=True,
                                       query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return out.reshape(q.shape)


def fused_kernel(name: str | None, rules: Rules) -> Callable | None:
    """The layers' full-sequence attention for a `Decoder.forward(fused_attention=name)`: None (this module's own),
    "splash" (Pallas, TPU; `models/splash.py`) or a `jax.nn.dot_product_attention` implementation ("cudnn"; "xla",
    the same API on any backend)."""
    if name is None:
        return None
    if name == "splash":
        return functools.partial(splash_attention, rules=rules)
    return functools.partial(_dot_product_attention, implementation=name)


def _masked_softmax_values(scores, v, values_eq, q_slot, key_mask):
    """Softmax of fp32 scores [B,K,G,T,S] over the key slots each query may see, applied to the values."""
    k_slot = jnp.arange(scores.shape[-1])
    allowed = (k_slot[None, :] <= q_slot[:, None])[None] & key_mask[:, None, :].astype(bool)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum(values_eq, probs, v)


# A cached attention reads only the first W slots of the cache, W the smallest of these (or the whole cache) that
# holds every query's slot, so a decode step's cost follows the filled cache rather than the token budget. Only
# for CPU (WINDOWED_CACHE None: the platform the program is for, `sharding.platform`): on a GPU the per-layer
# `lax.switch` waits on the host, which cost more than reading the whole cache (3.47 against 2.85 ms per token,
# the 1.5B model at 16 rows x 3072 tokens on an H200).
CACHE_WINDOWS = tuple(256 * 2 ** i for i in range(8))
WINDOWED_CACHE: bool | None = None


def _cached_attention(q, k_cache, v_cache, q_slot, key_mask):
    """`_attention` of queries q [B,T,K,G,D] at slots q_slot [T] over a kv-head-major cache [B,K,S,D], over the
    smallest window of leading slots that holds the last query (slots past it are masked anyway)."""
    slots = k_cache.shape[2]
    windowed = platform() == "cpu" if WINDOWED_CACHE is None else WINDOWED_CACHE
    windows = tuple(w for w in CACHE_WINDOWS if w < slots and windowed) + (slots,)

    def attend(width: int):
        def run(q, k, v, key_mask):
            k, v, key_mask = k[:, :, :width], v[:, :, :width], key_mask[:, :width]
            if q.shape[1] == 1:  # a decode step: XLA:CPU runs the dots 1.6x faster without the unit query axis
                scores = jnp.einsum("bkgd,bksd->bkgs", q[:, 0], k, preferred_element_type=jnp.float32)
                out = _masked_softmax_values(scores[:, :, :, None] * (q.shape[-1] ** -0.5), v, "bkgts,bksd->bkgtd",
                                             q_slot, key_mask)
                return jnp.moveaxis(out, 3, 1)
            scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
            return _masked_softmax_values(scores, v, "bkgts,bksd->btkgd", q_slot, key_mask)
        return run

    if len(windows) == 1:
        return attend(slots)(q, k_cache, v_cache, key_mask)
    index = jnp.searchsorted(jnp.asarray(windows), q_slot[-1], side="right")
    return jax.lax.switch(index, [attend(w) for w in windows], q, k_cache, v_cache, key_mask)


def _blocked_attention(q, k, v, key_mask):
    """`_attention` of a full sequence (no cache), QUERY_BLOCK queries at a time, each block rematerialised.

    Every block still sees all keys, so the result is the same; but only one block's [B,H,block,T] scores
    exist at a time, in the forward pass and in the backward (the block is recomputed there), so memory
    grows linearly in T instead of with T^2.
    """
    b, t = q.shape[:2]
    blocks = -(-t // QUERY_BLOCK)
    padded = jnp.pad(q, [(0, 0), (0, blocks * QUERY_BLOCK - t)] + [(0, 0)] * 3)
    q_blocks = jnp.moveaxis(padded.reshape(b, blocks, QUERY_BLOCK, *q.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(args):
        q_block, index = args
        return _attention(q_block, k, v, index * QUERY_BLOCK + jnp.arange(QUERY_BLOCK), key_mask)

    out = jax.lax.map(one, (q_blocks, jnp.arange(blocks)))
    return jnp.moveaxis(out, 0, 1).reshape(b, blocks * QUERY_BLOCK, *q.shape[2:])[:, :t]


class MLP(nnx.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs | None, stack: int | None = None):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = _param(rngs, _INIT, (e, m), dtype, ("embed", "mlp"), stack)
        self.up = _param(rngs, _INIT, (e, m), dtype, ("embed", "mlp"), stack)
        self.down = _param(rngs, _INIT, (m, e), dtype, ("mlp", "embed"), stack)

    def __call__(self, x):
        return (jax.nn.silu(x @ self.gate[...]) * (x @ self.up[...])) @ self.down[...]


class DecoderLayer(nnx.Module):
    """Pre-norm attention and MLP blocks around an fp32 residual stream.

    Built with `stack=L`, it holds L layers' parameters on a leading `layers` axis; `Decoder` scans
    over that axis and calls the module on one layer's slice at a time.
    """

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs | None, stack: int | None = None):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs, stack)
        self.attn = Attention(cfg, dtype, rngs, stack)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs, stack)
        self.mlp = MLP(cfg, dtype, rngs, stack)

    def __call__(self, x, positions, key_mask, cache=None, cache_index=None, fused: Callable | None = None,
                 mlp_rows=None):
        """`mlp_rows` (optional) re-lays the MLP's input rows out first: a tensor-parallel decode layout's MLP
        takes every row (`Decoder.decode`)."""
        a, cache = self.attn(self.input_norm(x), positions, key_mask, cache, cache_index, fused)
        x = x + a.astype(x.dtype)
        h = self.post_attn_norm(x)
        return x + self.mlp(h if mlp_rows is None else mlp_rows(h)).astype(x.dtype), cache


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions that skip left padding: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


# Full-sequence attention, by config name: this module's own (blocked, the reference and default),
# `jax.nn.dot_product_attention`'s fused cuDNN kernel (NVIDIA GPUs, bfloat16 or float16 compute) or Pallas splash
# attention (TPUs), for the layers' full-sequence passes (`fused_kernel`).
ATTENTION = {"xla": None, "cudnn": "cudnn", "splash": "splash"}


def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Each row b of x [B,T,...] rotated left by shift[b] positions (out[b, t] = x[b, (t + shift[b]) mod T])."""
    index = (jnp.arange(x.shape[1])[None, :] + shift[:, None]) % x.shape[1]
    return jnp.take_along_axis(x, index.reshape(*index.shape, *(1,) * (x.ndim - 2)), axis=1)


class Decoder(nnx.Module):
    """Qwen2/Llama causal LM. `model(input_ids)` returns fp32 logits [B, T, V].

    `dtype` is the parameters' storage dtype, `compute_dtype` (default: `dtype`) what matmuls and
    attention run in; `rules` (overrides of `sharding.DEFAULT_RULES`) its logical-axis rules.
    """

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, compute_dtype=None, rules=None,
                 rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.dtype = dtype
        self.compute_dtype = dtype if compute_dtype is None else compute_dtype
        self.rules: Rules = axis_rules(rules)  # static: part of the graphdef, so of every jitted program's key
        self.embed = _param(rngs, _INIT, (cfg.vocab_size, cfg.hidden_size), dtype, ("vocab", "embed"))
        self.layers = DecoderLayer(cfg, dtype, rngs, stack=cfg.num_layers)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, _INIT, (cfg.hidden_size, cfg.vocab_size), dtype, ("embed", "vocab"))

    def head_weight(self) -> jax.Array:
        """The [E, V] output projection in the storage dtype (the transposed embedding when tied)."""
        return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

    def logits(self, hidden: jax.Array, head: jax.Array | None = None) -> jax.Array:
        """LM head in the compute dtype with fp32 accumulation and fp32 output; `head` is `decode_head()`'s copy
        (None: the parameters)."""
        cd = self.compute_dtype
        if head is not None:
            return jnp.einsum("...e,ve->...v", hidden.astype(cd), head, preferred_element_type=jnp.float32)
        return jnp.einsum("...e,ev->...v", hidden.astype(cd), self.head_weight().astype(cd),
                          preferred_element_type=jnp.float32)

    def decode_head(self) -> jax.Array | None:
        """The output projection as [V, E] in the compute dtype, in the sampler's layout (`sharding.decode_rules`:
        gathered over FSDP, the vocabulary split over the `decode_split` axes).

        XLA:CPU multiplies a few rows by [V, E] (each logit one contiguous row) 1.5-3x faster than by [E, V], so
        an untied head is transposed once per sampling call. None when the tied embedding already is that array
        (no cast, no split), so the sampler holds no second copy of it.
        """
        if self.cfg.tie_word_embeddings and self.compute_dtype == self.dtype and not decode_split(self.rules):
            return None
        weight = self.embed[...] if self.cfg.tie_word_embeddings else self.lm_head[...].T
        return to_decode_layout(weight.astype(self.compute_dtype), ("vocab", "embed"), self.rules)

    def decode_logits(self, hidden: jax.Array, head: jax.Array | None) -> jax.Array:
        """`logits` of the sampler's rows [B, E] by `decode_head()`'s copy, returned with the rows on the batch axes.
        With a split vocabulary every device takes every row (less the split axes) and the logits are then
        re-laid out by rows, so no device gathers the head."""
        split = decode_split(self.rules)
        if split:
            hidden = constrain_rows(hidden, self.rules, without=split)
        return constrain_rows(self.logits(hidden, head), self.rules)

    def unstacked_layers(self) -> list[nnx.State]:
        """Each layer's parameters as arrays of their own, in the compute dtype and in the sampler's decode layout
        (`sharding.decode_rules`: gathered over FSDP; the MLP's hidden units split over the `decode_split` axes).

        A decode step that scans the stacked parameters slices (and casts) every weight per token, and on a
        mesh FSDP-sharded weights would be all-gathered per token unless the compiler hoists the gathers out
        of the loop. Built once per sampling call, this copy is read in place by every decode step.
        """
        _, stacked = nnx.split(self.layers)
        cd, rules = self.compute_dtype, self.rules

        def layer(i: int) -> nnx.State:
            def weight(var: nnx.Variable) -> nnx.Variable:
                axes = var.get_metadata()["logical_axes"][1:]  # a stacked parameter's first axis is "layers"
                return var.replace(to_decode_layout(var.get_value()[i].astype(cd), axes, rules))
            return jax.tree.map(weight, stacked, is_leaf=lambda v: isinstance(v, nnx.Variable))
        return [layer(i) for i in range(self.cfg.num_layers)]

    def _embedded(self, input_ids, positions, attention_mask):
        """The residual stream's input (fp32, rows pinned to the batch axes), with default mask and positions."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = default_positions(attention_mask)
        return constrain_rows(self.embed[...][input_ids].astype(jnp.float32), self.rules), positions, attention_mask

    def _scan(self, x, positions, attention_mask, remat: str | None, fused: str | None, collect: bool):
        """The stacked layers over a full sequence as one `lax.scan`; each layer's weights cast to the compute
        dtype and gathered over FSDP inside the body. Returns (output, each layer's output if `collect`)."""
        cd, rules = self.compute_dtype, self.rules
        graphdef, stacked = nnx.split(self.layers)
        attend = fused_kernel(fused, rules)

        def compute_weight(var: nnx.Variable) -> nnx.Variable:
            # cast before FSDP's all-gather, so bf16 compute gathers half the bytes; axes[0] is "layers"
            return var.replace(gather_fsdp(var.get_value().astype(cd), var.get_metadata()["logical_axes"][1:], rules))

        def body(x, layer_state):
            layer_state = jax.tree.map(compute_weight, layer_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
            x, _ = nnx.merge(graphdef, layer_state)(x, positions, attention_mask, fused=attend)
            x = constrain_rows(x, rules)
            return x, x if collect else None

        if remat:
            body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
        return jax.lax.scan(body, x, stacked)

    def forward(self, input_ids, positions=None, attention_mask=None, *, remat: str | None = None,
                fused_attention: str | None = None) -> jax.Array:
        """Final-normed hidden states [B, T, E] (compute dtype) of full sequences: training and plain forwards.

        attention_mask [B, T] marks real tokens; positions default to each row's count of real tokens. `remat`
        names a `REMAT_POLICIES` entry: each layer is recomputed in the backward pass, keeping what the policy
        saves. `fused_attention` names the fused attention the layers attend with (`fused_kernel`, one of
        `ATTENTION`'s values); each row's real tokens must be one contiguous run (left and right padding, as in
        training). For `jax.nn.dot_product_attention` the rows are rotated so that run starts at slot 0, which is
        the only padding its cuDNN kernel takes, and the hidden states rotated back; splash takes any padding.
        """
        x, positions, attention_mask = self._embedded(input_ids, positions, attention_mask)
        rotate = fused_attention not in (None, "splash")
        if rotate:
            shift = jnp.argmax(attention_mask, axis=-1)
            x, positions, attention_mask = (_roll_rows(a, shift) for a in (x, positions, attention_mask))
        x, _ = self._scan(x, positions, attention_mask, remat, fused_attention, collect=False)
        hidden = self.final_norm(x).astype(self.compute_dtype)
        return _roll_rows(hidden, -shift) if rotate else hidden

    def collect(self, input_ids, positions=None, attention_mask=None) -> tuple[jax.Array, list[jax.Array]]:
        """`forward`'s hidden states and every layer's input plus the last layer's output (transformers'
        `output_hidden_states` before its final norm): for layer-by-layer parity."""
        x, positions, attention_mask = self._embedded(input_ids, positions, attention_mask)
        out, outputs = self._scan(x, positions, attention_mask, None, None, collect=True)
        return self.final_norm(out).astype(self.compute_dtype), [x, *outputs]

    def decode(self, input_ids, positions, key_mask, cache: DecodeCache, cache_index,
               layers: list[nnx.State]) -> tuple[jax.Array, DecodeCache]:
        """Hidden states [B, T, E] of T new tokens written at cache slot `cache_index`, and the updated cache:
        the sampler's prefill (T = the prompt) and decode steps (T = 1).

        key_mask [B, S] marks the real cache slots; `layers` (`unstacked_layers`) and the per-layer `cache`
        (`init_cache`) are run one layer after another, each read in place.
        """
        x, _, _ = self._embedded(input_ids, positions, key_mask)
        graphdef = nnx.graphdef(self.layers)
        split = decode_split(self.rules)
        mlp_rows = (lambda h: constrain_rows(h, self.rules, without=split)) if split else None
        new_cache = []
        for layer_state, layer_cache in zip(layers, cache, strict=True):
            x, layer_cache = nnx.merge(graphdef, layer_state)(x, positions, key_mask, layer_cache, cache_index,
                                                              mlp_rows=mlp_rows)
            x = constrain_rows(x, self.rules)
            new_cache.append(layer_cache)
        return self.final_norm(x).astype(self.compute_dtype), new_cache

    def __call__(self, input_ids, positions=None, attention_mask=None):
        return self.logits(self.forward(input_ids, positions, attention_mask))


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> DecodeCache:
    """A zeroed dense KV cache for `Decoder.decode`: one (k, v) of [batch, kv_heads, length, head_dim] per layer."""
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]
