"""Step parity with PyTorch autograd (RLSC's Algorithm 1 and the other objectives), sharding equality, exact
accumulation for every objective, and skipped steps."""

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec

from rlsc_jax import hf, torch_reference
from rlsc_jax.config import load_config
from rlsc_jax.objectives import OBJECTIVES, register
from rlsc_jax.sampling import Samples
from rlsc_jax.sharding import DEFAULT_RULES, axis_rules, make_mesh, param_shardings
from rlsc_jax.training import Trainer, trimmed_width
from tests import torch_objectives
from tests.hf_models import VOCAB, make_hf_model, save_hf_model

Q, N, P, M = 2, 4, 6, 5
TEMPERATURE = 0.7
ANSWER_IDS = np.array([0, 1, 0, -1, 1, 0, 0, 2], np.int32)  # vote classes of the 8 completions (0 = majority)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    ref = make_hf_model("qwen2", num_hidden_layers=2)
    return ref, save_hf_model(ref, tmp_path_factory.mktemp("m"))


def _samples(seed=0) -> Samples:
    """Fixed completions of mixed lengths (some of 1-2 tokens, so p_old is far from 0) and left-padded prompts."""
    rs = np.random.RandomState(seed)
    prompt_ids = rs.randint(0, VOCAB - 1, (Q * N, P)).astype(np.int32)
    prompt_mask = np.ones_like(prompt_ids)
    prompt_mask[N:, :2] = 0  # second question's prompt is left-padded
    prompt_ids[prompt_mask == 0] = 0
    lengths = np.array([1, 2, 5, 3, 1, 4, 2, 5])
    tokens = rs.randint(0, VOCAB - 1, (Q * N, M)).astype(np.int32)
    mask = (np.arange(M)[None] < lengths[:, None]).astype(np.int32)
    tokens[mask == 0] = VOCAB - 1
    return Samples(tokens=tokens, completion_mask=mask, lengths=lengths, logprobs=np.zeros((Q * N, M), np.float32),
                   prompt_ids=prompt_ids, prompt_mask=prompt_mask)


def _cfg(**kw):
    # eps well above the gradient's float error keeps Adam's first step a smooth function of the gradient,
    # so updates can be compared tightly (at eps=1e-8 it is lr * sign(g), which flips on rounding noise).
    overrides = [f"sampling.num_samples={N}", f"sampling.temperature={TEMPERATURE}", "optim.lr=1e-3",
                 "optim.weight_decay=0.01", "optim.eps=1e-2"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in kw.items()])


def _torch_step(ref, samples, objective):
    """One step in PyTorch with the step's settings of `_cfg`: RLSC through `rlsc_jax.torch_reference` (Algorithm 1,
    shared with `python -m rlsc_jax.compare`), the other objectives through `_torch_label_free_step`."""
    if objective not in ("rlsc_l1", "rlsc_l2"):
        return _torch_label_free_step(ref, samples, objective)
    step = torch_reference.rlsc_step(copy.deepcopy(ref), samples, N, TEMPERATURE, objective, lr=1e-3,
                                     weight_decay=0.01, eps=1e-2)
    return step.loss, step.grads, step.params, step.logp


def _torch_label_free_step(ref, samples, objective, lr=1e-3, weight_decay=0.01, eps=1e-2):
    """One step in PyTorch: per answer, Σ over its tokens of log p, entropy and KL(uniform ‖ p) at T; the
    objective of tests/torch_objectives.py (RLSC: Algorithm 1, p_old detached); one AdamW step."""
    model = make_hf_model("qwen2", num_hidden_layers=2)
    model.load_state_dict(ref.state_dict())
    ids = torch.tensor(np.concatenate([samples.prompt_ids, samples.tokens], 1), dtype=torch.long)
    attn = torch.tensor(np.concatenate([samples.prompt_mask, samples.completion_mask], 1), dtype=torch.long)
    answer = torch.tensor(np.concatenate([np.zeros_like(samples.prompt_mask), samples.completion_mask], 1))
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(ids, attention_mask=attn, position_ids=positions).logits[:, :-1] / TEMPERATURE
    logsm = torch.log_softmax(logits, -1)
    mask = answer[:, 1:]
    logp = (logsm.gather(-1, ids[:, 1:, None])[..., 0] * mask).sum(-1)
    entropy = (-(logsm.exp() * logsm).sum(-1) * mask).sum(-1)
    certainty = ((-np.log(logsm.shape[-1]) - logsm).mean(-1) * mask).sum(-1)
    loss = torch_objectives.loss(objective, logp, entropy, certainty, mask.sum(-1).float(),
                                 torch.tensor(ANSWER_IDS == 0).float(), N)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=eps)
    loss.backward()
    grads = {n: p.grad.detach().clone().numpy() for n, p in model.named_parameters()}
    opt.step()
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    return float(loss.detach()), grads, params, logp.detach().numpy().ravel()


