"""Decoder parity with transformers (fp32): layer by layer, final logits, padding and KV-cache decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlsc_jax import hf
from rlsc_jax.models import init_cache
from tests.hf_models import VARIANTS, VOCAB, make_hf_model, save_hf_model

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its safetensors) for one variant."""
    family, overrides = VARIANTS[request.param]
    ref = make_hf_model(family, **overrides)
    path = save_hf_model(ref, tmp_path_factory.mktemp(request.param))
    return ref, hf.load(path)


def _ids(shape, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, shape)


def test_layer_by_layer_then_logits(pair):
    ref, model = pair
    ids = _ids((2, 12))
    with torch.no_grad():
        out = ref(torch.tensor(ids), output_hidden_states=True)
    final, collected = model.collect(jnp.asarray(ids))
    n = model.cfg.num_layers
    for i in range(n):
        err = np.abs(np.asarray(collected[i]) - out.hidden_states[i].numpy()).max()
        assert err < TOL, f"input of layer {i}: max abs error {err}"
    err = np.abs(np.asarray(final) - out.hidden_states[n].numpy()).max()
    assert err < TOL, f"final norm output: max abs error {err}"
    err = np.abs(np.asarray(model(jnp.asarray(ids))) - out.logits.numpy()).max()
    assert err < TOL, f"logits: max abs error {err}"


def test_left_padded_batch_equals_rows_alone(pair):
    _, model = pair
    lengths = [5, 11, 8]
    width = max(lengths)
    rows = [_ids((n,), seed=n) for n in lengths]
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = row
        mask[r, width - len(row):] = 1
    batched = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    for r, row in enumerate(rows):
        alone = np.asarray(model(jnp.asarray(row[None])))[0]
        err = np.abs(batched[r, width - len(row):] - alone).max()
        assert err < TOL, f"row {r}: padded vs alone max abs error {err}"


def test_kv_cache_decode_matches_full_forward(pair):
    _, model = pair
    prompt, steps = 7, 16
    ids = _ids((2, prompt + steps), seed=3)
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # first row left-padded by 3
    full = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    positions = jnp.asarray(np.maximum(np.cumsum(mask, 1) - 1, 0))
    cache, layers = init_cache(model.cfg, 2, prompt + steps), model.unstacked_layers()
    key_mask = jnp.asarray(mask)
    h, cache = model.decode(jnp.asarray(ids[:, :prompt]), positions[:, :prompt], key_mask, cache, 0, layers)
    got = [np.asarray(model.logits(h))]
    for t in range(prompt, prompt + steps):
        h, cache = model.decode(jnp.asarray(ids[:, t:t + 1]), positions[:, t:t + 1], key_mask, cache, t, layers)
        got.append(np.asarray(model.logits(h)))
    got = np.concatenate(got, axis=1)
    err = np.abs(got[1] - full[1]).max()
    assert err < TOL, f"cached decode vs full forward: max abs error {err}"
    err = np.abs(got[0, 3:] - full[0, 3:]).max()
    assert err < TOL, f"cached decode (padded row) vs full forward: max abs error {err}"


def test_kv_cache_decode_across_cache_windows_matches_full_forward(tmp_path):
    """A 600-slot cache is read through windows of 256, 512 and 600 slots; decoding across both boundaries
    gives the full forward's logits, for a left-padded row too."""
    model = hf.load(save_hf_model(make_hf_model("qwen2", max_position_embeddings=1024), tmp_path / "m"))
    prompt, steps, slots = 250, 270, 600
    ids = _ids((2, prompt + steps), seed=4)
    mask = np.ones((2, slots), np.int32)
    mask[0, :5] = 0
    full = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask[:, :prompt + steps])))
    positions = jnp.asarray(np.maximum(np.cumsum(mask, 1) - 1, 0))
    cache, layers = init_cache(model.cfg, 2, slots), model.unstacked_layers()
    step = jax.jit(model.decode)
    h, cache = step(jnp.asarray(ids[:, :prompt]), positions[:, :prompt], jnp.asarray(mask), cache, 0, layers)
    got = [np.asarray(model.logits(h))]
    for t in range(prompt, prompt + steps):
        h, cache = step(jnp.asarray(ids[:, t:t + 1]), positions[:, t:t + 1], jnp.asarray(mask), cache, t, layers)
        got.append(np.asarray(model.logits(h)))
    got = np.concatenate(got, axis=1)
    assert np.abs(got[1] - full[1]).max() < TOL
    assert np.abs(got[0, 5:] - full[0, 5:]).max() < TOL


