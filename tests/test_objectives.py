"""Objective registry; every objective against a PyTorch autograd transcription of its paper's formula
(tests/torch_objectives.py), with answers voted from strings independently of rlsc_jax's grouping."""

import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlsc_jax.grading import answer_classes
from rlsc_jax.objectives import (
    DIFFERENTIABLE,
    OBJECTIVES,
    SequenceStats,
    bind,
    bind_terms,
    get_objective,
)
from tests import torch_objectives

Q, N = 2, 4
# Two questions of four samples; -150 underflows exp in fp32 (p_old = 0 in JAX and PyTorch alike).
LOGP = np.array([-0.3, -1.2, -2.5, -0.05, -4.0, -0.7, -150.0, -3.3], np.float32)
ENTROPY = np.array([0.9, 2.1, 0.4, 3.3, 1.7, 0.2, 5.5, 1.1], np.float32)
CERTAINTY = np.array([4.1, 2.2, 6.0, 0.7, 3.9, 5.2, 1.4, 2.8], np.float32)
LENGTHS = np.array([3, 7, 2, 11, 5, 1, 40, 6], np.float32)
# q0: "7" wins 2 to 1 (one sample without an answer); q1: "2" and "5" tie 2-2, the first seen ("2") wins
ANSWERS = ["7", "3", "7", None, "2", "5", "5", "2"]
RTOL = 1e-6  # fp32 arithmetic on both sides: the largest measured relative difference is below 2e-7


def _seqs(logp=LOGP, answers=ANSWERS) -> SequenceStats:
    ids = [i for q in range(Q) for i in answer_classes(answers[q * N:(q + 1) * N])]
    return SequenceStats(jnp.asarray(logp), jnp.asarray(ENTROPY), jnp.asarray(CERTAINTY), jnp.asarray(LENGTHS),
                         jnp.asarray(ids, jnp.int32))


def _jax(name: str, seqs: SequenceStats, **hparams):
    """(loss, {field: d loss / d field}, metrics) of a registered objective."""
    def fn(diff):
        return get_objective(name)(SequenceStats(**{**vars(seqs), **diff}), N, **hparams)
    (loss, metrics), grads = jax.value_and_grad(fn, has_aux=True)({k: getattr(seqs, k) for k in DIFFERENTIABLE})
    return float(loss), {k: np.asarray(v) for k, v in grads.items()}, metrics


def _majority_reward(answers) -> np.ndarray:
    """1 where a sample's answer is its question's most common one (exact strings; ties: first seen), else 0."""
    reward = []
    for q in range(Q):
        group = answers[q * N:(q + 1) * N]
        top = Counter(a for a in group if a is not None).most_common(1)
        reward += [float(bool(top) and a == top[0][0]) for a in group]
    return np.array(reward, np.float32)


def _torch(name: str, **hparams):
    """Loss and gradients by PyTorch autograd of tests/torch_objectives.py."""
    lp, ent, cert = (torch.tensor(x, requires_grad=True) for x in (LOGP, ENTROPY, CERTAINTY))
    value = torch_objectives.loss(name, lp, ent, cert, torch.tensor(LENGTHS), torch.tensor(_majority_reward(ANSWERS)),
                                  N, **hparams)
    value.backward()
    grads = {k: (x.grad if x.grad is not None else torch.zeros_like(x)).numpy() for k, x in
             zip(DIFFERENTIABLE, (lp, ent, cert))}
    return value.item(), grads


CASES = [("rlsc_l1", {}, {}), ("rlsc_l2", {}, {}), ("rlsc_l2", {"alpha": 0.3}, {"alpha": 0.3}),
         ("rlsc_group", {}, {}), ("entropy_min", {}, {}), ("ttrl", {}, {}),
         ("ttrl", {"advantage_eps": 0.5}, {"eps": 0.5}), ("self_certainty", {}, {}),
         ("self_certainty", {"advantage_eps": 0.5}, {"eps": 0.5}), ("nll", {}, {})]


@pytest.mark.parametrize("name,hparams,ref_kw", CASES)
def test_matches_pytorch(name, hparams, ref_kw):
    loss, grads, _ = _jax(name, _seqs(), **hparams)
    ref_loss, ref_grads = _torch(name, **ref_kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=0)
    for k in DIFFERENTIABLE:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=RTOL, atol=1e-9, err_msg=k)


def test_every_registered_objective_has_a_reference():
    assert {name for name, _, _ in CASES} == set(OBJECTIVES)


@pytest.mark.parametrize("name", ["rlsc_l1", "rlsc_l2", "rlsc_group", "ttrl", "self_certainty", "nll"])
def test_per_question_then_mean_over_questions(name):
    seqs = _seqs()
    loss, _, _ = _jax(name, seqs)
    halves = [SequenceStats(**{k: v[q * N:(q + 1) * N] for k, v in vars(seqs).items()}) for q in range(Q)]
    np.testing.assert_allclose(loss, np.mean([_jax(name, h)[0] for h in halves]), rtol=1e-6)


def test_rewards_are_not_differentiated():
    """TTRL and self-certainty move only log p; entropy minimisation only the entropy."""
    for name, live in (("ttrl", "logp"), ("self_certainty", "logp"), ("entropy_min", "entropy")):
        _, grads, _ = _jax(name, _seqs())
        assert all(np.any(grads[k]) == (k == live) for k in DIFFERENTIABLE), name


