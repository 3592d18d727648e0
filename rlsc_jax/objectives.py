"""Label-free objectives by name: each one decorated function of per-sequence quantities (Tunix style).

Every objective has the signature `fn(seqs, num_samples, **hparams) -> (loss, metrics)`: `seqs` is a
`SequenceStats` of the step's Q * N completions, the N samples of question q in rows q*N .. q*N+N-1;
hparams are keyword-only, named as the keys of the config section that sets them (`objective_args.alpha`,
`objective_args.advantage_eps`), and an unknown one is a TypeError. A loss may differentiate through `logp`,
`entropy` and `certainty`; the trainer back-propagates whatever it uses (exactly, also under gradient
accumulation). Formulas and sources: docs/objectives.md.

The RLSC weights p_old_i = exp(log p_i) (gradient stopped) are computed in fp32, where they underflow
for long answers: below log p ≈ −87.3 exp leaves the normal range, and XLA flushes the denormal to
exactly 0 (measured on CPU; TPUs have no denormals); with IEEE denormals (numpy, PyTorch) it reaches 0
only below ≈ −104. In that regime L2 degenerates to α·NLL on the model's own samples and L1 to a zero
gradient. Every objective reports the fraction of weights that are exactly 0 ("p_old_underflow_frac")
and the log p distribution, so a run shows which regime it is in.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
OBJECTIVES: dict[str, Objective] = {}
# `objective_args` key (= keyword of the objectives that take it) -> (check, what a valid value is)
HPARAMS: dict[str, tuple[Callable[[float], bool], str]] = {
    "alpha": (lambda v: v >= 0, ">= 0"),
    "advantage_eps": (lambda v: v > 0, "> 0"),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SequenceStats:
    """Per-completion quantities at the sampling temperature τ, all [Q * N], from one fused pass
    (`rlsc_jax.logprobs.sequence_logprobs`) plus the host's answer votes.

    logp: Σ_t log p(y_t | y_<t), the sequence log-likelihood (no length normalisation).
    entropy: Σ_t H(p(· | y_<t)), summed token entropy.
    certainty: Σ_t KL(U ‖ p(· | y_<t)), summed self-certainty (U uniform over the vocabulary).
    num_tokens: completion tokens scored (the EOS included), fp32.
    answer_ids: int32, the completion's final-answer class among its question's N samples, numbered by
      votes (0 = the majority answer, `rlsc_jax.grading.answer_classes`); −1 for no answer.
    """

    logp: jax.Array
    entropy: jax.Array
    certainty: jax.Array
    num_tokens: jax.Array
    answer_ids: jax.Array


DIFFERENTIABLE = ("logp", "entropy", "certainty")  # the fields a loss may take gradients through


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


def _with_hparams(fn: Objective, hparams: dict[str, float]) -> Callable:
    """`fn` with the hyper-parameters its signature accepts bound."""
    accepted = inspect.signature(fn).parameters
    return functools.partial(fn, **{k: v for k, v in hparams.items() if k in accepted})


def bind(name: str, **hparams: float) -> Callable[[SequenceStats, int], tuple[jax.Array, dict[str, jax.Array]]]:
    """The objective `name` with the hyper-parameters it accepts bound, after checking every given value
    (a one-line ValueError naming the key for a bad one): `fn(seqs, num_samples)`."""
    for key, value in hparams.items():
        ok, valid = HPARAMS[key]
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{key}={value}: must be finite and {valid}")
    return _with_hparams(get_objective(name), hparams)


def bind_terms(name: str, **hparams: float) -> dict[str, Callable]:
    """The named summands of objective `name` (`TERMS`; none for most), each bound like `bind`: their losses,
    and so their gradients, add up to the objective's."""
    return {term: _with_hparams(fn, hparams) for term, fn in TERMS.get(name, {}).items()}


def bind_checked(name: str, num_samples: int, rows: int, **hparams: float) -> Callable:
    """`bind`, then the objective traced once on abstract inputs of `rows` samples in groups of `num_samples`,
    so that a bad name, value or group size is a one-line ValueError before anything is loaded or compiled."""
    fn = bind(name, **hparams)
    floats, ids = jax.ShapeDtypeStruct((rows,), jnp.float32), jax.ShapeDtypeStruct((rows,), jnp.int32)
    jax.eval_shape(lambda seqs: fn(seqs, num_samples), SequenceStats(floats, floats, floats, floats, ids))
    return fn


def _by_question(x: jax.Array, num_samples: int) -> jax.Array:
    """[Q * N] -> [Q, N], checking that the rows split evenly into questions."""
    if x.ndim != 1 or x.shape[0] % num_samples:
        raise ValueError(f"per-sequence values of shape {x.shape} do not split into groups of {num_samples} samples")
    return x.reshape(-1, num_samples)


def _logp(seqs: SequenceStats, num_samples: int) -> jax.Array:
    """log p as [Q, N] fp32."""
    return _by_question(seqs.logp.astype(jnp.float32), num_samples)


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


def _group_advantage(reward: jax.Array, eps: float) -> jax.Array:
    """(r − mean) / (std + eps) within each question's N rewards [Q, N], std with Bessel's correction (as
    torch.std in GRPO implementations); a question whose rewards are all equal gets advantage 0."""
    if reward.shape[1] < 2:
        raise ValueError(f"a group-normalised advantage needs sampling.num_samples >= 2 (got {reward.shape[1]})")
    mean = reward.mean(axis=1, keepdims=True)
    return (reward - mean) / (reward.std(axis=1, ddof=1, keepdims=True) + eps)


