"""Sampler: greedy parity with transformers, sampling statistics, filters, EOS, seeds, sharding, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from scipy import stats

from rlsc_jax import hf, sampling
from rlsc_jax.sampling import _kth_largest, _kth_largest_by_blocks, sample
from rlsc_jax.sharding import make_mesh
from tests.hf_models import VOCAB, make_hf_model, save_hf_model

EOS = VOCAB - 1


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request, tmp_path_factory):
    ref = make_hf_model(request.param, num_key_value_heads=2)
    path = save_hf_model(ref, tmp_path_factory.mktemp(request.param))
    return ref, hf.load(path), path


def _prompts(lengths, seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randint(0, VOCAB - 1, n).tolist() for n in lengths]


def test_greedy_matches_transformers_generate(pair):
    ref, model, _ = pair
    prompts = _prompts([5, 13, 3, 9])
    new = 48
    got = sample(model, prompts, num_samples=1, max_new_tokens=new, temperature=0.0, eos_ids=[EOS], seed=0)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = ref.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, eos_token_id=EOS,
                           pad_token_id=EOS)[:, width:].numpy()
    tokens, lengths = np.asarray(got.tokens), np.asarray(got.lengths)
    for r in range(len(prompts)):
        n = int(lengths[r])
        assert np.array_equal(tokens[r, :n], out[r, :n]), f"row {r} differs from transformers"
        assert n == new or out[r, n - 1] == EOS
    assert lengths.max() >= 32, "greedy parity must cover at least 32 new tokens"


def test_logprobs_are_tempered_log_softmax_of_sampled_tokens(pair):
    _, model, _ = pair
    prompt = _prompts([6])[0]
    got = sample(model, [prompt], num_samples=3, max_new_tokens=10, temperature=0.7, eos_ids=[EOS], seed=1)
    for r in range(3):
        n = int(got.lengths[r])
        seq = jnp.asarray([prompt + np.asarray(got.tokens[r, :n]).tolist()])
        logp = jax.nn.log_softmax(model(seq)[0] / 0.7)
        want = np.asarray(logp[len(prompt) - 1:-1][jnp.arange(n), seq[0, len(prompt):]])
        np.testing.assert_allclose(np.asarray(got.logprobs[r, :n]), want, atol=1e-4)


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    """A 16-token model: sampling statistics are checkable with a few thousand draws."""
    ref = make_hf_model("qwen2", vocab_size=16, eos_token_id=15, bos_token_id=14)
    return hf.load(save_hf_model(ref, tmp_path_factory.mktemp("v16")))


def _first_token_probs(model, prompt, temperature):
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray([prompt]))[0, -1] / temperature), np.float64)
    return probs / probs.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_frequencies_follow_tempered_softmax(small_vocab_model, temperature):
    prompt = [3, 1, 4, 1, 5]
    draws = 4096
    got = sample(small_vocab_model, [prompt], num_samples=draws, max_new_tokens=1, temperature=temperature,
                 eos_ids=[15], seed=7)
    counts = np.bincount(np.asarray(got.tokens[:, 0]), minlength=16)
    probs = _first_token_probs(small_vocab_model, prompt, temperature)
    keep = probs * draws >= 5  # chi-square needs >= 5 expected per cell: pool the rare tokens
    expected, observed = probs[keep] * draws, counts[keep]
    if (~keep).any():
        expected, observed = np.append(expected, probs[~keep].sum() * draws), np.append(observed, counts[~keep].sum())
    p_value = stats.chisquare(observed, expected).pvalue
    assert p_value > 1e-3, f"chi-square p={p_value}: frequencies {counts / draws} vs {probs}"
    assert 0.5 * np.abs(counts / draws - probs).sum() < 0.05


def test_top_k_and_top_p_never_emit_excluded_tokens(small_vocab_model):
    prompt = [2, 7, 1]
    probs = _first_token_probs(small_vocab_model, prompt, 1.0)
    order = np.argsort(-probs)
    got = sample(small_vocab_model, [prompt], num_samples=2048, max_new_tokens=1, temperature=1.0, top_k=3,
                 eos_ids=[15], seed=3)
    assert set(np.asarray(got.tokens[:, 0]).tolist()) == set(order[:3].tolist())
    nucleus = order[: int(np.searchsorted(np.cumsum(probs[order]), 0.6) + 1)]
    got = sample(small_vocab_model, [prompt], num_samples=2048, max_new_tokens=1, temperature=1.0, top_p=0.6,
                 eos_ids=[15], seed=3)
    emitted = set(np.asarray(got.tokens[:, 0]).tolist())
    assert emitted <= set(nucleus.tolist()) and len(emitted) == len(nucleus)


@pytest.mark.parametrize("method", [_kth_largest, _kth_largest_by_blocks])
@pytest.mark.parametrize("k", [1, 2, 50, 1000])
def test_kth_largest_equals_top_k(k, method):
    """Both replacements of `lax.top_k` (the bisection on CPU, the block maxima elsewhere) find the same threshold,
    with ties (within a block and across blocks), negatives, mixed scales and a padded last block."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 20000)).astype(np.float32) * np.array([[1], [5], [0.01], [100], [1], [1], [1]],
                                                                       np.float32)
    x[4, :100] = 3.0  # a tie across the threshold, inside a few blocks
    x[5] = -np.abs(x[5])  # every value negative
    x[6] = np.round(x[6])  # a handful of levels: ties spread over every block
    expected = np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0][:, -1:])
    np.testing.assert_array_equal(np.asarray(jax.jit(method, static_argnums=1)(jnp.asarray(x), k)), expected)


