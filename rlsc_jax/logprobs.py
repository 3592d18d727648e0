"""Masked per-token and per-sequence log-likelihood from final hidden states, never building [B, T, V] logits.

`token_logprobs` scores targets under softmax(h·W / temperature) over chunks of tokens with a custom
VJP, and from the same logits each token's entropy H(p) and self-certainty KL(U ‖ p) (U uniform over
the V logits): the forward keeps only each token's log-sum-exp and entropy, the backward recomputes
each chunk's logits and accumulates dH and dW chunk by chunk, so peak memory is O(chunk_size · V) in
both passes. All three outputs are differentiable. The LM
head's matmuls run in a compute dtype (bf16 on accelerators) with fp32 accumulation, the softmax is
fp32, and dW is accumulated in fp32 and returned in W's (master) dtype, so bf16 compute loses nothing
in the head's update.

`sequence_logprobs` runs the decoder once over prompt + completion and sums completion-token
log-probs per sequence, with no length normalisation, and the per-sequence sums of token entropy and
self-certainty. It serves the label-free objectives (temperature τ; the sum is log p_i of docs/method.md,
step 2) and supervised NLL (temperature 1, loss = -sum / num_tokens).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from rlsc_jax.config import TrainConfig
from rlsc_jax.models import Decoder
from rlsc_jax.sharding import Rules, axis_rules, constrain_logical, constrain_rows, gather_fsdp

# Tokens per chunk: the config's `logprob_chunk` default (the trainer passes it x the batch devices).
DEFAULT_CHUNK_SIZE = TrainConfig.logprob_chunk
HEAD_AXES = ("embed", "vocab")  # the LM head's logical axes (the tied embedding, transposed, has the same)


def _to_chunks(x: jax.Array, num_chunks: int, chunk_size: int) -> jax.Array:
    """[N, ...] -> [num_chunks, chunk_size, ...], zero-padded; chunk c holds tokens c, c + num_chunks, ...

    Strided rather than contiguous so that, with tokens sharded over batch devices, every chunk is
    spread over all of them and each scan step keeps every device busy.
    """
    x = jnp.pad(x, [(0, num_chunks * chunk_size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return jnp.swapaxes(x.reshape(chunk_size, num_chunks, *x.shape[1:]), 0, 1)


def _from_chunks(x: jax.Array, n: int) -> jax.Array:
    """Inverse of `_to_chunks`: [num_chunks, chunk_size, ...] -> [n, ...]."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(-1, *x.shape[2:])[:n]


def _chunk_logits(h: jax.Array, w: jax.Array, inv_temp: jax.Array) -> jax.Array:
    """Tempered fp32 logits [c, V] of one chunk of hidden states [c, E] (w already in the compute dtype)."""
    return jnp.einsum("ce,ev->cv", h.astype(w.dtype), w, preferred_element_type=jnp.float32) * inv_temp


def _token_stats(z: jax.Array, targets: jax.Array):
    """(log p(target), entropy, KL(U ‖ p), log-sum-exp) per row of tempered fp32 logits z [c, V].

    H = −Σ_v p_v log p_v and KL(U ‖ p) = Σ_v (1/V) log((1/V) / p_v) = −mean_v log p_v − log V, from
    log p = z − lse (not lse − Σ p z, which loses ~4e-6 nats to cancellation at logits near 14).
    """
    lse = jax.nn.logsumexp(z, axis=-1)
    logp = z - lse[:, None]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    certainty = -jnp.mean(logp, axis=-1) - jnp.log(jnp.float32(z.shape[-1]))
    return jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0], entropy, certainty, lse


def _scan_forward(h: jax.Array, w: jax.Array, targets: jax.Array, inv_temp: jax.Array):
    """`_token_stats` of every chunked token, one chunk of logits alive at a time."""
    def step(carry, xs):
        hc, tc = xs
        return carry, _token_stats(_chunk_logits(hc, w, inv_temp), tc)

    return jax.lax.scan(step, None, (h, targets))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, inv_temp: jax.Array, compute_dtype,
                      rules: Rules):
    """(log p, entropy, KL(U ‖ p)) of chunked tokens [num_chunks, chunk_size]; differentiable in h and w."""
    return _scan_forward(h, w.astype(compute_dtype), targets, inv_temp)[:3]


def _chunked_fwd(h, w, targets, inv_temp, compute_dtype, rules):
    """Forward pass keeping hidden states, targets, log-sum-exp and entropy (not the logits) for the backward.

    Its arguments arrive as `CustomVJPPrimal`s (symbolic zeros are on; see `_chunked_bwd`).
    """
    h, w, targets, inv_temp = (x.value for x in (h, w, targets, inv_temp))
    logp, entropy, certainty, lse = _scan_forward(h, w.astype(compute_dtype), targets, inv_temp)
    return (logp, entropy, certainty), (h, w, targets, inv_temp, lse, entropy)