def test_bf16_parameters_close_to_fp32(pair, tmp_path):
    ref, _ = pair
    path = save_hf_model(ref, tmp_path / "m")
    ids = jnp.asarray(_ids((2, 12)))
    fp32 = np.asarray(hf.load(path)(ids))
    model = hf.load(path, dtype=jnp.bfloat16)
    assert model.embed[...].dtype == jnp.bfloat16
    logits = model(ids)
    assert logits.dtype == jnp.float32
    # bf16 keeps 8 mantissa bits: per-op relative error ~4e-3, compounded over 3 layers.
    rel = np.abs(np.asarray(logits) - fp32).max() / np.abs(fp32).max()
    assert rel < 3e-2, f"bf16 logits relative error {rel}"
    agree = (np.asarray(logits).argmax(-1) == fp32.argmax(-1)).mean()
    assert agree > 0.9, f"bf16 argmax agreement {agree}"


def test_sharded_load_matches_single_device(pair, tmp_path):
    ref, model = pair
    from rlsc_jax.sharding import make_mesh
    path = save_hf_model(ref, tmp_path / "m")
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    sharded = hf.load(path, mesh=mesh)
    assert len(sharded.layers.mlp.up[...].sharding.device_set) == 8
    ids = jnp.asarray(_ids((2, 12)))
    err = np.abs(np.asarray(jax.jit(lambda x: sharded(x))(ids)) - np.asarray(model(ids))).max()
    assert err < 1e-5, f"sharded vs single-device logits: max abs error {err}"


def test_splash_attention_across_blocks_matches_plain_attention():
    """300 tokens: padded to 384 and run in three 128-token blocks, so the causal mask and the padding cross block
    boundaries. Real rows equal this module's own attention."""
    from rlsc_jax.models.decoder import _attention
    from rlsc_jax.models.splash import splash_attention
    from rlsc_jax.sharding import axis_rules
    rng = np.random.default_rng(0)
    b, t, k, g, d = 2, 300, 2, 3, 16
    q = jnp.asarray(rng.standard_normal((b, t, k, g, d)), jnp.float32)
    keys, values = (jnp.asarray(rng.standard_normal((b, t, k, d)), jnp.float32) for _ in range(2))
    mask = np.ones((b, t), np.int32)
    mask[0, :130], mask[1, 250:] = 0, 0  # left padding past the first block; right padding
    want = _attention(q, keys, values, jnp.arange(t), jnp.asarray(mask))
    got = jax.jit(splash_attention, static_argnames="rules")(q, keys, values, jnp.asarray(mask), rules=axis_rules())
    real = mask == 1
    assert np.abs(np.asarray(got)[real] - np.asarray(want)[real]).max() < 1e-5


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
def test_splash_attention_on_a_mesh_matches_one_device(tmp_path, mesh_shape):
    """Under a mesh the splash kernel runs per device on its rows and kv heads (`jax.shard_map`, since GSPMD cannot
    partition a Pallas call): the hidden states and the gradients equal one device's own attention."""
    from flax import nnx

    from rlsc_jax.sharding import make_mesh, use_mesh
    path = save_hf_model(make_hf_model("qwen2", num_key_value_heads=2), tmp_path / "m")
    model, mesh = hf.load(path), make_mesh(*mesh_shape)
    sharded = hf.load(path, mesh=mesh)
    ids = jnp.asarray(_ids((8, 12), seed=3))
    mask = np.ones((8, 12), np.int32)
    mask[1, :4], mask[2, 9:] = 0, 0
    mask = jnp.asarray(mask)

    def loss(graphdef, state, fused):
        hidden = nnx.merge(graphdef, state).forward(ids, attention_mask=mask, fused_attention=fused)
        return jnp.sum(jnp.where(mask[..., None] == 1, hidden, 0.0) ** 2), hidden

    def run(m, fused):
        graphdef, state = nnx.split(m)
        step = jax.jit(jax.value_and_grad(lambda s: loss(graphdef, s, fused), has_aux=True))
        (_, hidden), grads = step(state)
        return np.asarray(hidden)[np.asarray(mask) == 1], [np.asarray(g) for g in jax.tree.leaves(grads)]

    want, want_grads = run(model, None)
    with use_mesh(mesh):
        got, got_grads = run(sharded, "splash")
    assert np.abs(got - want).max() < TOL
    for g, w in zip(got_grads, want_grads):
        assert np.abs(g - w).max() / max(np.abs(w).max(), 1e-12) < 1e-5


