"""Jitted sampler: one prefill per prompt, its KV cache broadcast N ways, then a `lax.while_loop` decode;
`Sampler` holds the static settings and the three compiled programs, `sample` drives them.

Prompts are left-padded into power-of-two buckets (batch and length) with explicit positions, so
new prompts of a similar size reuse the compiled programs. The dense cache is donated to the
decode loop and updated in place. Each row stops at its first EOS; the loop ends when every row
has stopped or after `max_new_tokens`. On a mesh the sample rows are sharded over the model's batch axes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from rlsc_jax import sharding as sharding_lib
from rlsc_jax.models import DecodeCache, Decoder, init_cache


@dataclasses.dataclass
class Samples:
    """Completions for `len(prompts) * num_samples` rows; the rows of one prompt are adjacent.

    tokens / completion_mask / logprobs are [rows, max_new_tokens]; the mask is 1 up to and
    including the first EOS. logprobs are log softmax(logits / temperature) of the sampled tokens
    (temperature 1 for greedy), unaffected by top-k/top-p. prompt_ids / prompt_mask (host numpy) hold
    each row's left-padded prompt. On a mesh the device arrays are global, sharded over rows.
    """

    tokens: jax.Array
    completion_mask: jax.Array
    lengths: jax.Array
    logprobs: jax.Array
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray


@struct.dataclass
class DecodeState:
    """The decode loop's carry; rows = prompts x samples, sharded over the batch axes on a mesh.

    step: int32 scalar, the next column to fill; cache: per layer (k, v), each [rows, kv_heads,
    prompt + max_new_tokens, head_dim] in the compute dtype; done: bool [rows], an EOS emitted; lengths: int32
    [rows], tokens emitted up to and including EOS; tokens: int32 [rows, max_new_tokens] (pad after EOS); logprobs: float32
    [rows, max_new_tokens], each token's log-prob at the temperature (0 after EOS).
    """

    step: jax.Array
    cache: DecodeCache
    done: jax.Array
    lengths: jax.Array
    tokens: jax.Array
    logprobs: jax.Array


def _bucket(n: int, minimum: int) -> int:
    """Next power of two at or above n (and minimum), the static size a call compiles for."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def bucket_rows(num_prompts: int) -> int:
    """Prompt rows a call with `num_prompts` prompts compiles for."""
    return _bucket(num_prompts, 1)


def bucket_length(prompt_len: int) -> int:
    """Prompt width a call whose longest prompt has `prompt_len` tokens compiles for."""
    return _bucket(prompt_len, 16)


def mesh_of(state) -> jax.sharding.Mesh | None:
    """The mesh the parameters live on, if they are NamedSharding-placed."""
    leaf = jax.tree.leaves(state)[0]
    sharding = getattr(leaf, "sharding", None)
    return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None


