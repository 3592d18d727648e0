"""Label-free training: optimizer, sharded train state, the jitted step, and one whole step (`rlsc_step`).

One step (docs/method.md, "One RLSC step"): the sampler draws N completions per question, the fused
log-likelihood pass gives each completion's log p, summed token entropy and self-certainty at the sampling
temperature (the trainer's own: it is the only temperature a step scores at), the registered objective
(RLSC L1/L2, TTRL, ...) turns them and the host's answer votes into a loss, and AdamW updates the parameters.
Parameters and optimizer state are sharded by their logical axes under the model's rules and donated to the
step; the batch's rows are sharded over the rules' batch axes (default: data, fsdp).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from rlsc_jax import sharding as sharding_lib
from rlsc_jax.config import OptimConfig, SamplingConfig, TrainConfig
from rlsc_jax.logprobs import sequence_logprobs
from rlsc_jax.models.decoder import ATTENTION
from rlsc_jax.objectives import DIFFERENTIABLE, SequenceStats, bind_checked, bind_terms
from rlsc_jax.sampling import Samples, sample
from rlsc_jax.train_state import TrainState


@struct.dataclass
class Batch:
    """One step's inputs, int32 global arrays with rows split over the batch axes; a question's N rows adjacent.

    prompt_ids, prompt_mask: [rows, prompt_width], left-padded prompts (mask 1 on real tokens).
    tokens, completion_mask: [rows, completion_width], completions (mask 1 up to and including the first EOS).
    answer_ids: [rows], each completion's answer class within its question (0 = majority, -1 = none).
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    completion_mask: jax.Array
    answer_ids: jax.Array


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW on every parameter (as torch.optim.AdamW), with optional warmup/cosine and clipping."""
    if cfg.schedule == "constant":
        schedule = optax.constant_schedule(cfg.lr)
        if cfg.warmup_steps:
            schedule = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), schedule],
                                            [cfg.warmup_steps])
    elif cfg.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, max(total_steps, 1))
    else:
        raise ValueError(f"optim.schedule {cfg.schedule!r}: expected 'constant' or 'cosine'")
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw
    return tx, schedule


def trimmed_width(used: int, total: int, parts: int = 8) -> int:
    """The smallest multiple of total/parts (rounded up) that holds `used` columns, at most `total`.

    Rounding to eighths of the sampler's width bounds the number of step shapes, hence of compilations.
    """
    step = -(-total // parts)
    return min(total, max(step, -(-used // step) * step))


def _used_columns(mask: np.ndarray) -> int:
    """1 + the last column index holding a 1 in any row of a host [rows, width] mask (0 if none)."""
    hit = np.flatnonzero(np.asarray(mask).any(axis=0))
    return int(hit[-1]) + 1 if hit.size else 0


def _step_count(opt_state) -> jax.Array:
    """Updates applied so far, read from the optimizer state (the schedule's step)."""
    return optax.tree_utils.tree_get_all_with_path(opt_state, "count")[0][1]


def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of `tree` is finite everywhere (a scalar bool)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all()


def objective_fn(cfg: TrainConfig) -> Callable:
    """The config's objective with its hyper-parameters bound (checked on the step's shape)."""
    return bind_checked(cfg.objective, cfg.sampling.num_samples, cfg.questions_per_step * cfg.sampling.num_samples,
                        **dataclasses.asdict(cfg.objective_args))


def objective_terms(cfg: TrainConfig) -> dict[str, Callable]:
    """The config objective's named summands (rlsc_l2: "p_old", "alpha") with its hyper-parameters bound."""
    return bind_terms(cfg.objective, **dataclasses.asdict(cfg.objective_args))


@dataclasses.dataclass(kw_only=True)
class Trainer:
    """Holds the static pieces (graph, optimizer, shardings) and the jitted step over a mesh; the state it steps
    is a `TrainState`."""

    graphdef: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: jax.sharding.Mesh
    state_shardings: TrainState  # of shardings
    objective: Callable
    num_samples: int
    grad_accum: int
    remat: str | None
    chunk_size: int
    temperature: float  # the sampling temperature, at which every step scores its completions
    rules: sharding_lib.Rules  # the model's logical-axis rules: its parameters', the batch's and the step's shardings
    terms: dict[str, Callable] = dataclasses.field(default_factory=dict)  # the objective's summands, by name
    attention: str | None = None  # `jax.nn.dot_product_attention`'s implementation for the step (None: the model's own)

    @classmethod
    def create(cls, model: nnx.Module, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> tuple[Trainer, TrainState]:
        """Builds the trainer and its initial state (step 0, the model's parameters, fresh optimizer state, the
        key of `cfg.seed`) placed on the mesh by the model's logical-axis rules (`Decoder.rules`); the step keeps
        that placement.

        For an abstract model (`nnx.eval_shape`) the state is abstract too: `jax.ShapeDtypeStruct`s that
        carry their shardings, enough to lower and compile the step without allocating anything.
        """
        tx, schedule = make_optimizer(cfg.optim, cfg.steps)
        graphdef, params = nnx.split(model)
        param_sh = sharding_lib.param_shardings(params, mesh, model.rules)
        opt_sh = optax.tree_map_params(
            tx, lambda _, s: s, jax.eval_shape(tx.init, params), param_sh,
            transform_non_params=lambda _: sharding_lib.replicated(mesh),
            is_leaf=lambda x: isinstance(x, nnx.Variable))
        replicated = sharding_lib.replicated(mesh)
        shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
        key = jax.random.key(cfg.seed)
        if isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct):
            shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                                opt_state=jax.eval_shape(tx.init, params), rng=jax.eval_shape(lambda: key))
            state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
        else:
            params = jax.device_put(params, param_sh)
            state = TrainState(step=jax.device_put(np.int32(0), replicated), params=params,
                               opt_state=jax.jit(tx.init, out_shardings=opt_sh)(params),
                               rng=jax.device_put(key, replicated))
        trainer = cls(graphdef=graphdef, tx=tx, schedule=schedule, mesh=mesh, state_shardings=shardings,
                      objective=objective_fn(cfg), num_samples=cfg.sampling.num_samples, grad_accum=cfg.grad_accum,
                      remat=cfg.remat_policy if cfg.remat is True else None,
                      chunk_size=cfg.logprob_chunk * sharding_lib.row_shards(mesh, model.rules),
                      temperature=cfg.sampling.temperature, rules=model.rules, terms=objective_terms(cfg),
                      attention=ATTENTION[cfg.attention])
        return trainer, state

    def model(self, state: TrainState) -> nnx.Module:
        """A module view of the current parameters (no copy), for sampling and export."""
        return nnx.merge(self.graphdef, state.params)

    def batch(self, samples: Samples, answer_ids: np.ndarray | None = None) -> Batch:
        """Training inputs from samples as global arrays sharded over rows (prompt parts come from the host).

        answer_ids [rows] (host): each completion's answer class, numbered by votes within its question
        (`rlsc_jax.grading.answer_classes`: 0 = majority, −1 = none); None means no completion has an answer.
        Columns that are padding in every row are cut (the prompt's leftmost, the completion's rightmost):
        the step is the same, and costs what the longest answer needs rather than `max_new_tokens`.
        """
        rows = sharding_lib.batch_sharding(self.mesh, self.rules, 2)
        prompt_width = samples.prompt_mask.shape[1]
        completion_width = samples.completion_mask.shape[1]
        cut = prompt_width - trimmed_width(_used_columns(samples.prompt_mask[:, ::-1]), prompt_width)
        keep = trimmed_width(_used_columns(sharding_lib.to_host(samples.completion_mask)), completion_width)

        def completion_columns(value):  # the sampler's global arrays stay on the devices; host arrays are copied
            if isinstance(value, jax.Array):
                return jax.device_put(jax.lax.slice_in_dim(value, 0, keep, axis=1), rows)
            return sharding_lib.host_to_global(np.asarray(value)[:, :keep], rows)
        if answer_ids is None:
            answer_ids = np.full(samples.completion_mask.shape[0], -1)
        return Batch(prompt_ids=sharding_lib.host_to_global(samples.prompt_ids[:, cut:], rows),
                     prompt_mask=sharding_lib.host_to_global(samples.prompt_mask[:, cut:], rows),
                     tokens=completion_columns(samples.tokens),
                     completion_mask=completion_columns(samples.completion_mask),
                     answer_ids=sharding_lib.host_to_global(np.asarray(answer_ids, np.int32),
                                                            sharding_lib.batch_sharding(self.mesh, self.rules, 1)))

    def _stats(self, params, batch: Batch, temperature) -> SequenceStats:
        """Every completion's log p, summed token entropy and self-certainty (at the sampling temperature),
        token count and answer class: what an objective reads."""
        model = nnx.merge(self.graphdef, params)
        ids = jnp.concatenate([batch.prompt_ids, batch.tokens], axis=1)
        attention = jnp.concatenate([batch.prompt_mask, batch.completion_mask], axis=1)
        loss_mask = jnp.concatenate([jnp.zeros_like(batch.prompt_mask), batch.completion_mask], axis=1)
        logp, aux = sequence_logprobs(model, ids, attention, loss_mask, temperature, remat=self.remat,
                                      chunk_size=self.chunk_size, fused_attention=self.attention)
        return SequenceStats(logp, aux["entropy"], aux["certainty"], aux["lengths"], batch.answer_ids)

    def loss_and_grads(self, params, batch, temperature, objective: Callable | None = None):
        """Loss, metrics, the per-sequence stats and gradients of `objective` (default: the trainer's); with
        grad_accum > 1, exact accumulation over row micro-batches.

        Accumulation first scores every row without gradients and evaluates the objective on the whole
        batch (so group statistics span each question's N samples whichever micro-batch holds them), takes
        dL/dx_i for each differentiable per-sequence x (log p, entropy, self-certainty), then
        back-propagates Σ_i Σ_x (dL/dx_i) x_i one micro-batch at a time: exact for any objective.
        """
        objective_of = objective or self.objective

        def loss_fn(p):
            stats = self._stats(p, batch, temperature)
            loss, metrics = objective_of(stats, self.num_samples)
            return loss, (metrics, stats)

        if self.grad_accum == 1:
            (loss, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return loss, metrics, stats, grads

        def to_micro(x):  # micro-batch m holds rows m, m + G, m + 2G, ...: each device keeps its rows
            return x.reshape(-1, self.grad_accum, *x.shape[1:]).swapaxes(0, 1)

        micro = self._constrain_micro(jax.tree.map(to_micro, batch))
        rows_order = lambda x: x.swapaxes(0, 1).reshape(-1)  # noqa: E731  [G, R/G] -> the batch's row order
        stats = jax.tree.map(rows_order, jax.lax.map(lambda mb: self._stats(params, mb, temperature), micro))

        def batch_objective(diff):
            return objective_of(dataclasses.replace(stats, **diff), self.num_samples)
        (loss, metrics), coef = jax.value_and_grad(batch_objective, has_aux=True)(
            {k: getattr(stats, k) for k in DIFFERENTIABLE})

        def accumulate(acc, xs):
            mb, c = xs

            def surrogate(p):
                mb_stats = self._stats(p, mb, temperature)
                return sum(jnp.sum(c[k] * getattr(mb_stats, k)) for k in DIFFERENTIABLE)
            return jax.tree.map(jnp.add, acc, jax.grad(surrogate)(params)), None
        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(accumulate, zeros, (micro, jax.tree.map(to_micro, coef)))
        return loss, metrics, stats, grads

    def _constrain_micro(self, micro):
        """Keeps each micro-batch's rows sharded over the batch axes."""
        spec = jax.sharding.NamedSharding(self.mesh,
                                          jax.sharding.PartitionSpec(None, sharding_lib.batch_axes(self.rules)))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), micro)

    def _step(self, state, batch, temperature):
        """One AdamW step; a non-finite loss, gradient or learning rate leaves the state untouched and is
        reported (`skipped`), and `state_finite` says whether every parameter and moment is finite after it.

        Choosing between the old and new state on the new state's own finiteness would materialise the
        update next to the donated state (+2.4 GiB of temp on the 0.5B step), so that rarer case (an
        overflow in the update or in Adam's second moment) is only reported: the run stops before
        checkpointing it. Reading the output for the check costs no memory.
        """
        params, opt_state = state.params, state.opt_state
        loss, metrics, stats, grads = self.loss_and_grads(params, batch, temperature)
        grad_norm = optax.global_norm(grads)
        updates, new_opt = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        lr = self.schedule(_step_count(opt_state))  # the rate this update applies: updates so far, not steps
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(lr)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        state = TrainState(step=state.step + 1, params=keep(new_params, params), opt_state=keep(new_opt, opt_state),
                           rng=state.rng)
        tokens = stats.num_tokens.sum()
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=lr, num_tokens=tokens,
                       mean_token_entropy=stats.entropy.sum() / jnp.maximum(tokens, 1.0),
                       mean_self_certainty=stats.certainty.sum() / jnp.maximum(tokens, 1.0),
                       skipped=(~finite).astype(jnp.int32), state_finite=all_finite(state).astype(jnp.int32))
        return state, metrics

    def _batch_shardings(self) -> Batch:
        """Every batch array split over rows: [rows, width] token arrays and the [rows] answer classes."""
        rows = sharding_lib.batch_sharding(self.mesh, self.rules, 2)
        classes = sharding_lib.batch_sharding(self.mesh, self.rules, 1)
        return Batch(prompt_ids=rows, prompt_mask=rows, tokens=rows, completion_mask=rows, answer_ids=classes)

    @functools.cached_property
    def _jitted_step(self):
        """`_step` jitted once with explicit shardings; the train state is donated (updated in place)."""
        replicated = sharding_lib.replicated(self.mesh)
        return jax.jit(self._step, donate_argnums=(0,),
                       in_shardings=(self.state_shardings, self._batch_shardings(), replicated),
                       out_shardings=(self.state_shardings, replicated))

    def compile_step(self, state: TrainState, rows: int, prompt_width: int,
                     completion_width: int) -> jax.stages.Compiled:
        """The step compiled for a batch of `rows` x (prompt + completion) tokens, without running it.

        `state` may be abstract (see `create`); `memory_analysis()` and `cost_analysis()` of the result
        are XLA's per-device bytes and FLOPs for that shape.
        """
        return self.lower_step(state, rows, prompt_width, completion_width).compile()

    def lower_step(self, state: TrainState, rows: int, prompt_width: int, completion_width: int) -> jax.stages.Lowered:
        """The step lowered for that batch shape: its StableHLO (`as_text()`) carries every sharding it sets."""
        shapes = Batch(prompt_ids=(rows, prompt_width), prompt_mask=(rows, prompt_width),
                       tokens=(rows, completion_width), completion_mask=(rows, completion_width), answer_ids=(rows,))
        batch = jax.tree.map(lambda shape, sh: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sh), shapes,
                             self._batch_shardings(), is_leaf=lambda x: isinstance(x, tuple))
        temperature = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding_lib.replicated(self.mesh))
        with sharding_lib.use_mesh(self.mesh):
            return self._jitted_step.lower(state, batch, temperature)

    def step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        """One jitted, sharded, donated step (compiled once per batch shape), scoring at the sampling temperature."""
        temp = sharding_lib.host_to_global(np.float32(self.temperature), sharding_lib.replicated(self.mesh))
        with sharding_lib.use_mesh(self.mesh):
            return self._jitted_step(state, batch, temp)

    def gradient_terms(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """The gradient norm of each summand of the loss ("grad_norm_<term>_term") and, for two, their cosine
        ("grad_terms_cosine"), at `state` on `batch`; {} for an objective without summands. One gradient each."""
        if not self.terms:
            return {}
        temp = sharding_lib.host_to_global(np.float32(self.temperature), sharding_lib.replicated(self.mesh))
        with sharding_lib.use_mesh(self.mesh):
            return self._jitted_terms(state.params, batch, temp)

    @functools.cached_property
    def _jitted_terms(self):
        """`gradient_terms`' computation, jitted: each summand through `loss_and_grads` (exact under grad_accum)."""
        def norms(params, batch, temperature):
            grads = [self.loss_and_grads(params, batch, temperature, objective=fn)[-1] for fn in self.terms.values()]
            out = {f"grad_norm_{name}_term": optax.global_norm(g) for name, g in zip(self.terms, grads)}
            if len(grads) == 2:
                dot = sum(jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))
                          for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])))
                out["grad_terms_cosine"] = dot / jnp.maximum(optax.global_norm(grads[0]) * optax.global_norm(grads[1]),
                                                             jnp.finfo(jnp.float32).tiny)
            return out
        replicated = sharding_lib.replicated(self.mesh)
        return jax.jit(norms, in_shardings=(self.state_shardings.params, self._batch_shardings(), replicated),
                       out_shardings=replicated)