def _chunked_bwd(compute_dtype, rules: Rules, res: tuple, cotangents: tuple):
    """Recomputes each chunk's logits and back-propagates the three outputs through them, in fp32:

    d log p_y / dz = onehot_y − p,  dH / dz = −p ⊙ (log p + H),  dKL(U ‖ p) / dz = p − 1/V,

    each times its cotangent, then /τ. An output the loss does not differentiate (a symbolic-zero
    cotangent, e.g. the entropy of an RLSC step) costs nothing here. dz enters the two matmuls in the
    compute dtype with fp32 accumulation; dH comes back in h's dtype and dW, accumulated in fp32, in w's.
    """
    h, w, targets, inv_temp, lse, entropy = res
    wc = w.astype(compute_dtype)
    vocab = w.shape[1]
    used = {name: c for name, c in zip(("logp", "entropy", "certainty"), cotangents) if not isinstance(c, SymbolicZero)}

    def step(dw, xs):
        hc, tc, lc, ec, g = xs
        z = _chunk_logits(hc, wc, inv_temp)
        logp = z - lc[:, None]
        p = jnp.exp(logp)
        dz = jnp.zeros_like(z)
        if "logp" in used:
            dz += (jax.nn.one_hot(tc, vocab, dtype=jnp.float32) - p) * g["logp"][:, None]
        if "entropy" in used:
            dz -= p * (logp + ec[:, None]) * g["entropy"][:, None]
        if "certainty" in used:
            dz += (p - 1.0 / vocab) * g["certainty"][:, None]
        dz = (dz * inv_temp).astype(wc.dtype)
        dh = jnp.einsum("cv,ev->ce", dz, wc, preferred_element_type=jnp.float32)
        # dW stays sharded like W (FSDP): each chunk's partial sums are reduce-scattered, not all-reduced
        dw = constrain_logical(dw + jnp.einsum("ce,cv->ev", hc.astype(wc.dtype), dz, preferred_element_type=jnp.float32),
                               HEAD_AXES, rules)
        return dw, dh.astype(hc.dtype)

    dw, dh = jax.lax.scan(step, constrain_logical(jnp.zeros(w.shape, jnp.float32), HEAD_AXES, rules),
                          (h, targets, lse, entropy, used))
    return dh, dw.astype(w.dtype), None, None


_chunked_logprobs.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


def token_logprobs(hidden: jax.Array, head_weight: jax.Array, targets: jax.Array, temperature: float = 1.0,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, compute_dtype=None,
                   rules: Rules | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log p(targets), entropy H(p) and self-certainty KL(U ‖ p) of p = softmax(hidden·W / temperature), fp32 [B, T].

    The matmuls run in `compute_dtype` (default: head_weight's dtype) with fp32 accumulation; gradients
    of all three come back in the dtypes of hidden [B, T, E] and head_weight [E, V]. The B*T tokens are
    processed `chunk_size` at a time (the last chunk zero-padded) in forward and backward. U is uniform
    over all V columns of the head (a padded vocabulary included, as in the model's logits). `rules` (default:
    `sharding.DEFAULT_RULES`) shard the tokens and the head under an ambient mesh: pass the model's.
    """
    rules = axis_rules(rules)
    lead, e = hidden.shape[:-1], hidden.shape[-1]
    n = targets.size
    chunk_size = max(1, min(chunk_size, n))
    num_chunks = -(-n // chunk_size)
    h = constrain_rows(_to_chunks(hidden.reshape(n, e), num_chunks, chunk_size), rules, axis=1)
    t = _to_chunks(targets.reshape(n).astype(jnp.int32), num_chunks, chunk_size)
    head_weight = gather_fsdp(head_weight, HEAD_AXES, rules)
    inv_temp = jnp.asarray(1.0 / temperature, jnp.float32)
    compute_dtype = jnp.dtype(head_weight.dtype if compute_dtype is None else compute_dtype)
    outputs = _chunked_logprobs(h, head_weight, t, inv_temp, compute_dtype, rules)
    return tuple(_from_chunks(x, n).reshape(lead) for x in outputs)


def sequence_logprobs(model: Decoder, input_ids: jax.Array, attention_mask: jax.Array, loss_mask: jax.Array,
                      temperature: float, *, remat: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      fused_attention: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-sequence Σ_t loss_mask[t] · log p(input_ids[t] | input_ids[:t]) at `temperature`, fp32 [B].

    input_ids [B, T] is the left-padded prompt followed by the completion; attention_mask marks real
    tokens; loss_mask marks the completion tokens to score (the EOS included, the pad after it not),
    in input_ids coordinates: the token being predicted, scored from the hidden state one position
    earlier (loss_mask[:, 0] is ignored; nothing predicts the first token). No length normalisation.
    aux, all from the same pass: "entropy" and "certainty" [B], the per-sequence sums over the masked
    tokens of H(p) and KL(U ‖ p) (differentiable), "lengths" [B] (masked tokens per sequence, fp32) and
    "num_tokens" (their total). Supervised NLL is -seq_logp.sum() / num_tokens at temperature 1.
    `remat` and `fused_attention` are `Decoder.forward`'s.
    """
    hidden = model.forward(input_ids, attention_mask=attention_mask, remat=remat, fused_attention=fused_attention)
    logp, entropy, certainty = token_logprobs(hidden[:, :-1], model.head_weight(), input_ids[:, 1:], temperature,
                                              chunk_size, model.compute_dtype, model.rules)
    mask = loss_mask[:, 1:].astype(bool)
    token_logp = jnp.pad(jnp.where(mask, logp, 0.0), ((0, 0), (1, 0)))  # per input position; nothing predicts the first
    aux = {"entropy": jnp.where(mask, entropy, 0.0).sum(axis=-1),
           "certainty": jnp.where(mask, certainty, 0.0).sum(axis=-1),
           "lengths": mask.sum(axis=-1).astype(jnp.float32), "num_tokens": mask.sum()}
    return token_logp.sum(axis=-1), aux
