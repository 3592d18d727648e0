"""The training run: load, evaluate, then per step sample -> vote -> log-likelihood -> loss -> AdamW, checkpoint,
export.

Resumable: the newest complete orbax checkpoint restores the train state (params, optimizer state, RNG key; the
step is the checkpoint's), and the questions and samples of any step follow from (seed, step), so a killed run
continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
from tqdm import tqdm

from rlsc_jax import fit, hf, sharding as sharding_lib
from rlsc_jax.benchmarks import build_messages
from rlsc_jax.checkpoints import Checkpointer, preemption_notice, saved_steps
from rlsc_jax.cli import Preempted
from rlsc_jax.config import SamplingConfig, TrainConfig, to_yaml
from rlsc_jax.data import SYNTHETIC_SOURCES, load_questions, questions_for_step
from rlsc_jax.evaluation import evaluate_problems, evaluate_protocol
from rlsc_jax.fingerprint import digests
from rlsc_jax.files import atomic_write_json, atomic_write_text, exclusive_dir
from rlsc_jax.metrics import MetricsLog, SamplesLog, read_metrics
from rlsc_jax.protocols import get_protocol
from rlsc_jax.records import Journal
from rlsc_jax.run_record import check_resume, flatten, write_record
from rlsc_jax.sampling import bucket_length
from rlsc_jax.rollouts import answer_ids, answer_stats, sample_rows, sample_summary, truncated
from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids, generation_eos, load_tokenizer
from rlsc_jax.trackers import Trackers, check as check_trackers
from rlsc_jax.train_state import TrainState
from rlsc_jax.training import Trainer, rlsc_step
from rlsc_jax.validation import validate


def training_questions(cfg: TrainConfig, answer_field: str | None = None) -> list:
    """The unlabeled training questions: `data.num_questions` of `data.source` after the first `data.offset`
    (gold answers kept only with `answer_field`, for scoring)."""
    return load_questions(cfg.data.source, data_dir=cfg.data.data_dir, question_field=cfg.data.question_field,
                          num_questions=cfg.data.num_questions, offset=cfg.data.offset, answer_field=answer_field)


def heldout_questions(cfg: TrainConfig) -> list:
    """The evaluation questions: `eval.num_questions` of `eval.source`'s held-out split after the first `eval.offset`."""
    if not cfg.eval.num_questions:
        return []
    return load_questions(cfg.eval.source, data_dir=cfg.data.data_dir, split="heldout", answer_field="answer",
                          num_questions=cfg.eval.num_questions, offset=cfg.eval.offset)


def eval_budget(cfg: TrainConfig) -> int:
    """The held-out evaluation's new-token budget: `eval.max_new_tokens`, else the named protocol's for benchmark
    and JSONL sources, else (synthetic) the training budget."""
    if cfg.eval.max_new_tokens:
        return cfg.eval.max_new_tokens
    if cfg.eval.source not in SYNTHETIC_SOURCES:
        return get_protocol(cfg.eval.protocol).sampling.max_new_tokens
    return cfg.sampling.max_new_tokens