def test_unanimous_or_unanswered_questions_give_no_ttrl_gradient():
    for answers in (["4"] * 8, [None] * 8, ["4", "4", "4", "4", None, None, None, None]):
        loss, grads, metrics = _jax("ttrl", _seqs(answers=answers))
        assert loss == 0.0 and not np.any(grads["logp"])
        assert float(metrics["flat_group_frac"]) == 1.0


def test_rlsc_group_weights_survive_underflow():
    """All log p near -2000: L1's weights are all 0, the group-softmax weights still sum to 1 per question."""
    logp = LOGP - 2000.0
    _, l1, _ = _jax("rlsc_l1", _seqs(logp))
    _, group, _ = _jax("rlsc_group", _seqs(logp))
    assert not np.any(l1["logp"])
    np.testing.assert_allclose(-group["logp"].reshape(Q, N).sum(1) * Q, 1.0, rtol=1e-6)


def test_metrics():
    _, _, m = _jax("rlsc_l2", _seqs())
    p = np.exp(LOGP.astype(np.float64))
    np.testing.assert_allclose(float(m["seq_logp_mean"]), LOGP.mean(), rtol=1e-6)
    assert float(m["seq_logp_min"]) == -150.0
    assert float(m["p_old_underflow_frac"]) == 1 / 8
    np.testing.assert_allclose(float(m["p_old_mean"]), p.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(m["p_old_max"]), p.max(), rtol=1e-6)
    _, _, m = _jax("ttrl", _seqs())
    np.testing.assert_allclose(float(m["reward_mean"]), _majority_reward(ANSWERS).mean(), rtol=1e-6)
    assert float(m["flat_group_frac"]) == 0.0


def test_underflow_fraction():
    assert float(_jax("rlsc_l1", _seqs(np.full(Q * N, -200.0, np.float32)))[2]["p_old_underflow_frac"]) == 1.0
    half = np.array([-200.0, -1.0, -200.0, -2.0, -50.0, -200.0, -3.0, -200.0], np.float32)
    assert float(_jax("rlsc_l1", _seqs(half))[2]["p_old_underflow_frac"]) == 0.5


def test_all_underflowed_l1_has_zero_gradient_and_l2_is_alpha_nll():
    seqs = _seqs(np.full(Q * N, -200.0, np.float32))
    assert np.all(_jax("rlsc_l1", seqs)[1]["logp"] == 0.0)
    for alpha in (0.1, 0.3):
        loss, grads, _ = _jax("rlsc_l2", seqs, alpha=alpha)
        np.testing.assert_allclose(grads["logp"], np.full(Q * N, -alpha / Q), rtol=1e-6)
        np.testing.assert_allclose(loss, alpha * N * 200.0, rtol=1e-6)


def test_rlsc_l2_terms_add_up_to_its_loss_and_gradient():
    """The diagnostic's summands: p_old-weighted (L1) + α (α × NLL) = L2, value and d/d log p, at α = 0.3."""
    seqs = _seqs()
    terms = bind_terms("rlsc_l2", alpha=0.3, advantage_eps=0.5)
    assert set(terms) == {"p_old", "alpha"} and bind_terms("ttrl", alpha=0.3) == {}
    total = lambda logp: sum(fn(dataclasses.replace(seqs, logp=logp), N)[0] for fn in terms.values())  # noqa: E731
    loss, grads, _ = _jax("rlsc_l2", seqs, alpha=0.3)
    np.testing.assert_allclose(float(total(seqs.logp)), loss, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(total)(seqs.logp), grads["logp"], rtol=1e-6)
    alpha_grad = jax.grad(lambda logp: terms["alpha"](dataclasses.replace(seqs, logp=logp), N)[0])(seqs.logp)
    np.testing.assert_allclose(alpha_grad, np.full(Q * N, -0.3 / Q), rtol=1e-6)


def test_bind_takes_what_each_objective_accepts():
    seqs = _seqs()
    for name in OBJECTIVES:
        loss = bind(name, alpha=0.3, advantage_eps=0.5)(seqs, N)[0]
        expected = _jax(name, seqs, **{"rlsc_l2": {"alpha": 0.3}, "ttrl": {"advantage_eps": 0.5},
                                       "self_certainty": {"advantage_eps": 0.5}}.get(name, {}))[0]
        np.testing.assert_allclose(float(loss), expected, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("hparams,needle", [({"alpha": -0.1}, "alpha=-0.1: must be finite and >= 0"),
                                            ({"alpha": float("nan")}, "alpha=nan"),
                                            ({"advantage_eps": 0.0}, "advantage_eps=0.0: must be finite and > 0"),
                                            ({"advantage_eps": float("inf")}, "advantage_eps=inf")])
def test_bad_hyper_parameters_are_one_line_errors(hparams, needle):
    with pytest.raises(ValueError) as e:
        bind("rlsc_l2", **hparams)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_registry_and_errors():
    assert {"rlsc_l1", "rlsc_l2", "rlsc_group", "entropy_min", "ttrl", "self_certainty", "nll"} <= set(OBJECTIVES)
    with pytest.raises(ValueError) as e:
        get_objective("rlsc_l3")
    msg = str(e.value)
    assert "\n" not in msg and "rlsc_l3" in msg and all(name in msg for name in OBJECTIVES)
    with pytest.raises(ValueError, match="groups of 3"):
        get_objective("rlsc_l1")(_seqs(), 3)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        get_objective("ttrl")(_seqs(), 1)
    with pytest.raises(TypeError):
        get_objective("rlsc_l1")(_seqs(), N, alpha=0.1)
