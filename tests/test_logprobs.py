"""Fused chunked log-likelihood, entropy and self-certainty: match full-logits references (values, grads of all
three), hold no [B, T, V], PyTorch parity through a model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import NamedSharding

from rlsc_jax import hf, sharding
from rlsc_jax.logprobs import sequence_logprobs, token_logprobs
from tests.hf_models import make_hf_model, save_hf_model

TOL = 1e-5
B, T, E, V = 3, 7, 16, 50


def _inputs(seed=0, batch=B, length=T, dtype=jnp.float32):
    """Random hidden [batch, length, E], head [E, V], targets and upstream cotangents for (log p, H, KL(U ‖ p))."""
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (batch, length, E)).astype(dtype)
    weight = (0.4 * jax.random.normal(k[1], (E, V))).astype(dtype)
    targets = jax.random.randint(k[2], (batch, length), 0, V)
    cotangents = tuple(jax.random.normal(c, (batch, length)) for c in jax.random.split(k[3], 3))
    return hidden, weight, targets, cotangents


def _naive(hidden, weight, targets, temperature):
    """Reference: full fp32 logits, jax.nn.log_softmax, gather; entropy and KL(uniform ‖ p) by their definitions."""
    logits = jnp.einsum("bte,ev->btv", hidden, weight, preferred_element_type=jnp.float32) / temperature
    logsm = jax.nn.log_softmax(logits, axis=-1)
    uniform = 1.0 / logits.shape[-1]
    return (jnp.take_along_axis(logsm, targets[..., None], axis=-1)[..., 0], -(jnp.exp(logsm) * logsm).sum(-1),
            (uniform * (jnp.log(uniform) - logsm)).sum(-1))


NAMES = ("log p", "entropy", "KL(U | p)", "d hidden", "d head weight")


def _run(fn, hidden, weight, cotangents):
    """log p, entropy, KL(U ‖ p) and the gradients of their inner product with `cotangents` w.r.t. hidden and
    head weight, in one jit."""
    def both(h, w):
        outputs, vjp = jax.vjp(fn, h, w)
        return *outputs, *vjp(tuple(cotangents))
    return jax.jit(both)(hidden, weight)


def _max_err(a, b):
    """Max absolute difference, in fp32."""
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("chunk_size", [7, 5], ids=["divides", "remainder"])
def test_fused_equals_naive_values_and_grads(chunk_size, temperature):
    hidden, weight, targets, cot = _inputs()
    fused = lambda h, w: token_logprobs(h, w, targets, temperature, chunk_size)  # noqa: E731
    naive = lambda h, w: _naive(h, w, targets, temperature)  # noqa: E731
    got, ref = _run(fused, hidden, weight, cot), _run(naive, hidden, weight, cot)
    assert all(x.shape == (B, T) and x.dtype == jnp.float32 for x in got[:3])
    for name, a, b in zip(NAMES, got, ref):
        assert _max_err(a, b) < TOL, f"{name}: max abs error {_max_err(a, b)}"


@pytest.mark.parametrize("output", [0, 1, 2], ids=["log p", "entropy", "KL(U | p)"])
def test_each_output_has_its_own_gradient(output):
    """The backward of one output alone (the others' cotangents zero) equals the naive one's."""
    hidden, weight, targets, cot = _inputs(seed=1)
    only = tuple(c if i == output else jnp.zeros_like(c) for i, c in enumerate(cot))
    fused = lambda h, w: token_logprobs(h, w, targets, 0.7, 4)  # noqa: E731
    got, ref = _run(fused, hidden, weight, only), _run(lambda h, w: _naive(h, w, targets, 0.7), hidden, weight, only)
    assert float(np.abs(np.asarray(ref[3])).max()) > 1e-2, "control: the output must have a gradient"
    for name, a, b in zip(NAMES[3:], got[3:], ref[3:]):
        assert _max_err(a, b) < TOL, f"{name} of {NAMES[output]}: max abs error {_max_err(a, b)}"


def test_bf16_inputs_give_bf16_grads_close_to_fp32():
    hidden, weight, targets, cot = _inputs(dtype=jnp.bfloat16)
    fn = lambda h, w: token_logprobs(h, w, targets, 0.5, 5)  # noqa: E731
    logp, _, _, dh, dw = _run(fn, hidden, weight, cot)
    assert logp.dtype == jnp.float32 and dh.dtype == dw.dtype == jnp.bfloat16
    ref_logp, _, _, ref_dh, ref_dw = _run(fn, hidden.astype(jnp.float32), weight.astype(jnp.float32), cot)
    assert _max_err(logp, ref_logp) < 1e-4
    for got, ref in ((dh, ref_dh), (dw, ref_dw)):
        assert _max_err(got, ref) < 1e-2 * float(np.abs(np.asarray(ref)).max())


def test_no_full_logits_in_forward_or_backward():
    batch, length, vocab, chunk = 4, 1024, 8192, 256
    naive_bytes = batch * length * vocab * 4  # 128 MiB of fp32 logits
    args = (jax.ShapeDtypeStruct((batch, length, 64), jnp.float32), jax.ShapeDtypeStruct((64, vocab), jnp.float32),
            jax.ShapeDtypeStruct((batch, length), jnp.int32))

    def temp_bytes(fn):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    def fused(chunk_size):
        return lambda h, w, t: sum(x.sum() for x in token_logprobs(h, w, t, 0.5, chunk_size))

    def naive(h, w, t):
        return sum(x.sum() for x in _naive(h, w, t, 0.5))

    unchunked = temp_bytes(jax.grad(fused(batch * length), argnums=(0, 1)))
    assert unchunked >= naive_bytes, "control: one chunk of all tokens must hold full logits"
    naive_fwd, naive_grad = temp_bytes(naive), temp_bytes(jax.grad(naive, argnums=(0, 1)))
    bound = 3 * chunk * vocab * 4  # a few chunk-sized fp32 buffers (24 MiB)
    for name, fn, ref in (("forward", fused(chunk), naive_fwd),
                          ("forward + backward", jax.grad(fused(chunk), argnums=(0, 1)), naive_grad)):
        got = temp_bytes(fn)
        assert got <= bound and got < ref / 4, f"{name}: {got / 2**20:.1f} MiB temp vs naive {ref / 2**20:.1f} MiB"


def test_sharded_equals_unsharded():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    hidden, weight, targets, cot = _inputs(batch=4, length=6)
    fn = lambda h, w: token_logprobs(h, w, targets, 0.5, 8)  # noqa: E731
    rules = sharding.axis_rules()
    w_sharding = NamedSharding(mesh, sharding.logical_spec(("embed", "vocab"), (E, V), mesh, rules))
    sharded = jax.device_put(hidden, sharding.batch_sharding(mesh, rules, 3)), jax.device_put(weight, w_sharding)
    got = _run(fn, *sharded, cot)
    ref = _run(fn, hidden, weight, cot)
    for name, a, b in zip(NAMES, got, ref):
        assert _max_err(a, b) < TOL, f"{name}: sharded vs unsharded {_max_err(a, b)}"


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A tiny random transformers Qwen2 (two layers, to keep compiles short) and our model loaded from it."""
    ref = make_hf_model("qwen2", num_hidden_layers=2)
    return ref, hf.load(save_hf_model(ref, tmp_path_factory.mktemp("qwen2")))


def _batch(vocab):
    """Left-padded prompts of lengths 3/6/4, then completions of 5/2/4 tokens (EOS included), right-padded."""
    rng = np.random.RandomState(0)
    prompts, completions, width_p, width_c = [3, 6, 4], [5, 2, 4], 6, 5
    ids = np.zeros((3, width_p + width_c), np.int64)
    attention = np.zeros_like(ids)
    loss = np.zeros_like(ids)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        ids[r, width_p - p:width_p + c] = rng.randint(0, vocab - 1, p + c)
        ids[r, width_p + c - 1] = vocab - 1
        attention[r, width_p - p:width_p + c] = 1
        loss[r, width_p:width_p + c] = 1
    return ids, attention, loss


def _torch_reference(ref, ids, attention, loss, temperature, weights):
    """Per-sequence Σ masked log_softmax(logits / T)[next token], per-sequence sums of token
    entropy and KL(uniform ‖ p), and the parameter gradients of Σ_b w_b · (seq_logp_b, entropy_b, KL_b) for the
    three rows of `weights`, all by PyTorch autograd."""
    ref.zero_grad()
    positions = torch.tensor(np.maximum(np.cumsum(attention, 1) - 1, 0))
    logits = ref(torch.tensor(ids), attention_mask=torch.tensor(attention), position_ids=positions).logits
    logsm = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    mask = torch.tensor(loss[:, 1:])
    tok = logsm.gather(-1, torch.tensor(ids[:, 1:, None]))[..., 0] * mask
    seq = tok.sum(1)
    entropy = (-(logsm.exp() * logsm).sum(-1) * mask).sum(1)
    vocab = logsm.shape[-1]
    certainty = ((-np.log(vocab) - logsm).mean(-1) * mask).sum(1)
    w = torch.tensor(weights)
    (w[0] * seq + w[1] * entropy + w[2] * certainty).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in ref.named_parameters()}
    sums = [x.detach().numpy() for x in (seq, entropy, certainty)]
    return sums, grads