def test_blocked_attention_matches_plain_and_transformers(pair, monkeypatch):
    """Full-sequence attention in query blocks (here 5 queries, so 12 tokens make 3 blocks, the last one
    padded) gives transformers' logits and the same gradients as unblocked attention."""
    from flax import nnx

    from rlsc_jax.models import decoder
    ref, model = pair
    ids = _ids((2, 12), seed=5)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    graphdef, state = nnx.split(model)
    weights = jnp.asarray(np.random.RandomState(1).normal(size=(2, 12, VOCAB)), jnp.float32)

    def loss(state):
        logits = nnx.merge(graphdef, state)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
        return jnp.sum(jnp.where(jnp.asarray(mask)[..., None] == 1, logits * weights, 0.0)), logits

    (_, plain_logits), plain_grads = jax.value_and_grad(loss, has_aux=True)(state)
    monkeypatch.setattr(decoder, "QUERY_BLOCK", 5)
    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(state)
    with torch.no_grad():
        positions = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=positions).logits.numpy()
    real = mask == 1
    err = np.abs(np.asarray(logits)[real] - want[real]).max()
    assert err < TOL, f"blocked attention vs transformers: max abs error {err}"
    err = np.abs(np.asarray(logits) - np.asarray(plain_logits)).max() / np.abs(np.asarray(plain_logits)).max()
    assert err < 1e-6, f"blocked vs plain attention logits: relative error {err}"
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
        err = np.abs(np.asarray(g) - np.asarray(p)).max() / max(np.abs(np.asarray(p)).max(), 1e-12)
        assert err < 1e-5, f"blocked vs plain attention gradient: relative error {err}"


@pytest.mark.parametrize("kernel", ["xla", "splash"])
def test_fused_attention_matches_transformers_and_plain_gradients(pair, kernel):
    """`fused_attention` over rows padded on the left and on the right: transformers' logits on the real tokens and
    the gradients of this module's own attention. "xla" is `jax.nn.dot_product_attention`'s XLA implementation, the
    API the cuDNN kernel sits behind; "splash" is the TPU kernel itself, run by Pallas' interpreter."""
    from flax import nnx
    ref, model = pair
    ids = _ids((3, 12), seed=6)
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding (a short prompt)
    mask[2, :2], mask[2, 9:] = 0, 0  # both (a short prompt and a completion that ended early)
    mask[0, 7:] = 0  # right padding only
    graphdef, state = nnx.split(model)
    weights = jnp.asarray(np.random.RandomState(2).normal(size=(3, 12, model.cfg.hidden_size)), jnp.float32)

    def loss(state, fused):
        hidden = nnx.merge(graphdef, state).forward(jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                                    fused_attention=fused)
        return jnp.sum(jnp.where(jnp.asarray(mask)[..., None] == 1, hidden * weights, 0.0)), hidden

    (_, plain), plain_grads = jax.value_and_grad(loss, has_aux=True)(state, None)
    (_, fused), grads = jax.value_and_grad(loss, has_aux=True)(state, kernel)
    with torch.no_grad():
        positions = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
        out = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=positions,
                  output_hidden_states=True)
    real = mask == 1
    want = out.hidden_states[-1].numpy()
    err = np.abs(np.asarray(fused)[real] - want[real]).max()
    assert err < TOL, f"fused attention vs transformers: max abs error {err}"
    err = np.abs(np.asarray(fused)[real] - np.asarray(plain)[real]).max()
    assert err < TOL, f"fused vs plain attention: max abs error {err}"
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
        err = np.abs(np.asarray(g) - np.asarray(p)).max() / max(np.abs(np.asarray(p)).max(), 1e-12)
        assert err < 1e-5, f"fused vs plain attention gradient: relative error {err}"
