"""Label-free objectives by name: each one decorated function of per-sequence log-likelihoods (Tunix style).

Every objective has the signature `fn(seq_logp, num_samples, **hparams) -> (loss, metrics)`:
seq_logp is fp32 [Q * N] (from `rlsc_jax.logprobs.sequence_logprobs`) with the N samples of question q
in rows q*N .. q*N+N-1; hparams are keyword-only and an unknown one is a TypeError.

The RLSC weights p_old_i = exp(log p_i) (gradient stopped) are computed in fp32, where they underflow
for long answers: below log p ≈ −87.3 exp leaves the normal range, and XLA flushes the denormal to
exactly 0 (measured on CPU; TPUs have no denormals); with IEEE denormals (numpy, PyTorch) it reaches 0
only below ≈ −104. In that regime L2 degenerates to α·NLL on the model's own samples and L1 to a zero
gradient. Every objective reports the fraction of
weights that are exactly 0 ("p_old_underflow_frac") and the log p distribution, so a run shows which
regime it is in.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
OBJECTIVES: dict[str, Objective] = {}


def register(name: str) -> Callable[[Objective], Objective]:
    """Decorator adding an objective to `OBJECTIVES` under `name`."""
    def add(fn: Objective) -> Objective:
        OBJECTIVES[name] = fn
        return fn
    return add


def get_objective(name: str) -> Objective:
    """The objective registered as `name`; a one-line ValueError listing the known names otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def _by_question(seq_logp: jax.Array, num_samples: int) -> jax.Array:
    """[Q * N] -> [Q, N] fp32, checking that the rows split evenly into questions."""
    if seq_logp.ndim != 1 or seq_logp.shape[0] % num_samples:
        raise ValueError(f"seq_logp of shape {seq_logp.shape} does not split into groups of {num_samples} samples")
    return seq_logp.astype(jnp.float32).reshape(-1, num_samples)


def _p_old(logp: jax.Array) -> jax.Array:
    """exp(log p) in fp32 with the gradient stopped: the model's own (detached) sequence probability."""
    return jnp.exp(jax.lax.stop_gradient(logp))


def _metrics(logp: jax.Array) -> dict[str, jax.Array]:
    """log p distribution and p_old statistics, including the fraction that underflowed to exactly 0."""
    logp = jax.lax.stop_gradient(logp)
    p_old = jnp.exp(logp)
    return {
        "seq_logp_mean": logp.mean(),
        "seq_logp_min": logp.min(),
        "p_old_underflow_frac": (p_old == 0.0).mean(),
        "p_old_mean": p_old.mean(),
        "p_old_max": p_old.max(),
    }


@register("rlsc_l1")
def rlsc_l1(seq_logp: jax.Array, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RLSC L1 = −Σ_i p_old_i · log p_i over a question's N samples, mean over questions.

    Zero gradient for every sample whose p_old underflowed (log p below ≈ −87 under XLA in fp32).
    """
    logp = _by_question(seq_logp, num_samples)
    loss = -jnp.mean(jnp.sum(_p_old(logp) * logp, axis=1))
    return loss, _metrics(logp)


@register("rlsc_l2")
def rlsc_l2(seq_logp: jax.Array, num_samples: int, alpha: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RLSC L2 = −Σ_i (p_old_i + α) · log p_i over a question's N samples, mean over questions (paper: α = 0.1).

    When every p_old underflows this is α · NLL of the model's own samples (gradient −α/Q per sequence).
    """
    logp = _by_question(seq_logp, num_samples)
    loss = -jnp.mean(jnp.sum((_p_old(logp) + alpha) * logp, axis=1))
    return loss, _metrics(logp)


@register("nll")
def nll(seq_logp: jax.Array, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−mean of log p over sequences: plain likelihood of the given sequences (baseline, or supervised)."""
    logp = _by_question(seq_logp, num_samples)
    return -jnp.mean(logp), _metrics(logp)
