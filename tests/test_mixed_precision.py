"""Mixed precision: fp32 masters with bf16 compute keep lr 1e-5 updates; bf16 storage drops them.

bf16 has 8 significant bits: a value rounds to within 2^-9 (0.2%) of itself, and a parameter of
magnitude ~0.08 (these models' weights) has a bf16 spacing of 2^-11 = 4.9e-4, fifty times an lr 1e-5
Adam step. So an update applied to bf16 weights rounds away, and the masters must stay fp32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlsc_jax import hf
from rlsc_jax.config import load_config
from rlsc_jax.logprobs import sequence_logprobs
from rlsc_jax.sharding import make_mesh
from rlsc_jax.training import Trainer
from tests.hf_models import VARIANTS, make_hf_model, save_hf_model
from tests.test_training import TEMPERATURE, _samples

STEPS, LR = 5, 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_hf_model(make_hf_model("qwen2", num_hidden_layers=2), tmp_path_factory.mktemp("m"))


def _run(path, dtype="float32", compute_dtype="float32"):
    """Initial and final parameters (HF layout, fp32) and per-step losses of STEPS steps at lr 1e-5."""
    model = hf.load(path, dtype=dtype, compute_dtype=compute_dtype)
    cfg = load_config(None, ["sampling.num_samples=4", f"sampling.temperature={TEMPERATURE}", f"optim.lr={LR}",
                             "optim.weight_decay=0.0"])
    trainer, state = Trainer.create(model, cfg, make_mesh(devices=jax.devices()[:1]))
    before = {m.hf_name: a.astype(np.float32) for m, a in hf.hf_tensors(trainer.model(state))}
    losses = []
    for step in range(STEPS):
        state, metrics = trainer.step(state, trainer.batch(_samples(step)))
        losses.append(float(metrics["loss"]))
    after = {m.hf_name: a.astype(np.float32) for m, a in hf.hf_tensors(trainer.model(state))}
    return before, after, losses


@pytest.fixture(scope="module")
def fp32_run(ckpt):
    return _run(ckpt)


def test_bf16_compute_with_fp32_masters_keeps_every_update(ckpt, fp32_run):
    before, fp32_after, fp32_losses = fp32_run
    _, after, losses = _run(ckpt, compute_dtype="bfloat16")
    assert all(a.dtype == np.float32 for a in after.values())
    # the losses see bf16 rounding of the log-likelihood (see test_sequence_logprob_bf16_compute)
    np.testing.assert_allclose(losses, fp32_losses, rtol=2e-2)
    for name in before:
        moved = fp32_after[name] != before[name]
        assert moved.mean() > 0.5, f"{name}: the fp32 run changed too few elements to test"
        # Adam's +-lr steps can cancel back to the exact starting value: allow a few such elements, where a
        # lost update (bf16 storage, below) leaves almost every element unchanged.
        kept = (after[name] != before[name])[moved].mean()
        assert kept >= 0.999, f"{name}: bf16 compute kept {kept:.2%} of the updates"
        # Adam moves each element by at most ~lr per step whatever the gradient, so two runs can differ by
        # 2 * STEPS * lr at most.
        diff = np.abs(after[name] - fp32_after[name])
        assert diff.max() <= 2 * STEPS * LR * 1.01, f"{name}: {diff.max()}"
        if name.endswith("k_proj.bias"):
            continue  # softmax ignores a key bias (q.b_k is the same for every key): its gradient is pure noise
        agree = (np.sign(after[name] - before[name]) == np.sign(fp32_after[name] - before[name]))[moved].mean()
        assert agree > 0.98, f"{name}: update directions agree on {agree:.1%}"


def test_bf16_storage_drops_lr_1e5_updates(ckpt, fp32_run):
    fp32_before, fp32_after, _ = fp32_run
    before, after, _ = _run(ckpt, dtype="bfloat16", compute_dtype="bfloat16")
    big = {name: np.abs(v) > 2e-2 for name, v in before.items()}  # spacing >= 2^-13 > 2 * 5 steps * 1e-5
    kept = np.mean(np.concatenate([(after[n] != before[n])[big[n]] for n in before]))
    fp32_kept = np.mean(np.concatenate([(fp32_after[n] != fp32_before[n])[big[n]] for n in before]))
    assert fp32_kept > 0.99 and kept < 0.01, f"changed elements: fp32 masters {fp32_kept:.1%}, bf16 {kept:.1%}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sequence_logprob_bf16_compute(tmp_path, variant):
    family, overrides = VARIANTS[variant]
    path = save_hf_model(make_hf_model(family, **overrides), tmp_path / "m")
    samples = _samples()
    ids = jnp.asarray(np.concatenate([samples.prompt_ids, samples.tokens], 1))
    attention = jnp.asarray(np.concatenate([samples.prompt_mask, samples.completion_mask], 1))
    loss_mask = jnp.asarray(np.concatenate([np.zeros_like(samples.prompt_mask), samples.completion_mask], 1))
    seq = {}
    for compute_dtype in ("float32", "bfloat16"):
        model = hf.load(path, compute_dtype=compute_dtype)
        seq[compute_dtype], aux = sequence_logprobs(model, ids, attention, loss_mask, TEMPERATURE)
        assert seq[compute_dtype].dtype == jnp.float32
    # bf16 rounds each matmul input to 2^-9 relative; over 2-3 layers and the LM head (tempered logits up to
    # ~10 here) a token's log p moves by up to ~0.03 nats (measured: 0.006-0.032). The bound, 0.05 nats per
    # token (a 5% change of the token's probability), is far below what RLSC's weights p_old resolve (they
    # span orders of magnitude) and far above fp32's ~1e-6, so a bf16 path that broke would show.
    err = np.abs(np.asarray(seq["bfloat16"]) - np.asarray(seq["float32"]))
    per_token = err / samples.lengths
    assert per_token.max() < 5e-2, f"bf16 vs fp32 compute: |d log p_i| / tokens up to {per_token.max()}"
    assert err.max() > 1e-5, "bf16 compute gave fp32's numbers: the compute dtype is not applied"
