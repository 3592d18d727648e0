"""The Qwen2/Llama decoder in Flax NNX: one module for full forwards, KV-cache decoding and training.

Parameters carry logical axis names in their `logical_axes` metadata (vocab, embed, heads, kv_heads,
head_dim, mlp); `rlsc_jax.sharding` maps those names to mesh axes. Nothing here knows about meshes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlsc_jax.models.config import ModelConfig

KVCache = list[tuple[jax.Array, jax.Array]]
_INIT = nnx.initializers.normal(0.02)


def _param(rngs: nnx.Rngs | None, init, shape, dtype, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter tagged with its logical axis names."""
    value = init(rngs.params(), shape, dtype) if rngs is not None else jnp.zeros(shape, dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32 and cast back, as transformers does."""

    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs | None):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


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

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs | None):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q = _param(rngs, _INIT, (e, h, d), dtype, ("embed", "heads", "head_dim"))
        self.k = _param(rngs, _INIT, (e, k, d), dtype, ("embed", "kv_heads", "head_dim"))
        self.v = _param(rngs, _INIT, (e, k, d), dtype, ("embed", "kv_heads", "head_dim"))
        self.o = _param(rngs, _INIT, (h, d, e), dtype, ("heads", "head_dim", "embed"))
        if cfg.attention_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = _param(rngs, zeros, (h, d), dtype, ("heads", "head_dim"))
            self.k_bias = _param(rngs, zeros, (k, d), dtype, ("kv_heads", "head_dim"))
            self.v_bias = _param(rngs, zeros, (k, d), dtype, ("kv_heads", "head_dim"))

    def __call__(self, x, positions, key_mask, cache=None, cache_index=None):
        """x [B,T,E]; positions [B,T]; key_mask [B,S] marks real (non-pad) key slots.

        Without a cache the keys are this call's T tokens (S = T, query slot t sees key slots <= t).
        With a cache (k, v) of [B,S,K,D] the T new keys are written at slot `cache_index` and
        query t (slot cache_index + t) sees every real slot up to its own. Returns (out, new cache).
        """
        cfg = self.cfg
        q = jnp.einsum("bte,ehd->bthd", x, self.q[...])
        k = jnp.einsum("bte,ekd->btkd", x, self.k[...])
        v = jnp.einsum("bte,ekd->btkd", x, self.v[...])
        if cfg.attention_bias:
            q, k, v = q + self.q_bias[...], k + self.k_bias[...], v + self.v_bias[...]
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        start = 0
        if cache is not None:
            start = cache_index
            k_cache = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, start, 0, 0))
            v_cache = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, start, 0, 0))
            k, v, cache = k_cache, v_cache, (k_cache, v_cache)
        b, t, h, d = q.shape
        groups = h // cfg.num_kv_heads
        q = q.reshape(b, t, cfg.num_kv_heads, groups, d)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
        q_slot = start + jnp.arange(t)
        k_slot = jnp.arange(k.shape[1])
        allowed = (k_slot[None, :] <= q_slot[:, None])[None] & key_mask[:, None, :].astype(bool)
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)
        return jnp.einsum("bthd,hde->bte", out, self.o[...]), cache


class MLP(nnx.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs | None):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = _param(rngs, _INIT, (e, m), dtype, ("embed", "mlp"))
        self.up = _param(rngs, _INIT, (e, m), dtype, ("embed", "mlp"))
        self.down = _param(rngs, _INIT, (m, e), dtype, ("mlp", "embed"))

    def __call__(self, x):
        return (jax.nn.silu(x @ self.gate[...]) * (x @ self.up[...])) @ self.down[...]


class DecoderLayer(nnx.Module):
    """Pre-norm attention and MLP blocks with residuals."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs | None):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs)
        self.attn = Attention(cfg, dtype, rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs)
        self.mlp = MLP(cfg, dtype, rngs)

    def __call__(self, x, positions, key_mask, cache=None, cache_index=None):
        a, cache = self.attn(self.input_norm(x), positions, key_mask, cache, cache_index)
        x = x + a
        return x + self.mlp(self.post_attn_norm(x)), cache


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions that skip left padding: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


class Decoder(nnx.Module):
    """Qwen2/Llama causal LM. `model(input_ids)` returns fp32 logits [B, T, V]."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.dtype = dtype
        self.embed = _param(rngs, _INIT, (cfg.vocab_size, cfg.hidden_size), dtype, ("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(cfg, dtype, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, _INIT, (cfg.hidden_size, cfg.vocab_size), dtype, ("embed", "vocab"))

    def head_weight(self) -> jax.Array:
        """The [E, V] output projection (the transposed embedding when tied)."""
        return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head with fp32 accumulation and fp32 output."""
        return jnp.einsum("...e,ev->...v", hidden, self.head_weight(), preferred_element_type=jnp.float32)

    def hidden_states(self, input_ids, positions=None, attention_mask=None, cache: KVCache | None = None,
                      cache_index=None, remat: bool = False, collect: bool = False):
        """Final-normed hidden states [B, T, E] and the updated cache.

        attention_mask is [B, T] without a cache and [B, S] (over cache slots) with one; positions
        default to each row's count of real tokens. `remat` recomputes each layer in the backward
        pass; `collect` also returns every layer's output (as transformers' `output_hidden_states`).
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = default_positions(attention_mask)
        x = self.embed[...][input_ids]
        collected = [x]
        new_cache = [] if cache is not None else None

        def run(layer, x, layer_cache):
            return layer(x, positions, attention_mask, layer_cache, cache_index)

        if remat:
            run = nnx.remat(run)
        for i, layer in enumerate(self.layers):
            x, layer_cache = run(layer, x, None if cache is None else cache[i])
            if cache is not None:
                new_cache.append(layer_cache)
            collected.append(x)
        x = self.final_norm(x)
        if collect:
            return x, collected
        return x, new_cache

    def __call__(self, input_ids, positions=None, attention_mask=None):
        hidden, _ = self.hidden_states(input_ids, positions, attention_mask)
        return self.logits(hidden)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    """A zeroed dense KV cache: per layer (k, v) of shape [batch, length, kv_heads, head_dim]."""
    shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]