def _flax_by_hf_name(model):
    """Every parameter in HF layout, keyed by its HF name."""
    return {m.hf_name: arr for m, arr in hf.hf_tensors(model)}


@pytest.mark.parametrize("objective", ["rlsc_l2", "rlsc_l1", "entropy_min", "ttrl", "self_certainty"])
def test_one_step_matches_pytorch(ckpt, objective):
    ref, path = ckpt
    samples = _samples()
    t_loss, t_grads, t_params, t_logp = _torch_step(ref, samples, objective)
    assert np.exp(t_logp).max() > 1e-3, "the check needs p_old weights far from 0"
    model = hf.load(path)
    mesh = make_mesh(devices=jax.devices()[:1])
    trainer, state = Trainer.create(model, _cfg(objective=objective), mesh)
    before = _flax_by_hf_name(trainer.model(state))
    grads_fn = jax.jit(lambda st, b: trainer.loss_and_grads(st.params, b, TEMPERATURE))
    loss, _, _, grads = grads_fn(state, trainer.batch(samples, ANSWER_IDS))
    grads = _flax_by_hf_name(trainer.model(state.replace(params=grads)))
    state, step_metrics = trainer.step(state, trainer.batch(samples, ANSWER_IDS))
    assert abs(float(loss) - t_loss) <= 1e-5 * abs(t_loss)
    assert abs(float(step_metrics["loss"]) - t_loss) <= 1e-5 * abs(t_loss)
    after = _flax_by_hf_name(trainer.model(state))
    assert sorted(after) == sorted(t_params)
    for name, g in t_grads.items():
        rel = np.abs(grads[name] - g).max() / np.abs(g).max()
        assert rel <= 1e-5, f"{name}: gradient relative error {rel}"
        rel = np.abs(after[name] - t_params[name]).max() / np.abs(t_params[name]).max()
        assert rel <= 1e-5, f"{name}: updated parameter relative error {rel}"
        delta, t_delta = after[name] - before[name], t_params[name] - before[name]
        ulp = np.spacing(np.abs(before[name]).max())  # new - old is only known to fp32 rounding of the values
        err = np.abs(delta - t_delta).max()
        assert err <= 1e-4 * np.abs(t_delta).max() + 2 * ulp, f"{name}: update (new - old) error {err}"


def _two_steps(path, mesh_shape=None, devices=None, rules=None, **cfg):
    model = hf.load(path, rules=rules)
    mesh = make_mesh(*mesh_shape) if mesh_shape else make_mesh(devices=devices)
    trainer, state = Trainer.create(model, _cfg(**cfg), mesh)
    losses = []
    for seed in (0, 1):
        state, metrics = trainer.step(state, trainer.batch(_samples(seed)))
        losses.append(float(metrics["loss"]))
    return losses, _flax_by_hf_name(trainer.model(state))


