"""Label-free objectives by name, from composable parts: rewards, advantage estimators and policy losses each in
their own registry (as tunix's function registry), `compose`d into the registered objectives.

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
TERMS: dict[str, dict[str, Objective]] = {}  # objective -> its summands by name (`register(..., terms=)`)
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


def register(name: str, objective: Objective | None = None, *, terms: dict[str, Objective] | None = None):
    """Adds `objective` to `OBJECTIVES` under `name`, with its named summands `terms` (their losses add up to
    its loss, e.g. for the gradient-term diagnostic); without `objective`, a decorator that does so."""
    def add(fn: Objective) -> Objective:
        OBJECTIVES[name] = fn
        if terms:
            TERMS[name] = dict(terms)
        return fn
    return add if objective is None else add(objective)


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


# ---- Parts (as tunix's function registry: rewards, advantage estimators, policy losses), composed by `compose`.
# reward(seqs, logp) -> [Q, N], per sample (gradient stopped by `compose`); logp is [Q, N].
# advantage(reward, **hparams) -> ([Q, N] per-sample weights, metrics); its keyword-only hparams are the objective's.
# policy loss(advantage, logp) -> scalar loss.
REWARDS: dict[str, Callable] = {}
ADVANTAGES: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}


def _adder(table: dict[str, Callable]) -> Callable[[str], Callable]:
    def named(name: str) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            table[name] = fn
            return fn
        return add
    return named


reward, advantage, policy_loss = _adder(REWARDS), _adder(ADVANTAGES), _adder(POLICY_LOSSES)


@reward("self_confidence")
def self_confidence(seqs: SequenceStats, logp: jax.Array) -> jax.Array:
    """p_old = exp(log p): the model's own probability of the sample (RLSC)."""
    return _p_old(logp)


@reward("group_confidence")
def group_confidence(seqs: SequenceStats, logp: jax.Array) -> jax.Array:
    """p_old_i / Σ_j p_old_j within the question, from log p by a softmax, so it never underflows."""
    return jax.nn.softmax(jax.lax.stop_gradient(logp), axis=1)


@reward("majority")
def majority(seqs: SequenceStats, logp: jax.Array) -> jax.Array:
    """1 if the sample's final answer is its question's majority answer (`answer_ids` 0), else 0 (no answer: 0)."""
    return (_by_question(seqs.answer_ids, logp.shape[1]) == 0).astype(jnp.float32)


@reward("self_certainty")
def mean_self_certainty(seqs: SequenceStats, logp: jax.Array) -> jax.Array:
    """The sample's mean over its tokens of KL(U ‖ p(·|y_<t))."""
    return _by_question(seqs.certainty / jnp.maximum(seqs.num_tokens, 1.0), logp.shape[1])


