"""Fused chunked log-likelihood: matches full-logits log_softmax (values, grads), holds no [B, T, V], PyTorch parity."""

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
    """Random hidden [batch, length, E], head [E, V], targets and an upstream cotangent for log p."""
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (batch, length, E)).astype(dtype)
    weight = (0.4 * jax.random.normal(k[1], (E, V))).astype(dtype)
    targets = jax.random.randint(k[2], (batch, length), 0, V)
    cotangent = jax.random.normal(k[3], (batch, length))
    return hidden, weight, targets, cotangent


def _naive(hidden, weight, targets, temperature):
    """Reference: full fp32 logits, jax.nn.log_softmax, gather; entropy of the same distribution."""
    logits = jnp.einsum("bte,ev->btv", hidden, weight, preferred_element_type=jnp.float32) / temperature
    logsm = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logsm, targets[..., None], axis=-1)[..., 0], -(jnp.exp(logsm) * logsm).sum(-1)


def _run(fn, hidden, weight, cotangent):
    """log p, entropy and the gradients of <log p, cotangent> w.r.t. hidden and head weight, in one jit."""
    def both(h, w):
        (logp, ent), vjp = jax.vjp(fn, h, w)
        return logp, ent, *vjp((cotangent, jnp.zeros_like(ent)))
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
    assert got[0].shape == got[1].shape == (B, T) and got[0].dtype == got[1].dtype == jnp.float32
    for name, a, b in zip(("log p", "entropy", "d hidden", "d head weight"), got, ref):
        assert _max_err(a, b) < TOL, f"{name}: max abs error {_max_err(a, b)}"


def test_entropy_carries_no_gradient():
    hidden, weight, targets, _ = _inputs()
    entropy_sum = lambda h, w: token_logprobs(h, w, targets, 0.5, 4)[1].sum()  # noqa: E731
    dh, dw = jax.jit(jax.grad(entropy_sum, argnums=(0, 1)))(hidden, weight)
    assert not np.any(np.asarray(dh)) and not np.any(np.asarray(dw))


def test_bf16_inputs_give_bf16_grads_close_to_fp32():
    hidden, weight, targets, cot = _inputs(dtype=jnp.bfloat16)
    fn = lambda h, w: token_logprobs(h, w, targets, 0.5, 5)  # noqa: E731
    logp, _, dh, dw = _run(fn, hidden, weight, cot)
    assert logp.dtype == jnp.float32 and dh.dtype == dw.dtype == jnp.bfloat16
    ref_logp, _, ref_dh, ref_dw = _run(fn, hidden.astype(jnp.float32), weight.astype(jnp.float32), cot)
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
        return lambda h, w, t: token_logprobs(h, w, t, 0.5, chunk_size)[0].sum()

    def naive(h, w, t):
        return _naive(h, w, t, 0.5)[0].sum()

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
    w_sharding = NamedSharding(mesh, sharding.logical_spec(("embed", "vocab"), (E, V), mesh))
    got = _run(fn, jax.device_put(hidden, sharding.batch_sharding(mesh, 3)), jax.device_put(weight, w_sharding), cot)
    ref = _run(fn, hidden, weight, cot)
    for name, a, b in zip(("log p", "entropy", "d hidden", "d head weight"), got, ref):
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
    """Per-sequence Σ masked log_softmax(logits / T)[next token], per-token values, mean entropy, and the
    parameter gradients of Σ_b weights_b · seq_logp_b, all by PyTorch autograd."""
    ref.zero_grad()
    positions = torch.tensor(np.maximum(np.cumsum(attention, 1) - 1, 0))
    logits = ref(torch.tensor(ids), attention_mask=torch.tensor(attention), position_ids=positions).logits
    logsm = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    tok = logsm.gather(-1, torch.tensor(ids[:, 1:, None]))[..., 0] * torch.tensor(loss[:, 1:])
    seq = tok.sum(1)
    (seq * torch.tensor(weights)).sum().backward()
    mask = torch.tensor(loss[:, 1:]).bool()
    entropy = -(logsm.exp() * logsm).sum(-1)[mask].mean().item()
    grads = {name: p.grad.numpy().copy() for name, p in ref.named_parameters()}
    return seq.detach().numpy(), tok.detach().numpy(), entropy, grads


def test_sequence_logprobs_and_grads_match_pytorch(qwen2):
    ref, model = qwen2
    ids, attention, loss = _batch(ref.config.vocab_size)
    weights = np.array([1.0, -0.5, 2.0], np.float32)
    graphdef, state = nnx.split(model)

    def run(state, temperature):
        def weighted(state):
            seq, aux = sequence_logprobs(nnx.merge(graphdef, state), jnp.asarray(ids), jnp.asarray(attention),
                                         jnp.asarray(loss), temperature, remat="nothing", chunk_size=7)
            return (seq * weights).sum(), (seq, aux)
        return jax.grad(weighted, has_aux=True)(state)

    run = jax.jit(run)  # temperature is traced: one compile serves both values
    for temperature in (1.0, 0.5):
        grads, (seq, aux) = run(state, temperature)
        ref_seq, ref_tok, ref_entropy, ref_grads = _torch_reference(ref, ids, attention, loss, temperature, weights)
        assert seq.shape == (3,) and seq.dtype == jnp.float32
        assert _max_err(seq, ref_seq) < 1e-4, f"T={temperature} seq log p vs PyTorch: {_max_err(seq, ref_seq)}"
        assert _max_err(aux["token_logp"][:, 1:], ref_tok) < 1e-4
        assert not np.any(np.asarray(aux["token_logp"])[loss == 0])
        assert int(aux["num_tokens"]) == loss[:, 1:].sum() == 11
        assert abs(float(aux["mean_entropy"]) - ref_entropy) < 1e-4
        for m, got in hf.hf_tensors(nnx.merge(graphdef, grads)):
            want = ref_grads[m.hf_name]
            err = _max_err(got, want) / max(1.0, float(np.abs(want).max()))
            assert err < 1e-4, f"T={temperature} grad of {m.hf_name}: relative error {err}"