@dataclasses.dataclass
class StepResult:
    """What one RLSC step hands back: the new state, its metrics (host scalars), and host copies of the
    completions ([rows, max_new_tokens] int32 tokens, [rows] lengths), their answer votes ([rows] int32) and
    log p at the sampling temperature as drawn ([rows] float32)."""

    state: TrainState
    metrics: dict
    tokens: np.ndarray
    lengths: np.ndarray
    votes: np.ndarray
    logps: np.ndarray


def rlsc_step(trainer: Trainer, state: TrainState, prompts: list[list[int]], sampling: SamplingConfig,
              eos_ids: list[int], vote: Callable[[np.ndarray, np.ndarray], np.ndarray],
              grad_terms: bool = False) -> StepResult:
    """One step of the method (docs/method.md): N completions per prompt drawn with the state's `sample_key()`
    at the sampling temperature, their final
    answers voted on the host (`vote(tokens, lengths)`), every completion scored at that same temperature, the
    objective's loss and one AdamW update; each phase timed. `grad_terms` adds `Trainer.gradient_terms` of the
    step's batch at the parameters the update starts from."""
    t0 = time.perf_counter()
    samples = sample(trainer.model(state), prompts, num_samples=sampling.num_samples,
                     max_new_tokens=sampling.max_new_tokens, temperature=trainer.temperature, top_k=sampling.top_k,
                     top_p=sampling.top_p, eos_ids=eos_ids, seed=state.sample_key())
    tokens, lengths = sharding_lib.to_host(samples.tokens), sharding_lib.to_host(samples.lengths)
    t1 = time.perf_counter()
    votes = vote(tokens, lengths)
    t2 = time.perf_counter()
    batch = trainer.batch(samples, votes)
    terms, terms_seconds = {}, 0.0
    if grad_terms:  # before the update, which donates the state
        t = time.perf_counter()
        terms = jax.device_get(trainer.gradient_terms(state, batch))
        terms_seconds = time.perf_counter() - t
    state, metrics = trainer.step(state, batch)
    metrics = {**jax.device_get(metrics), **terms}
    t3 = time.perf_counter()
    total_tokens = int(samples.prompt_mask.sum() + lengths.sum())
    metrics.update(sample_seconds=t1 - t0, vote_seconds=t2 - t1, train_seconds=t3 - t2 - terms_seconds,
                   tokens_per_second=total_tokens / (t3 - t0 - terms_seconds))
    if grad_terms:
        metrics["grad_terms_seconds"] = terms_seconds
    logps = sharding_lib.to_host(jnp.sum(samples.logprobs * samples.completion_mask, axis=1))
    return StepResult(state, metrics, tokens, lengths, votes, logps)