@pytest.mark.parametrize("platform,bisection", [("cpu", True), ("tpu", False), ("gpu", False)])
def test_top_k_follows_the_platform_compiled_for(platform, bisection):
    """The sampler's CPU-only choices follow the mesh's devices, not the host's backend: a plan compiled on a CPU
    host for a TPU slice must compile the TPU's program (no data-dependent loop)."""
    device = jax.sharding.AbstractDevice(platform, None, platform)
    mesh = jax.sharding.AbstractMesh((1,), ("fsdp",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        jaxpr = str(jax.make_jaxpr(lambda x: _kth_largest(x, 50))(jnp.zeros((4, 20000))))
    assert ("while" in jaxpr) == bisection


def test_eos_stops_row_and_masks_the_rest(small_vocab_model):
    eos = [0, 1, 2, 3]  # frequent enough that most rows stop early
    got = sample(small_vocab_model, [[5, 6, 7]], num_samples=64, max_new_tokens=24, temperature=1.0, eos_ids=eos,
                 pad_id=15, seed=0)
    tokens, mask, lengths = map(np.asarray, (got.tokens, got.completion_mask, got.lengths))
    assert (lengths < 24).sum() > 32
    for r in range(64):
        hits = np.flatnonzero(np.isin(tokens[r], eos))
        n = hits[0] + 1 if len(hits) else 24
        assert lengths[r] == n
        assert mask[r].tolist() == [1] * n + [0] * (24 - n)
        assert (tokens[r, n:] == 15).all()
        assert (np.asarray(got.logprobs)[r, n:] == 0).all()


def test_seeds(pair):
    _, model, _ = pair
    prompts = _prompts([4, 7])
    kw = dict(num_samples=4, max_new_tokens=12, temperature=1.0, eos_ids=[EOS])
    a, b, c = (np.asarray(sample(model, prompts, seed=s, **kw).tokens) for s in (0, 0, 1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(row) for row in a[:4]}) > 1, "N samples of one prompt must differ at T=1"


def test_second_call_of_similar_size_compiles_nothing(pair):
    _, model, _ = pair
    kw = dict(num_samples=2, max_new_tokens=8, temperature=1.0, eos_ids=[EOS])
    sample(model, _prompts([5, 9, 3]), seed=0, **kw)
    before = (sampling._prefill._cache_size(), sampling._decode._cache_size())
    sample(model, _prompts([7, 12, 10, 2], seed=1), seed=1, **kw)
    assert (sampling._prefill._cache_size(), sampling._decode._cache_size()) == before


def test_temperature_and_top_p_values_compile_nothing(pair):
    """The temperature and the top-p threshold are runtime values of one compiled decode loop."""
    _, model, _ = pair
    kw = dict(num_samples=2, max_new_tokens=8, eos_ids=[EOS], seed=0)
    sample(model, _prompts([5, 9]), temperature=1.0, top_p=0.9, **kw)
    before = sampling._decode._cache_size()
    sample(model, _prompts([5, 9]), temperature=0.5, top_p=0.7, **kw)
    assert sampling._decode._cache_size() == before


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
def test_sharded_equals_single_device(pair, mesh_shape):
    _, model, path = pair
    sharded = hf.load(path, mesh=make_mesh(*mesh_shape))
    prompts = _prompts([5, 11])
    for temperature in (0.0, 1.0):
        kw = dict(num_samples=8, max_new_tokens=16, temperature=temperature, eos_ids=[EOS], seed=5)
        a, b = sample(model, prompts, **kw), sample(sharded, prompts, **kw)
        assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    assert len(b.tokens.sharding.device_set) == 8


@pytest.mark.parametrize("mesh_shape,split", [((1, 8, 1), ("fsdp",)), ((2, 2, 2), ("data", "fsdp"))])
def test_tensor_parallel_decode_layout(pair, mesh_shape, split):
    """`mesh.rules.decode_split`: the decode layout splits the MLP's hidden units and the vocabulary over those axes
    (each device holds its share, the attention weights whole) and draws the same tokens as one device."""
    _, model, path = pair
    sharded = hf.load(path, mesh=make_mesh(*mesh_shape), rules={"decode_split": split})
    prompts = _prompts([5, 11])
    kw = dict(num_samples=8, max_new_tokens=16, temperature=1.0, top_k=5, eos_ids=[EOS], seed=5)
    a, b = sample(model, prompts, **kw), sample(sharded, prompts, **kw)
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    graphdef, params = nnx.split(sharded)
    with jax.set_mesh(sampling.mesh_of(params)):
        layers, head = sampling.Sampler(graphdef, 8, 16, (EOS,), EOS).layout(params)
    ways = int(np.prod([dict(zip(("data", "fsdp", "tensor"), mesh_shape))[a] for a in {"tensor", *split}]))
    mlp = sharded.cfg.intermediate_size
    assert layers[0]["mlp"]["gate"][...].addressable_shards[0].data.shape == (sharded.cfg.hidden_size, mlp // ways)
    assert layers[0]["mlp"]["down"][...].addressable_shards[0].data.shape == (mlp // ways, sharded.cfg.hidden_size)
    q_axes = {a for d in layers[0]["attn"]["q"][...].sharding.spec for a in (d if isinstance(d, tuple) else (d,))}
    assert not q_axes & set(split), q_axes  # attention weights stay whole over the split axes
    assert head.addressable_shards[0].data.shape == (VOCAB // ways, sharded.cfg.hidden_size)


def test_axis_rule_overrides_reach_the_sampler(pair):
    """A model loaded with rows over `data` only samples with its rows there (not the default's data x fsdp),
    from programs compiled for its rules (not the cached default ones), and draws the same tokens."""
    _, model, path = pair
    mesh = make_mesh(2, 2, 2)
    kw = dict(num_samples=4, max_new_tokens=8, temperature=1.0, eos_ids=[EOS], seed=3)
    prompts = _prompts([5, 11])
    default = sample(hf.load(path, mesh=mesh), prompts, **kw)
    override = sample(hf.load(path, mesh=mesh, rules={"batch": ("data",), "embed": ("tensor",)}), prompts, **kw)
    assert default.tokens.sharding.spec[0] == ("data", "fsdp") and override.tokens.sharding.spec[0] == "data"
    expected = np.asarray(sample(model, prompts, **kw).tokens)
    assert np.array_equal(np.asarray(default.tokens), expected) and np.array_equal(np.asarray(override.tokens), expected)


@pytest.mark.parametrize("prompts,kw,needle", [
    ([], {}, "empty"),
    ([[1, 2], []], {}, "prompt 1 is empty"),
    ([[1] * 200], {"max_new_tokens": 100}, "positions"),
    ([[1, 2]], {"eos_ids": []}, "eos_ids"),
    ([[1, VOCAB]], {}, "outside"),
    ([[1, 2]], {"temperature": -1.0}, "temperature"),
])
def test_bad_requests_fail_before_compiling(pair, prompts, kw, needle):
    _, model, _ = pair
    args = dict(num_samples=2, max_new_tokens=8, temperature=1.0, eos_ids=[EOS], seed=0) | kw
    before = sampling._decode._cache_size()
    with pytest.raises(ValueError, match=needle):
        sample(model, prompts, **args)
    assert sampling._decode._cache_size() == before