def _policy_gradient(reward: jax.Array, logp: jax.Array, eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−Σ_i A_i log p_i / N per question, mean over questions, A the group-normalised (detached) reward."""
    reward = jax.lax.stop_gradient(reward)
    advantage = _group_advantage(reward, eps)
    loss = -jnp.mean(jnp.sum(advantage * logp, axis=1)) / logp.shape[1]
    flat = jnp.all(reward == reward[:, :1], axis=1)
    return loss, dict(_metrics(logp), reward_mean=reward.mean(), flat_group_frac=flat.mean())


@register("rlsc_l1")
def rlsc_l1(seqs: SequenceStats, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RLSC L1 = −Σ_i p_old_i · log p_i over a question's N samples, mean over questions (Li et al. 2025).

    Zero gradient for every sample whose p_old underflowed (log p below ≈ −87 under XLA in fp32).
    """
    logp = _logp(seqs, num_samples)
    loss = -jnp.mean(jnp.sum(_p_old(logp) * logp, axis=1))
    return loss, _metrics(logp)


@register("rlsc_l2")
def rlsc_l2(seqs: SequenceStats, num_samples: int, alpha: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RLSC L2 = −Σ_i (p_old_i + α) · log p_i over a question's N samples, mean over questions (paper: α = 0.1).

    When every p_old underflows this is α · NLL of the model's own samples (gradient −α/Q per sequence).
    """
    logp = _logp(seqs, num_samples)
    loss = -jnp.mean(jnp.sum((_p_old(logp) + alpha) * logp, axis=1))
    return loss, _metrics(logp)


def rlsc_l2_alpha_term(seqs: SequenceStats, num_samples: int,
                       alpha: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L2's α summand, −α Σ_i log p_i per question, mean over questions: α × the NLL of the model's own samples,
    whose expected gradient is 0 when the samples come from the scored distribution (docs/objectives.md)."""
    logp = _logp(seqs, num_samples)
    return -alpha * jnp.mean(jnp.sum(logp, axis=1)), {}


# objective -> its summands, each an objective: L2 = the p_old-weighted term (L1) + the α term
TERMS: dict[str, dict[str, Objective]] = {"rlsc_l2": {"p_old": rlsc_l1, "alpha": rlsc_l2_alpha_term}}


@register("rlsc_group")
def rlsc_group(seqs: SequenceStats, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−Σ_i w_i · log p_i, w = softmax over the question's N samples of the detached log p (an ablation of L1).

    w_i = p_old_i / Σ_j p_old_j computed from log p, so it never underflows: L1's weighting, kept alive
    for long answers (the most likely sample always weighs at least 1/N).
    """
    logp = _logp(seqs, num_samples)
    weight = jax.nn.softmax(jax.lax.stop_gradient(logp), axis=1)
    return -jnp.mean(jnp.sum(weight * logp, axis=1)), _metrics(logp)


@register("entropy_min")
def entropy_min(seqs: SequenceStats, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """EM-FT: the mean token entropy Σ_i Σ_t H(p(·|y_i,<t)) / Σ_i |y_i| over all the step's sampled tokens.

    Agarwal et al. 2025, "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning": the
    samples are fixed and the gradient flows through the entropy itself, not through log p.
    """
    logp = _logp(seqs, num_samples)
    loss = jnp.sum(seqs.entropy) / jnp.maximum(jnp.sum(seqs.num_tokens), 1.0)
    return loss, _metrics(logp)


@register("ttrl")
def ttrl(seqs: SequenceStats, num_samples: int, advantage_eps: float = 1e-6) -> tuple[jax.Array, dict[str, jax.Array]]:
    """TTRL: r_i = 1 if sample i's final answer is its question's majority answer, else 0 (no answer: 0);
    A = (r − mean) / (std + eps) within the question; loss −Σ_i A_i log p_i / N, mean over questions.

    Zuo et al. 2025, "TTRL: Test-Time Reinforcement Learning", as one on-policy step: no clipping, no KL,
    sequence-level log p. The majority comes from the host's vote (`answer_ids` 0).
    """
    logp = _logp(seqs, num_samples)
    reward = (_by_question(seqs.answer_ids, num_samples) == 0).astype(jnp.float32)
    return _policy_gradient(reward, logp, advantage_eps)


@register("self_certainty")
def self_certainty(seqs: SequenceStats, num_samples: int,
                   advantage_eps: float = 1e-6) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Intuitor (RLIF): r_i = the sample's mean over its tokens of KL(U ‖ p(·|y_<t)) (detached); A, loss as TTRL.

    Zhao et al. 2025, "Learning to Reason without External Rewards": self-certainty as the reward,
    group-normalised, one on-policy step with no clipping or KL.
    """
    logp = _logp(seqs, num_samples)
    reward = _by_question(seqs.certainty / jnp.maximum(seqs.num_tokens, 1.0), num_samples)
    return _policy_gradient(reward, logp, advantage_eps)


@register("nll")
def nll(seqs: SequenceStats, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−mean of log p over sequences: plain likelihood of the given sequences (baseline, or supervised)."""
    logp = _logp(seqs, num_samples)
    return -jnp.mean(logp), _metrics(logp)