@pytest.fixture(scope="module")
def single_device_run(ckpt):
    return _two_steps(ckpt[1], devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_meshes_give_the_same_training(ckpt, single_device_run, mesh_shape):
    losses, params = _two_steps(ckpt[1], mesh_shape)
    ref_losses, ref_params = single_device_run
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, value in ref_params.items():
        np.testing.assert_allclose(params[name], value, atol=1e-5, err_msg=name)


def test_axis_rules_survive_create_and_a_step(ckpt):
    """Parameters loaded with non-default rules (embed replicated, mlp over fsdp) keep that placement through
    `Trainer.create` and a step, and the moments follow them."""
    rules = dict(DEFAULT_RULES, embed=(), mlp=("fsdp",))
    mesh = make_mesh(1, 4, 2)
    trainer, state = Trainer.create(hf.load(ckpt[1], mesh=mesh, rules=rules), _cfg(), mesh)
    state, _ = trainer.step(state, trainer.batch(_samples()))
    want = {k: v.get_value().spec for k, v in nnx.to_flat_state(param_shardings(state.params, mesh, rules))}
    assert want[("layers", "mlp", "gate")] == PartitionSpec(None, None, "fsdp")
    default = param_shardings(state.params, mesh, axis_rules())
    assert want != {k: v.get_value().spec for k, v in nnx.to_flat_state(default)}
    got = {k: v.get_value().sharding.spec for k, v in nnx.to_flat_state(state.params)}
    assert got == want
    mu = state.opt_state[0].mu
    assert {k: v.get_value().sharding.spec for k, v in nnx.to_flat_state(mu)} == want


# rows over data only; the LM head transposed (embed over tensor, vocab over fsdp); MLP over fsdp
OVERRIDE = {"batch": ("data",), "embed": ("tensor",), "vocab": ("fsdp",), "mlp": ("fsdp",)}


def _constraints(lowered) -> set[tuple[str, str]]:
    """(sharding, tensor type) of every sharding constraint in a lowered program's StableHLO (Shardy)."""
    return set(re.findall(r"sdy.sharding_constraint %\S+ <@\w+, (\[[^\]]*\])> : (tensor<[^>]*>)", lowered.as_text()))


def test_axis_rule_overrides_reach_every_constraint_of_the_step(ckpt, single_device_run):
    """Rules given to `hf.load` are the ones the compiled step's batch and in-model constraints use (the rows',
    the FSDP gathers' and the LM head gradient's), and they train as the single-device run does."""
    mesh = make_mesh(2, 2, 2)
    lowered = {}
    for name, rules in (("default", None), ("override", OVERRIDE)):
        trainer, state = Trainer.create(hf.load(ckpt[1], mesh=mesh, rules=rules), _cfg(), mesh)
        assert trainer.batch(_samples()).tokens.sharding.spec == PartitionSpec("data" if rules else ("data", "fsdp"), None)
        lowered[name] = trainer.lower_step(state, Q * N, P, M)
    cfg = trainer.model(state).cfg
    head = f"tensor<{cfg.hidden_size}x{cfg.vocab_size}xf32>"
    gate = f"tensor<{cfg.hidden_size}x{cfg.intermediate_size}xf32>"
    default, override = _constraints(lowered["default"]), _constraints(lowered["override"])
    assert ('[{"fsdp"}, {"tensor"}]', head) in default and ('[{"tensor"}, {"fsdp"}]', head) in override  # dW
    assert ('[{}, {"tensor"}]', gate) in default and ('[{"tensor"}, {}]', gate) in override  # gathered over FSDP
    assert '{"data", "fsdp"}' in lowered["default"].as_text()
    assert '{"data", "fsdp"}' not in lowered["override"].as_text()
    assert any(sharding.startswith('[{"data"}') for sharding, _ in override)  # the rows
    losses, params = _two_steps(ckpt[1], (2, 2, 2), rules=OVERRIDE)
    ref_losses, ref_params = single_device_run
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, value in ref_params.items():
        np.testing.assert_allclose(params[name], value, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("grad_accum,remat", [(2, False), (4, False), (1, True), (2, True)])
def test_gradient_accumulation_and_remat_are_exact(ckpt, single_device_run, grad_accum, remat):
    losses, params = _two_steps(ckpt[1], devices=jax.devices()[:1], grad_accum=grad_accum, remat=remat)
    ref_losses, ref_params = single_device_run
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, value in ref_params.items():
        np.testing.assert_allclose(params[name], value, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("objective", ["rlsc_group", "entropy_min", "ttrl", "self_certainty"])
def test_gradient_accumulation_is_exact_for_every_objective(ckpt, objective):
    """grad_accum=2 puts rows 0, 2, 4, 6 and 1, 3, 5, 7 in separate micro-batches, so each question's samples
    are split; the objective still sees all N of them, and loss and gradients equal grad_accum=1's.

    Micro-batches of 4 rows round the per-sequence sums differently (measured: up to 5e-7 relative), and a
    group-normalised advantage divides that by the rewards' spread (std 0.08 here), so the loss is compared
    at 1e-5 (measured: 2.2e-6 for self_certainty, at most 6e-7 for the others) and gradients at 1e-5 (4e-6).
    """
    mesh = make_mesh(devices=jax.devices()[:1])
    results = []
    for grad_accum in (1, 2):
        trainer, state = Trainer.create(hf.load(ckpt[1]), _cfg(objective=objective, grad_accum=grad_accum), mesh)
        fn = jax.jit(lambda st, b, t=trainer: t.loss_and_grads(st.params, b, TEMPERATURE))
        loss, metrics, stats, grads = fn(state, trainer.batch(_samples(), ANSWER_IDS))
        grads = _flax_by_hf_name(trainer.model(state.replace(params=grads)))
        results.append((float(loss), jax.device_get((metrics, stats)), grads))
    (loss, (metrics, stats), grads), (acc_loss, (acc_metrics, acc_stats), acc_grads) = results
    for key in ("logp", "entropy", "certainty"):
        want = np.asarray(getattr(stats, key))
        assert np.abs(np.asarray(getattr(acc_stats, key)) - want).max() <= 1e-6 * np.abs(want).max(), key
    np.testing.assert_array_equal(acc_stats.answer_ids, ANSWER_IDS)
    assert abs(acc_loss - loss) <= 1e-5 * abs(loss)
    for key, value in metrics.items():
        np.testing.assert_allclose(acc_metrics[key], value, rtol=1e-5, err_msg=key)
    for name, g in grads.items():
        rel = np.abs(acc_grads[name] - g).max() / np.abs(g).max()
        assert rel <= 1e-5, f"{name}: accumulated gradient relative error {rel}"


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_gradient_terms_add_up_to_the_steps_gradient(ckpt, grad_accum):
    """rlsc_l2's two summands' gradients g_p, g_α (norms and cosine) recompose the step's own gradient norm:
    |g_p + g_α|² = |g_p|² + |g_α|² + 2 cos |g_p| |g_α|; and an objective without summands reports nothing."""
    mesh = make_mesh(devices=jax.devices()[:1])
    cfg = _cfg(objective="rlsc_l2", grad_accum=grad_accum, **{"objective_args.alpha": 0.3})
    trainer, state = Trainer.create(hf.load(ckpt[1]), cfg, mesh)
    batch = trainer.batch(_samples(), ANSWER_IDS)
    terms = jax.device_get(trainer.gradient_terms(state, batch))
    _, metrics = trainer.step(state, batch)
    p, a, cos = terms["grad_norm_p_old_term"], terms["grad_norm_alpha_term"], terms["grad_terms_cosine"]
    assert p > 0 and a > 0 and -1 <= cos <= 1
    np.testing.assert_allclose(np.sqrt(p**2 + a**2 + 2 * cos * p * a), float(metrics["grad_norm"]), rtol=1e-4)
    other, other_state = Trainer.create(hf.load(ckpt[1]), _cfg(objective="ttrl"), mesh)
    assert other.gradient_terms(other_state, other.batch(_samples(), ANSWER_IDS)) == {}


def _with_padding_columns(samples: Samples, prompt_pad: int, completion_pad: int) -> Samples:
    """The same samples inside wider arrays: extra all-padding columns left of the prompts, right of the answers."""
    rows = samples.tokens.shape[0]
    return Samples(
        tokens=np.concatenate([samples.tokens, np.full((rows, completion_pad), VOCAB - 1, np.int32)], 1),
        completion_mask=np.pad(samples.completion_mask, ((0, 0), (0, completion_pad))),
        lengths=samples.lengths, logprobs=np.pad(samples.logprobs, ((0, 0), (0, completion_pad))),
        prompt_ids=np.pad(samples.prompt_ids, ((0, 0), (prompt_pad, 0))),
        prompt_mask=np.pad(samples.prompt_mask, ((0, 0), (prompt_pad, 0))))


def test_padding_columns_are_cut_and_change_nothing(ckpt):
    compact, padded = _samples(), _with_padding_columns(_samples(), prompt_pad=10, completion_pad=27)
    results = []
    for samples in (compact, padded):
        trainer, state = Trainer.create(hf.load(ckpt[1]), _cfg(), make_mesh(1, 8, 1))
        batch = trainer.batch(samples)
        state, metrics = trainer.step(state, batch)
        results.append((batch, float(metrics["loss"]), _flax_by_hf_name(trainer.model(state))))
    (_, loss, params), (batch, padded_loss, padded_params) = results
    # 16 prompt columns hold 6 used ones, cut in steps of 2; 32 completion columns hold 5, in steps of 4
    assert batch.prompt_ids.shape == (Q * N, 6) and batch.tokens.shape == (Q * N, 8)
    assert abs(padded_loss - loss) <= 1e-6 * abs(loss)
    for name, value in params.items():
        np.testing.assert_allclose(padded_params[name], value, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("used,total,expected", [(5, 96, 12), (57, 96, 60), (96, 96, 96), (0, 96, 12), (75, 128, 80),
                                                 (1000, 3072, 1152), (3, 5, 3)])
def test_trimmed_width_rounds_up_to_eighths(used, total, expected):
    assert trimmed_width(used, total) == expected


@pytest.fixture
def nan_objective():
    @register("nan_for_test")
    def nan_loss(seqs, num_samples):
        return seqs.logp.sum() * np.float32("nan"), {}
    yield "nan_for_test"
    OBJECTIVES.pop("nan_for_test")


def test_non_finite_loss_skips_the_update(ckpt, nan_objective):
    model = hf.load(ckpt[1])
    trainer, state = Trainer.create(model, _cfg(objective=nan_objective), make_mesh(1, 8, 1))
    before = _flax_by_hf_name(trainer.model(state))
    state, metrics = trainer.step(state, trainer.batch(_samples()))
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    after = _flax_by_hf_name(trainer.model(state))
    for name in before:
        assert np.array_equal(before[name], after[name]), name
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.opt_state)))


@pytest.fixture
def nan_without_votes():
    @register("nan_without_votes_for_test")
    def loss(seqs, num_samples):  # NLL, non-finite when no completion has an answer
        return jnp.where(jnp.all(seqs.answer_ids < 0), jnp.nan, -seqs.logp.mean()), {}
    yield "nan_without_votes_for_test"
    OBJECTIVES.pop("nan_without_votes_for_test")


def test_the_logged_lr_is_the_one_the_update_applied(ckpt, nan_without_votes):
    """Under warmup a skipped step applies no update, so the next one applies the rate of the update count, one
    behind the step number: the logged `lr` is that rate, and the state's step still counts every step."""
    cfg = _cfg(objective=nan_without_votes, **{"optim.warmup_steps": 4})
    trainer, state = Trainer.create(hf.load(ckpt[1]), cfg, make_mesh(devices=jax.devices()[:1]))
    logged = []
    for votes in (ANSWER_IDS, None, ANSWER_IDS):  # the second step is skipped
        state, metrics = trainer.step(state, trainer.batch(_samples(), votes))
        logged.append((int(metrics["skipped"]), float(metrics["lr"])))
    schedule = [float(trainer.schedule(k)) for k in range(3)]  # 0, lr/4, lr/2
    assert [skipped for skipped, _ in logged] == [0, 1, 0] and schedule[2] > schedule[1] > 0
    np.testing.assert_allclose([lr for _, lr in logged], [schedule[0], schedule[1], schedule[1]], rtol=1e-6)
    assert int(state.step) == 3


def test_non_finite_update_with_finite_gradient_is_skipped(ckpt):
    """lr = nan: loss and gradient are finite, the update is not; the state must stay as it was."""
    trainer, state = Trainer.create(hf.load(ckpt[1]), _cfg(**{"optim.lr": "nan"}), make_mesh(1, 8, 1))
    before = _flax_by_hf_name(trainer.model(state))
    state, metrics = trainer.step(state, trainer.batch(_samples()))
    assert int(metrics["skipped"]) == 1
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    after = _flax_by_hf_name(trainer.model(state))
    assert all(np.array_equal(before[name], after[name]) for name in before)