def _batch_size(cfg: TrainConfig, num_samples: int) -> int:
    """Problems per sampling call of a pass with `num_samples` samples each: the rows of the sampled pass,
    `eval.batch_size` x `eval.num_samples`, so that a greedy pass fills its calls as well. On CPU, 64 rows of the
    real 0.5B model decode at 2.3 times the cost of 16, not 4 times (docs/performance.md)."""
    return max(1, cfg.eval.batch_size * cfg.eval.num_samples // num_samples)


def sampled_metrics(model, tokenizer, cfg: TrainConfig, problems, temperature: float, *, progress: bool = False,
                    journal: Journal | None = None) -> dict:
    """mean@N / maj@N / pass@k / length of `eval.num_samples` samples per problem at `temperature` within
    `eval.max_new_tokens` (else the training budget), seeded by cfg.seed (EOS ids of the run's source checkpoint,
    `cfg.model`, whose generation config an export copies); a progress bar over the problems with `progress`; the
    records kept in `journal` (`evaluate_problems`)."""
    sampling = SamplingConfig(num_samples=cfg.eval.num_samples, temperature=temperature,
                              max_new_tokens=cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens)
    return evaluate_problems(model, tokenizer, problems, template=cfg.data.template, sampling=sampling,
                             batch_size=cfg.eval.batch_size, seed=cfg.seed, progress=progress, model_dir=cfg.model,
                             journal=journal)[1]


def evaluate(model, tokenizer, cfg: TrainConfig, problems, *, progress: bool = False,
             journal: Journal | None = None) -> dict:
    """Held-out metrics, computed the same way before and after training. Benchmark and JSONL sources: the named
    protocol `eval.protocol`. Synthetic: greedy accuracy and, with N samples at the eval temperature, mean@N /
    maj@N, mean length and `mean_token_nll` (the mean −log p of the sampled tokens, an estimate of the token
    entropy, which training logs exactly as `mean_token_entropy`); both with the fraction of completions cut at
    the budget. `progress`: a bar per decoding pass; `journal`: where each pass keeps its records."""
    if cfg.eval.source not in SYNTHETIC_SOURCES:
        protocol = get_protocol(cfg.eval.protocol)
        return evaluate_protocol(model, tokenizer, problems, cfg.eval.protocol, seed=cfg.seed,
                                 batch_size=_batch_size(cfg, protocol.sampling.num_samples), model_dir=cfg.model,
                                 max_new_tokens=eval_budget(cfg), progress=progress, journal=journal)
    _, greedy = evaluate_problems(model, tokenizer, problems, template=cfg.data.template,
                                  sampling=SamplingConfig(num_samples=1, temperature=0.0,
                                                          max_new_tokens=eval_budget(cfg)),
                                  batch_size=_batch_size(cfg, 1), seed=cfg.seed, progress=progress,
                                  model_dir=cfg.model, journal=journal)
    sampled = sampled_metrics(model, tokenizer, cfg, problems, cfg.eval.temperature, progress=progress,
                              journal=journal)
    return {"greedy_accuracy": greedy["accuracy"], **{k: v for k, v in sampled.items() if k != "accuracy"},
            "greedy_truncated_frac": greedy["truncated_frac"]}


def _evaluate_during(model, tokenizer, cfg: TrainConfig, problems, progress: bool) -> dict:
    """`evaluate`'s numbers as `eval/<metric>` keys of a step's metrics, with the seconds it took."""
    t = time.perf_counter()
    numbers = {f"eval/{k}": v for k, v in evaluate(model, tokenizer, cfg, problems, progress=progress).items()
               if isinstance(v, (int, float))}
    return numbers | {"eval_seconds": time.perf_counter() - t}


def _headline(metrics: dict) -> str:
    """The held-out accuracies among a step's `eval/` metrics, in %, for the console."""
    n = metrics.get("eval/num_samples")
    keys = ("eval/greedy_accuracy", "eval/accuracy", f"eval/mean@{n}", f"eval/maj@{n}")
    return ", ".join(f"{k[5:]} {100 * metrics[k]:.1f}%" for k in keys if k in metrics)


def _profiled(cfg: TrainConfig, step: int):
    """A `jax.profiler.trace` into <output_dir>/profile around step `step` if `profile_steps` names it (for
    TensorBoard's profile plugin or Perfetto), else nothing."""
    if step in cfg.profile_steps:
        return jax.profiler.trace(str(Path(cfg.output_dir) / "profile"))
    return contextlib.nullcontext()


def _prompt_ids(cfg: TrainConfig, tokenizer, question: str) -> list[int]:
    """A training question as the chat prompt the sampler continues."""
    system, user = build_messages(cfg.data.template, question)
    return chat_prompt_ids(tokenizer, user, system)


def _train(cfg: TrainConfig, trainer: Trainer, state: TrainState, start: int, questions, tokenizer, eos,
           ckpt: Checkpointer, log: MetricsLog, samples_log: SamplesLog, writer: bool, preempted,
           heldout: list = ()) -> TrainState:
    """Steps `start` .. `cfg.steps`: sample, score, update, evaluate on `heldout` every `eval.every` steps, log
    (metrics and samples), checkpoint. Returns the final state; once `preempted(step)` (`preemption_notice`) says
    so, it saves the step it is on and raises `Preempted`."""
    prompts, skipped_in_a_row = {}, 0
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, unit="step", disable=not writer)
    for step in bar:
        batch_questions = questions_for_step(questions, step, cfg.questions_per_step, cfg.seed, cfg.data.shuffle)
        for q in batch_questions:
            if q.id not in prompts:
                prompts[q.id] = _prompt_ids(cfg, tokenizer, q.question)
        s = cfg.sampling
        every = cfg.grad_terms_every
        with _profiled(cfg, step + 1):
            result = rlsc_step(trainer, state, [prompts[q.id] for q in batch_questions], s, eos,
                               vote=lambda tokens, lengths: answer_ids(tokenizer, tokens, lengths, s.num_samples),
                               grad_terms=every > 0 and (step == 0 or (step + 1) % every == 0))
        state, metrics = result.state, result.metrics
        cut = truncated(result.tokens, result.lengths, s.max_new_tokens, eos)
        metrics.update(answer_stats(result.votes, s.num_samples), truncated_frac=float(cut.mean()),
                       completion_length=float(result.lengths.mean()))
        if heldout and cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.steps:
            metrics.update(_evaluate_during(trainer.model(state), tokenizer, cfg, heldout, writer))
            bar.write(f"step {step + 1}: held-out {_headline(metrics)}")
        skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] else 0
        if metrics["skipped"]:
            bar.write(f"step {step + 1}: non-finite loss, gradient or update; update skipped")
        log.log(step + 1, metrics)
        if writer:
            rows = sample_rows(tokenizer, step + 1, batch_questions, [prompts[q.id] for q in batch_questions],
                               result, cut, s.num_samples)
            samples_log.log(rows)
            if cfg.show_samples_every and (step + 1) % cfg.show_samples_every == 0:
                bar.write(sample_summary(rows[0]))
        if not metrics["state_finite"]:
            raise ValueError(f"step {step + 1} made parameters or optimizer state non-finite (an overflow; try a "
                             f"lower optim.lr); nothing of it was saved, the last checkpoint is step "
                             f"{ckpt.latest_step() or 0}")
        if skipped_in_a_row >= cfg.max_skipped_steps:
            raise ValueError(f"{skipped_in_a_row} steps in a row skipped (max_skipped_steps={cfg.max_skipped_steps}): "
                             f"the run is diverging; stopped at step {step + 1} without exporting final/")
        bar.set_postfix(loss=f"{float(metrics['loss']):.4g}", tok_s=f"{metrics['tokens_per_second']:.0f}")
        stop = preempted(step + 1) and step + 1 < cfg.steps
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
            ckpt.save(step + 1, state.to_checkpoint(),
                      {"questions_seen": (step + 1) * cfg.questions_per_step, "seed": cfg.seed})
        if stop:
            bar.close()
            raise Preempted(f"preempted (SIGTERM) after step {step + 1}: checkpoint saved in {ckpt.directory}; "
                            f"run the same command again to resume")
    bar.close()
    return state