def test_sequence_logprobs_and_grads_match_pytorch(qwen2):
    ref, model = qwen2
    ids, attention, loss = _batch(ref.config.vocab_size)
    weights = np.array([[1.0, -0.5, 2.0], [0.3, 1.1, -0.7], [-0.8, 0.4, 0.6]], np.float32)
    graphdef, state = nnx.split(model)

    def run(state, temperature):
        def weighted(state):
            seq, aux = sequence_logprobs(nnx.merge(graphdef, state), jnp.asarray(ids), jnp.asarray(attention),
                                         jnp.asarray(loss), temperature, remat="nothing", chunk_size=7)
            total = (weights[0] * seq + weights[1] * aux["entropy"] + weights[2] * aux["certainty"]).sum()
            return total, (seq, aux)
        return jax.grad(weighted, has_aux=True)(state)

    run = jax.jit(run)  # temperature is traced: one compile serves both values
    for temperature in (1.0, 0.5):
        grads, (seq, aux) = run(state, temperature)
        ref_sums, ref_grads = _torch_reference(ref, ids, attention, loss, temperature, weights)
        assert seq.shape == aux["entropy"].shape == aux["certainty"].shape == (3,) and seq.dtype == jnp.float32
        for name, got, want in zip(("seq log p", "entropy", "KL(U | p)"), (seq, aux["entropy"], aux["certainty"]),
                                   ref_sums):
            assert _max_err(got, want) < 1e-4, f"T={temperature} {name} vs PyTorch: {_max_err(got, want)}"
        assert int(aux["num_tokens"]) == loss[:, 1:].sum() == 11
        np.testing.assert_array_equal(aux["lengths"], [5, 2, 4])
        for m, got in hf.hf_tensors(nnx.merge(graphdef, grads)):
            want = ref_grads[m.hf_name]
            err = _max_err(got, want) / max(1.0, float(np.abs(want).max()))
            assert err < 1e-4, f"T={temperature} grad of {m.hf_name}: relative error {err}"
