"""Objective registry and RLSC L1/L2 against a PyTorch autograd transcription of the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlsc_jax.objectives import OBJECTIVES, get_objective

Q, N = 2, 4
# Two questions of four samples; -150 underflows exp in fp32 (p_old = 0 in JAX and PyTorch alike).
LOGP = np.array([-0.3, -1.2, -2.5, -0.05, -4.0, -0.7, -150.0, -3.3], np.float32)


def _torch_reference(logp: np.ndarray, alpha: float | None) -> tuple[float, np.ndarray]:
    """Paper: L = -Σ_i (p_old_i [+ α]) log p_i per question (p_old detached), mean over questions."""
    lp = torch.tensor(logp, requires_grad=True)
    weight = lp.detach().exp() + (alpha or 0.0)
    loss = -(weight * lp).view(-1, N).sum(1).mean()
    loss.backward()
    return loss.item(), lp.grad.numpy()


def _jax(name: str, logp: np.ndarray, **hparams):
    """(loss, grad w.r.t. seq_logp, metrics) of a registered objective."""
    fn = lambda x: get_objective(name)(x, N, **hparams)  # noqa: E731
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logp))
    return float(loss), np.asarray(grad), metrics


@pytest.mark.parametrize("name,hparams,alpha", [("rlsc_l1", {}, None), ("rlsc_l2", {}, 0.1),
                                                ("rlsc_l2", {"alpha": 0.3}, 0.3)])
def test_rlsc_matches_pytorch(name, hparams, alpha):
    loss, grad, _ = _jax(name, LOGP, **hparams)
    ref_loss, ref_grad = _torch_reference(LOGP, alpha)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=0)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["rlsc_l1", "rlsc_l2", "nll"])
def test_sum_over_samples_mean_over_questions(name):
    loss, _, _ = _jax(name, LOGP)
    per_question = [_jax(name, LOGP[q * N:(q + 1) * N])[0] for q in range(Q)]
    np.testing.assert_allclose(loss, np.mean(per_question), rtol=1e-6)


def test_nll_is_minus_mean_log_p():
    loss, grad, _ = _jax("nll", LOGP)
    np.testing.assert_allclose(loss, -LOGP.mean(), rtol=1e-6)
    np.testing.assert_allclose(grad, np.full(Q * N, -1.0 / (Q * N)), rtol=1e-6)


def test_metrics():
    _, _, m = _jax("rlsc_l2", LOGP)
    p = np.exp(LOGP.astype(np.float64))
    np.testing.assert_allclose(float(m["seq_logp_mean"]), LOGP.mean(), rtol=1e-6)
    assert float(m["seq_logp_min"]) == -150.0
    assert float(m["p_old_underflow_frac"]) == 1 / 8
    np.testing.assert_allclose(float(m["p_old_mean"]), p.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(m["p_old_max"]), p.max(), rtol=1e-6)


def test_underflow_fraction():
    assert float(_jax("rlsc_l1", np.full(Q * N, -200.0, np.float32))[2]["p_old_underflow_frac"]) == 1.0
    half = np.array([-200.0, -1.0, -200.0, -2.0, -50.0, -200.0, -3.0, -200.0], np.float32)
    assert float(_jax("rlsc_l1", half)[2]["p_old_underflow_frac"]) == 0.5


def test_all_underflowed_l1_has_zero_gradient_and_l2_is_alpha_nll():
    logp = np.full(Q * N, -200.0, np.float32)
    _, grad_l1, _ = _jax("rlsc_l1", logp)
    assert np.all(grad_l1 == 0.0)
    for alpha in (0.1, 0.3):
        loss, grad_l2, _ = _jax("rlsc_l2", logp, alpha=alpha)
        np.testing.assert_allclose(grad_l2, np.full(Q * N, -alpha / Q), rtol=1e-6)
        np.testing.assert_allclose(loss, alpha * N * 200.0, rtol=1e-6)


def test_registry_and_errors():
    assert {"rlsc_l1", "rlsc_l2", "nll"} <= set(OBJECTIVES)
    with pytest.raises(ValueError) as e:
        get_objective("rlsc_l3")
    msg = str(e.value)
    assert "\n" not in msg and "rlsc_l3" in msg and all(name in msg for name in OBJECTIVES)
    with pytest.raises(ValueError, match="groups of 3"):
        get_objective("rlsc_l1")(jnp.zeros(8), 3)
    with pytest.raises(TypeError):
        get_objective("rlsc_l1")(jnp.zeros(8), 4, alpha=0.1)