def _pick(logits, key, temperature, greedy: bool, top_k: int, top_p):
    """Samples one token per row from fp32 logits; returns the token and its log-prob at the temperature."""
    if greedy:
        token = jnp.argmax(logits, axis=-1)
        return token, _token_logp(logits, token)
    scaled = logits / temperature
    masked = scaled
    if top_k > 0:
        masked = jnp.where(scaled < _kth_largest(scaled, top_k), -jnp.inf, masked)
    if top_p is not None:
        order = jnp.argsort(-masked, axis=-1)
        sorted_logits = jnp.take_along_axis(masked, order, -1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        cut = jnp.where(before < top_p, sorted_logits, -jnp.inf)
        masked = jnp.full_like(masked, -jnp.inf).at[jnp.arange(masked.shape[0])[:, None], order].set(cut)
    token = _inverse_cdf(key, masked)
    return token, _token_logp(scaled, token)


def _token_logp(logits, token):
    """log softmax(logits)[token] per row, without materialising the whole [rows, V] log-softmax."""
    picked = jnp.take_along_axis(logits, token[:, None], -1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


# How top-k finds each row's k-th largest logit: None = by bisection for CPU, by block maxima for other platforms
# (the platform the program is for, `sharding.platform`: a TPU plan compiled on a CPU host takes the TPU's way).
TOP_K_BISECTION: bool | None = None


def _kth_largest(x, k: int):
    """Each row's k-th largest value of x [rows, V] (ties counted), as [rows, 1].

    On CPU, a bisection over float32's bit patterns ordered as integers: at most 32 compare-and-count passes
    over the row. `lax.top_k` sorts, and at V = 152k on CPU it cost 300 ms a decode step, more than the whole
    model. On a GPU each pass of the bisection's data-dependent loop is a round trip to the host, so there
    `_kth_largest_by_blocks` it is.
    """
    if not (sharding_lib.platform() == "cpu" if TOP_K_BISECTION is None else TOP_K_BISECTION):
        return _kth_largest_by_blocks(x, k)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))  # increasing in x
    lo, hi = keys.min(axis=-1), keys.max(axis=-1)  # invariant: count(keys >= lo) >= k

    def halve(bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2  # the upper middle, without overflow
        enough = jnp.sum(keys >= mid[:, None], axis=-1) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

    lo, _ = jax.lax.while_loop(lambda b: jnp.any(b[0] < b[1]), halve, (lo, hi))
    lo = lo[:, None]
    bits = jnp.where(lo >> 31 == 1, lo & jnp.uint32(0x7FFFFFFF), ~lo)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _kth_largest_by_blocks(x, k: int, block: int = 128):
    """`_kth_largest` by two small sorts instead of one over the row: the k blocks of `block` entries with the
    largest maxima hold every entry above the k-th largest and enough equal to it, so the k-th largest of their
    k * block entries is the row's. On an H200 `lax.top_k` sorted each whole row of V = 152k: the 1.5B model
    decoded 16 rows at 2.74 ms a token with it, 2.18 ms with this (docs/performance.md)."""
    rows, vocab = x.shape
    blocks = -(-vocab // block)
    if blocks <= k:
        return jax.lax.top_k(x, k)[0][:, -1:]
    padded = jnp.pad(x, ((0, 0), (0, blocks * block - vocab)), constant_values=-jnp.inf).reshape(rows, blocks, block)
    _, chosen = jax.lax.top_k(padded.max(axis=-1), k)
    candidates = jnp.take_along_axis(padded, chosen[:, :, None], axis=1).reshape(rows, k * block)
    return jax.lax.top_k(candidates, k)[0][:, -1:]


def _inverse_cdf(key, logits, block: int = 1024):
    """One draw per row from softmax(logits): the first index whose cumulative mass reaches u * total.

    Needs one uniform per row instead of one Gumbel per vocabulary entry (`jax.random.categorical`, as
    costly as the LM head at V = 152k on CPU), and a two-level search (block sums, then one block) instead
    of a cumulative sum over the whole vocabulary. u is in (0, 1], so zero-probability (filtered) tokens
    are never chosen.
    """
    rows, vocab = logits.shape
    blocks = -(-vocab // block)
    probs = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = jnp.pad(probs, ((0, 0), (0, blocks * block - vocab))).reshape(rows, blocks, block)
    block_mass = probs.sum(axis=-1)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = (1.0 - jax.random.uniform(key, (rows, 1))) * block_cdf[:, -1:]
    chosen = jnp.minimum(jnp.sum(block_cdf < u, axis=-1), blocks - 1)[:, None]
    start = jnp.take_along_axis(block_cdf - block_mass, chosen, axis=-1)
    inner = jnp.take_along_axis(probs, chosen[:, :, None], axis=1)[:, 0]
    last_nonzero = block - 1 - jnp.argmax((inner > 0)[:, ::-1], axis=-1)  # rounding can leave u past the end
    index = jnp.minimum(jnp.sum(start + jnp.cumsum(inner, axis=-1) < u, axis=-1), last_nonzero)
    return chosen[:, 0] * block + index


DecodeLayout = tuple[list[nnx.State], jax.Array | None]  # per-layer weights, and the [V, E] head (None: the embedding)


@struct.dataclass
class Prefilled:
    """The prefill's output for rows = prompts x samples: per-layer cache (k, v) [rows, kv_heads, prompt +
    max_new_tokens, head_dim]; logits [rows, V] at each prompt's last token; key_mask [rows, slots]; the position
    the first new token takes [rows]."""

    cache: DecodeCache
    logits: jax.Array
    key_mask: jax.Array
    next_position: jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One static sampling configuration and its three compiled programs, driven in order by `sample` (and
    lowered alone by the plan): `layout` (the weights in the decode layout, once per call), `prefill` (each
    prompt once, its cache repeated for its samples) and `decode` (the loop). The fields are compile-time
    constants: another value compiles other programs. The temperature and the top-p threshold are runtime
    arguments (changing them compiles nothing); `top_p` says only whether the nucleus filter runs at all.
    """

    graphdef: nnx.GraphDef
    num_samples: int
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    greedy: bool = False
    top_k: int = 0
    top_p: bool = False

    def layout(self, params) -> DecodeLayout:
        return _layout(self, params)

    def prefill(self, params, layout: DecodeLayout, prompt_ids, prompt_mask) -> Prefilled:
        return _prefill(self, params, layout, prompt_ids, prompt_mask)

    def decode(self, params, layout: DecodeLayout, prefilled: Prefilled, key_data, temperature, top_p):
        """(tokens, completion mask, lengths, logprobs, cache); the prefilled cache is donated and returned."""
        return _decode(self, params, layout, prefilled.cache, prefilled.replace(cache=None), key_data, temperature,
                       top_p)


@functools.partial(jax.jit, static_argnums=0)
def _layout(sampler: Sampler, params) -> DecodeLayout:
    """Per-layer weights and the [V, E] head in the compute dtype (`Decoder.unstacked_layers`,
    `Decoder.decode_head`), built once per `sample` call."""
    model = nnx.merge(sampler.graphdef, params)
    return model.unstacked_layers(), model.decode_head()


@functools.partial(jax.jit, static_argnums=0)
def _prefill(sampler: Sampler, params, layout: DecodeLayout, prompt_ids, prompt_mask) -> Prefilled:
    """Runs each prompt once, then repeats its cache and last-position logits for its N samples."""
    model = nnx.merge(sampler.graphdef, params)
    batch, length = prompt_ids.shape
    cache_len = length + sampler.max_new_tokens
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
    key_mask = jnp.pad(prompt_mask, ((0, 0), (0, cache_len - length)), constant_values=1)
    cache = init_cache(model.cfg, batch, cache_len, model.compute_dtype)
    layers, head = layout
    hidden, cache = model.decode(prompt_ids, positions, key_mask, cache, 0, layers)
    logits = model.decode_logits(hidden[:, -1], head)
    repeat = lambda x: jnp.repeat(x, sampler.num_samples, axis=0)  # noqa: E731
    cache, logits, key_mask = jax.tree.map(lambda x: sharding_lib.constrain_rows(x, model.rules),
                                           (jax.tree.map(repeat, cache), repeat(logits), repeat(key_mask)))
    return Prefilled(cache, logits, key_mask, repeat(positions[:, -1] + 1))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _decode(sampler: Sampler, params, layout: DecodeLayout, cache, prefilled: Prefilled, key_data, temperature, top_p):
    """The decode loop: sample, append, feed back, until every row hit EOS or the budget is spent.

    The cache (`prefilled`'s, passed apart) is returned so that its donated input buffer is aliased to it and
    updated in place.
    """
    model = nnx.merge(sampler.graphdef, params)
    layers, head = layout
    max_new_tokens = sampler.max_new_tokens
    rows = prefilled.logits.shape[0]
    prompt_len = prefilled.key_mask.shape[1] - max_new_tokens
    eos = jnp.asarray(sampler.eos_ids, jnp.int32)
    key = jax.random.wrap_key_data(key_data)
    top_p = top_p if sampler.top_p else None

    def emit(carry: DecodeState, logits, step) -> DecodeState:
        done = carry.done
        token, lp = _pick(logits, jax.random.fold_in(key, step), temperature, sampler.greedy, sampler.top_k, top_p)
        token = jnp.where(done, sampler.pad_id, token).astype(jnp.int32)
        lp = jnp.where(done, 0.0, lp)
        tokens = jax.lax.dynamic_update_slice(carry.tokens, token[:, None], (0, step))
        logprobs = jax.lax.dynamic_update_slice(carry.logprobs, lp[:, None], (0, step))
        return carry.replace(tokens=tokens, logprobs=logprobs, done=done | jnp.isin(token, eos),
                             lengths=carry.lengths + (~done).astype(jnp.int32))

    def body(carry: DecodeState) -> DecodeState:
        step = carry.step
        last = jax.lax.dynamic_slice(carry.tokens, (0, step - 1), (rows, 1))
        positions = (prefilled.next_position + step - 1)[:, None]
        hidden, cache = model.decode(last, positions, prefilled.key_mask, carry.cache, prompt_len + step - 1, layers)
        cache = jax.tree.map(lambda x: sharding_lib.constrain_rows(x, model.rules), cache)
        carry = emit(carry.replace(cache=cache), model.decode_logits(hidden[:, 0], head), step)
        return carry.replace(step=step + 1)

    def cond(carry: DecodeState):
        return (carry.step < max_new_tokens) & ~jnp.all(carry.done)

    carry = DecodeState(step=jnp.int32(1), cache=cache, done=jnp.zeros(rows, bool),
                        lengths=jnp.zeros(rows, jnp.int32),
                        tokens=jnp.full((rows, max_new_tokens), sampler.pad_id, jnp.int32),
                        logprobs=jnp.zeros((rows, max_new_tokens), jnp.float32))
    carry = emit(carry, prefilled.logits, 0)
    carry = jax.lax.while_loop(cond, body, carry)
    mask = (jnp.arange(max_new_tokens)[None, :] < carry.lengths[:, None]).astype(jnp.int32)
    return carry.tokens, mask, carry.lengths, carry.logprobs, carry.cache


def _check(model: Decoder, prompts, num_samples, max_new_tokens, temperature, top_k, top_p, eos_ids) -> None:
    """Rejects bad requests before anything is compiled."""
    if not prompts:
        raise ValueError("sample: the prompt list is empty")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"sample: prompt {i} is empty")
        if min(p) < 0 or max(p) >= model.cfg.vocab_size:
            raise ValueError(f"sample: prompt {i} has token ids outside [0, {model.cfg.vocab_size})")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(f"sample: prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"{model.cfg.max_position_embeddings} positions")
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"sample: num_samples ({num_samples}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample: need temperature >= 0, top_k >= 0 and 0 < top_p <= 1 "
                         f"(got {temperature}, {top_k}, {top_p})")
    if not eos_ids:
        raise ValueError("sample: eos_ids is empty; pass the model's end-of-sequence token ids")


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads prompts into a power-of-two bucket of rows and length; returns (ids, mask)."""
    rows = bucket_rows(len(prompts))
    length = bucket_length(max(len(p) for p in prompts))
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    mask[len(prompts):, -1] = 1  # bucket filler rows: a single pad token, results discarded
    return ids, mask


def sample(model: Decoder, prompts: Sequence[Sequence[int]], *, num_samples: int, max_new_tokens: int,
           temperature: float, top_k: int = 0, top_p: float = 1.0, eos_ids: Sequence[int], seed: int | jax.Array,
           pad_id: int | None = None) -> Samples:
    """Draws `num_samples` completions per prompt. temperature == 0 means greedy (argmax).

    `seed` is an int or a `jax.random` key. top_k = 0 and top_p = 1 disable those filters.
    """
    _check(model, prompts, num_samples, max_new_tokens, temperature, top_k, top_p, eos_ids)
    pad_id = int(eos_ids[0]) if pad_id is None else pad_id
    prompt_ids, prompt_mask = pad_prompts(prompts, pad_id)
    graphdef, params = nnx.split(model)
    mesh = mesh_of(params)
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    key_data = np.asarray(jax.random.key_data(key))
    put = (lambda x: sharding_lib.host_to_global(x, sharding_lib.replicated(mesh))) if mesh else jnp.asarray
    sampler = Sampler(graphdef, num_samples=num_samples, max_new_tokens=max_new_tokens,
                      eos_ids=tuple(int(e) for e in eos_ids), pad_id=pad_id, greedy=temperature == 0, top_k=top_k,
                      top_p=top_p < 1.0)
    with sharding_lib.use_mesh(mesh):  # rows pinned to the batch axes inside the programs
        layout = sampler.layout(params)
        prefilled = sampler.prefill(params, layout, put(prompt_ids), put(prompt_mask))
        tokens, mask, lengths, logprobs, _ = sampler.decode(params, layout, prefilled, put(key_data),
                                                            put(np.float32(max(temperature, 1e-6))),
                                                            put(np.float32(top_p)))
    rows = len(prompts) * num_samples
    if rows < tokens.shape[0]:
        tokens, mask, lengths, logprobs = (x[:rows] for x in (tokens, mask, lengths, logprobs))
    repeat = lambda x: np.repeat(x, num_samples, axis=0)[:rows]  # noqa: E731
    return Samples(tokens, mask, lengths, logprobs, repeat(prompt_ids), repeat(prompt_mask))