def export(model, path: Path, dtype, source: str | Path) -> None:
    """Writes `model` to `path` as an HF directory with `source`'s tokenizer files and config extras, replacing
    an older export there only once the new one is complete (a run resumed past its last export must not leave
    the older weights in final/)."""
    if not path.exists():
        hf.save(model, path, dtype=dtype, source=source)
        return
    fresh, stale = path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")
    for leftover in (fresh, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    hf.save(model, fresh, dtype=dtype, source=source)
    if jax.process_index() == 0:
        path.rename(stale)
        fresh.rename(path)
        shutil.rmtree(stale)


def _eval_settings(cfg: TrainConfig) -> dict:
    """What the held-out evaluation's numbers depend on besides the weights."""
    return {"eval": dataclasses.asdict(cfg.eval), "template": cfg.data.template,
            "max_new_tokens": cfg.sampling.max_new_tokens, "seed": cfg.seed}


def _journal(out: Path, record: dict, name: str, weights: str) -> Journal | None:
    """Where held-out evaluation `name` keeps its records as they land (`<name>-<pass>.jsonl`), so that an
    interrupted one resumes: keyed by the run's record (trajectory settings, model files) and `weights`, the
    model it scores. None across processes, which must all skip the same problems."""
    if jax.process_count() > 1:
        return None
    return Journal(out / name, {"weights": weights, "settings": record["settings"],
                                "model_files": digests(record["model_files"])})


def _saved_before(out: Path, cfg: TrainConfig) -> dict | None:
    """The base model's held-out metrics saved by an earlier invocation with the same evaluation settings."""
    path = out / "eval_before.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved.get("metrics") if saved.get("settings") == _eval_settings(cfg) else None


def prepare(cfg: TrainConfig) -> tuple[list, list, jax.sharding.Mesh]:
    """Every check that needs no weights loaded and no file written: config values, the model's config.json
    and tensor headers, the data, the mesh. Returns (questions, held-out questions, mesh)."""
    validate(cfg)
    check_trackers(cfg.trackers)
    hf.check(cfg.model)
    questions = training_questions(cfg)
    heldout = heldout_questions(cfg)
    mesh = sharding_lib.make_run_mesh(cfg)
    platform = mesh.devices.flat[0].platform
    needs = {"cudnn": ("gpu", "NVIDIA GPUs"), "splash": ("tpu", "TPUs")}.get(cfg.attention)
    if needs and platform != needs[0]:
        raise ValueError(f"attention={cfg.attention} needs {needs[1]}; this run's devices are {platform} "
                         f"(use attention=xla)")
    return questions, heldout, mesh


def run(cfg: TrainConfig, before: dict | None = None) -> dict:
    """Trains per `cfg`; returns {"before": ..., "after": ..., "steps": ...}. Process 0 writes the outputs.

    `before` (the base model's held-out metrics, when the caller has them) skips the "before" evaluation.
    """
    checked = prepare(cfg)
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            stack.enter_context(exclusive_dir(cfg.output_dir, "output_dir"))
        return _run(cfg, before, *checked, stack)


def _fit_memory(cfg: TrainConfig, trainer: Trainer, state: dict, questions, tokenizer) -> Trainer:
    """`remat: auto` resolved for the longest batch these questions make (`rlsc_jax.fit`), and said."""
    longest = max(len(_prompt_ids(cfg, tokenizer, q.question)) for q in questions)
    memory = fit.device_memory_bytes()
    trainer, tried = fit.fit(trainer, state, cfg.questions_per_step * cfg.sampling.num_samples,
                             bucket_length(longest), cfg.sampling.max_new_tokens, memory)
    print(fit.report(trainer, tried, memory))
    return trainer


def _run(cfg: TrainConfig, before: dict | None, questions: list, heldout: list, mesh: jax.sharding.Mesh,
         stack: contextlib.ExitStack) -> dict:
    """`run` once `prepare` has checked the input and process 0 holds the output dir: resuming, the output
    dir's run must have had the same settings. The trackers start once that is known and close with `stack`."""
    out = Path(cfg.output_dir)
    resuming = bool(saved_steps(out / "checkpoints"))
    record = check_resume(out, cfg, resuming)
    writer = jax.process_index() == 0
    if writer:
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
        write_record(out, record)
    trackers = stack.enter_context(Trackers(cfg.trackers, out, cfg.tracker_project,
                                            flatten(dataclasses.asdict(cfg)))) if writer else None
    tokenizer = load_tokenizer(cfg.model)
    eos = eos_ids(tokenizer, generation_eos(cfg.model))
    # No name holds the loaded module: its parameters are the initial state's, which a resume replaces and the first
    # step donates, and a reference here would keep a second copy of them for the whole run (2.4 GB for the 0.5B).
    trainer, state = Trainer.create(hf.load(cfg.model, dtype=cfg.dtype, compute_dtype=cfg.compute_dtype, mesh=mesh,
                                            rules=cfg.mesh.rules), cfg, mesh)
    if cfg.remat == "auto":
        trainer = _fit_memory(cfg, trainer, state, questions, tokenizer)
    if heldout:
        if before is None and resuming:
            before = _saved_before(out, cfg)
        if before is None:
            before = evaluate(trainer.model(state), tokenizer, cfg, heldout, progress=writer,
                              journal=_journal(out, record, "eval_before", "the base model"))
        if writer:
            atomic_write_json(out / "eval_before.json", {"settings": _eval_settings(cfg), "metrics": before})
    ckpt = Checkpointer(out / "checkpoints", cfg.keep_checkpoints)
    start, restored, meta = ckpt.restore_latest(state.to_checkpoint())
    if start:
        state = state.from_checkpoint(restored, start)
        print(f"resuming from step {start} ({meta['questions_seen']} questions seen)")
    del restored  # the state holds these arrays now; `del state` below must be able to free them
    if trackers is not None and heldout and not start:
        trackers.log(0, {f"eval/{k}": v for k, v in before.items()})
    log, samples_log = MetricsLog(out, resume_step=start, trackers=trackers), SamplesLog(out, resume_step=start)
    try:
        with preemption_notice() as preempted:
            state = _train(cfg, trainer, state, start, questions, tokenizer, eos, ckpt, log, samples_log,
                           writer, preempted, heldout)
    finally:  # also on an error or Ctrl-C: pending checkpoint writes finish, so the last one is never lost
        log.close()
        samples_log.close()
        ckpt.close()
    final = trainer.model(state)
    del state  # Adam's moments, twice the parameters, are not needed by the export and the after-evaluation
    if cfg.export_final and (start < cfg.steps or not (out / "final").exists()):
        export(final, out / "final", cfg.export_dtype or None, cfg.model)
    result = {"steps": cfg.steps, "before": before if heldout else None}
    if heldout:
        result["after"] = evaluate(final, tokenizer, cfg, heldout, progress=writer,
                                   journal=_journal(out, record, "eval_after", f"step {cfg.steps}"))
        if writer:
            atomic_write_json(out / "eval_after.json", {"settings": _eval_settings(cfg), "metrics": result["after"]})
            trackers.log(cfg.steps, {f"eval/{k}": v for k, v in result["after"].items()})
    if writer and cfg.plot:
        from rlsc_jax.plotting import plot_run
        plot_run(read_metrics(out), result, out / "curves.png")
    return result