@advantage("identity")
def identity(reward: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reward itself."""
    return reward, {}


@advantage("plus_alpha")
def plus_alpha(reward: jax.Array, *, alpha: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """reward + α (RLSC L2's floor on every sample's weight)."""
    return reward + alpha, {}


@advantage("group_normalized")
def group_normalized(reward: jax.Array, *, advantage_eps: float = 1e-6) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(r − mean) / (std + eps) within each question's N rewards [Q, N], std with Bessel's correction (as
    torch.std in GRPO implementations); a question whose rewards are all equal gets advantage 0."""
    if reward.shape[1] < 2:
        raise ValueError(f"a group-normalised advantage needs sampling.num_samples >= 2 (got {reward.shape[1]})")
    mean = reward.mean(axis=1, keepdims=True)
    flat = jnp.all(reward == reward[:, :1], axis=1)
    advantage = (reward - mean) / (reward.std(axis=1, ddof=1, keepdims=True) + advantage_eps)
    return advantage, {"reward_mean": reward.mean(), "flat_group_frac": flat.mean()}


@policy_loss("weighted_likelihood")
def weighted_likelihood(advantage: jax.Array, logp: jax.Array) -> jax.Array:
    """−Σ_i A_i · log p_i per question, mean over questions (RLSC's form)."""
    return -jnp.mean(jnp.sum(advantage * logp, axis=1))


@policy_loss("policy_gradient")
def policy_gradient(advantage: jax.Array, logp: jax.Array) -> jax.Array:
    """−Σ_i A_i log p_i / N per question, mean over questions: one on-policy REINFORCE step, no clipping or KL."""
    return -jnp.mean(jnp.sum(advantage * logp, axis=1)) / logp.shape[1]


def compose(reward_name: str, advantage_name: str, loss_name: str) -> Objective:
    """The objective `fn(seqs, num_samples, **hparams)`: the reward (detached) of each sample, its advantage
    (taking the hparams, which the objective's signature lists), the policy loss over log p; metrics: the
    log p / p_old statistics and the advantage estimator's."""
    reward_fn, advantage_fn, loss_fn = REWARDS[reward_name], ADVANTAGES[advantage_name], POLICY_LOSSES[loss_name]

    def objective(seqs: SequenceStats, num_samples: int, **hparams: float):
        logp = _logp(seqs, num_samples)
        weights, metrics = advantage_fn(jax.lax.stop_gradient(reward_fn(seqs, logp)), **hparams)
        return loss_fn(weights, logp), {**_metrics(logp), **metrics}

    params = list(inspect.signature(objective).parameters.values())[:2]
    params += [p for p in inspect.signature(advantage_fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    objective.__signature__ = inspect.Signature(params)
    objective.__doc__ = f"reward {reward_name!r}, advantage {advantage_name!r}, policy loss {loss_name!r}"
    return objective


# ---- The objectives (formulas and sources: docs/objectives.md)

# RLSC L1 = −Σ_i p_old_i · log p_i over a question's N samples, mean over questions (Li et al. 2025). Zero gradient
# for every sample whose p_old underflowed (log p below ≈ −87 under XLA in fp32).
rlsc_l1 = register("rlsc_l1", compose("self_confidence", "identity", "weighted_likelihood"))


def rlsc_l2_alpha_term(seqs: SequenceStats, num_samples: int,
                       alpha: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L2's α summand, −α Σ_i log p_i per question, mean over questions: α × the NLL of the model's own samples,
    whose expected gradient is 0 when the samples come from the scored distribution (docs/objectives.md)."""
    logp = _logp(seqs, num_samples)
    return -alpha * jnp.mean(jnp.sum(logp, axis=1)), {}


# RLSC L2 = −Σ_i (p_old_i + α) · log p_i over a question's N samples, mean over questions (paper: α = 0.1); when
# every p_old underflows this is α · NLL of the model's own samples (gradient −α/Q per sequence). Its summands:
# the p_old-weighted term (L1) and the α term.
rlsc_l2 = register("rlsc_l2", compose("self_confidence", "plus_alpha", "weighted_likelihood"),
                   terms={"p_old": rlsc_l1, "alpha": rlsc_l2_alpha_term})

# −Σ_i w_i · log p_i, w = softmax over the question's N samples of the detached log p (an ablation of L1): L1's
# weighting, kept alive for long answers (the most likely sample always weighs at least 1/N).
rlsc_group = register("rlsc_group", compose("group_confidence", "identity", "weighted_likelihood"))

# TTRL (Zuo et al. 2025, "TTRL: Test-Time Reinforcement Learning") as one on-policy step: the majority reward
# (from the host's vote), group-normalised, sequence-level log p, no clipping, no KL.
ttrl = register("ttrl", compose("majority", "group_normalized", "policy_gradient"))

# Intuitor / RLIF (Zhao et al. 2025, "Learning to Reason without External Rewards"): self-certainty as the reward,
# otherwise as TTRL.
self_certainty = register("self_certainty", compose("self_certainty", "group_normalized", "policy_gradient"))


@register("entropy_min")
def entropy_min(seqs: SequenceStats, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """EM-FT: the mean token entropy Σ_i Σ_t H(p(·|y_i,<t)) / Σ_i |y_i| over all the step's sampled tokens.

    Agarwal et al. 2025, "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning": the
    samples are fixed and the gradient flows through the entropy itself, not through log p (no reward).
    """
    logp = _logp(seqs, num_samples)
    loss = jnp.sum(seqs.entropy) / jnp.maximum(jnp.sum(seqs.num_tokens), 1.0)
    return loss, _metrics(logp)


@register("nll")
def nll(seqs: SequenceStats, num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−mean of log p over sequences: plain likelihood of the given sequences (baseline, or supervised)."""
    logp = _logp(seqs, num_samples)
    return -jnp.mean(logp), _metrics(logp)
