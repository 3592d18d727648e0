"""Gradient diagnostics of a label-free objective: how much of one question's gradient is signal, and how much
of it other questions share.

    python -m rlsc_jax.diagnostics [--questions 8] [--draws 32] [--output FILE] [key=value ...]
    python -m rlsc_jax.diagnostics --logp [--questions 8] [--threshold -30] [--output FILE] [key=value ...]

For each of the first `--questions` training questions (same config keys as train.py), draws `--draws`
independent sets of N completions and takes the objective's gradient on each set. Per question it reports

- `signal`: ‖E g‖², the squared norm of the expected gradient (bias-corrected for the finite draws);
- `noise`: E‖g − E g‖², the mean squared deviation of one set's gradient from it; `snr` = signal / noise;

and across questions `mean_cosine`, the mean pairwise cosine between the questions' mean gradients. A
cosine near 0 says every question pulls the parameters its own way: an update from one question is
almost all question-specific, and only the average over many questions points a shared way.
Memory: two gradient-sized buffers (running sums), whatever the number of draws and questions.

With `--logp` it instead samples N completions of each question as a training step would (sampling.*) and
reports where their sequence log p lies (`evaluation.logprob_profile`: median, the fraction below
`--threshold`, the fraction whose p_old underflows to 0 in fp32), with their mean@N and maj@N: whether the
task is in the long-answer regime, where RLSC's p_old ≈ 0 and L2 is α · NLL of the model's own samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rlsc_jax.benchmarks import build_messages
from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.config import TrainConfig, load_config
from rlsc_jax.data import load_questions
from rlsc_jax.files import atomic_write_json, check_writable
from rlsc_jax.rollouts import answer_ids

# JAX and the modules built on it are imported in the functions that use them, so that `--help` answers at once.


def summarize(draw_dots: list[list[float]], sum_dots: list[float], unit_sum_sq: float) -> dict:
    """Per-question signal / noise / SNR and the mean cross-question cosine, from streamed inner products.

    draw_dots[q] holds ‖g_k‖² of each draw k of question q; sum_dots[q] = ‖Σ_k g_k‖²; unit_sum_sq is
    ‖Σ_q G_q / ‖G_q‖‖² over the questions' mean gradients G_q, which equals Q + Σ_{q≠q'} cos(G_q, G_q').
    """
    per_question = []
    for dots, total in zip(draw_dots, sum_dots):
        k = len(dots)
        mean_sq = total / k ** 2  # ‖G‖², G = Σ g_k / k
        noise = (sum(dots) - k * mean_sq) / (k - 1)  # unbiased E‖g − E g‖²
        signal = mean_sq - noise / k  # ‖G‖² overestimates ‖E g‖² by noise / k
        per_question.append({"signal": signal, "noise": noise, "snr": signal / noise if noise > 0 else float("inf")})
    q = len(per_question)
    cosine = (unit_sum_sq - q) / (q * (q - 1)) if q > 1 else float("nan")
    return {"questions": per_question, "median_snr": float(np.median([p["snr"] for p in per_question])),
            "mean_cosine": cosine}


def _load(cfg: TrainConfig, mesh):
    """(model, tokenizer) as train.py loads them: dtypes and axis rules from `cfg`, on `mesh`."""
    from rlsc_jax import hf
    from rlsc_jax.tokenizer import load_tokenizer
    model = hf.load(cfg.model, dtype=cfg.dtype, compute_dtype=cfg.compute_dtype, mesh=mesh, rules=cfg.mesh.rules)
    return model, load_tokenizer(cfg.model)


def gradient_statistics(cfg: TrainConfig, num_questions: int, draws: int, progress: bool = True) -> dict:
    """Samples `draws` sets of N completions for each of the first `num_questions` questions and summarises
    the objective's gradients (see the module doc)."""
    if num_questions < 2 or draws < 2:
        raise ValueError(f"need at least 2 questions and 2 draws (got {num_questions} and {draws})")
    import jax
    import optax
    from tqdm import tqdm

    from rlsc_jax import sharding as sharding_lib
    from rlsc_jax.sampling import sample
    from rlsc_jax.tokenizer import chat_prompt_ids, eos_ids, generation_eos
    from rlsc_jax.training import Trainer

    mesh = sharding_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    sharding_lib.check_rows(cfg.sampling.num_samples, "sampling.num_samples", "per gradient", mesh,
                            sharding_lib.axis_rules(cfg.mesh.rules))
    model, tokenizer = _load(cfg, mesh)
    eos = eos_ids(tokenizer, generation_eos(cfg.model))
    questions = load_questions(cfg.data.source, data_dir=cfg.data.data_dir, question_field=cfg.data.question_field,
                               num_questions=num_questions, offset=cfg.data.offset)
    trainer, state = Trainer.create(model, cfg, mesh)
    params, s = state.params, cfg.sampling
    grad = jax.jit(lambda p, batch: trainer.loss_and_grads(p, batch, trainer.temperature)[-1])  # the train step's gradient
    add, sq_norm = jax.jit(optax.tree.add), jax.jit(lambda t: optax.tree.vdot(t, t))
    policy, unit_sum = trainer.model(state), optax.tree.zeros_like(params)
    draw_dots, sum_dots = [], []
    key = jax.random.key(cfg.seed)
    for qi, question in enumerate(tqdm(questions[:num_questions], unit="question", disable=not progress)):
        system, user = build_messages(cfg.data.template, question.question)
        prompt = chat_prompt_ids(tokenizer, user, system)
        total, dots = optax.tree.zeros_like(params), []
        for k in range(draws):
            samples = sample(policy, [prompt], num_samples=s.num_samples,
                             max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p, eos_ids=eos, seed=jax.random.fold_in(key, qi * draws + k))
            votes = answer_ids(tokenizer, sharding_lib.to_host(samples.tokens), sharding_lib.to_host(samples.lengths),
                               s.num_samples)
            g = grad(params, trainer.batch(samples, votes))
            dots.append(float(sq_norm(g)))
            total = add(total, g)
        norm_sq = float(sq_norm(total))
        unit_sum = add(unit_sum, optax.tree.scale(1 / np.sqrt(norm_sq), total))
        draw_dots.append(dots)
        sum_dots.append(norm_sq)
    return summarize(draw_dots, sum_dots, float(sq_norm(unit_sum)))


def logprob_statistics(cfg: TrainConfig, num_questions: int, threshold: float = -30.0, progress: bool = True) -> dict:
    """The first `num_questions` training questions, N samples each as training draws them (temperature, top-k,
    top-p, budget, seed): their `logprob_profile` and, where the source has gold answers, mean@N / maj@N."""
    if num_questions < 1:
        raise ValueError(f"need at least 1 question (got {num_questions})")
    from rlsc_jax import sharding as sharding_lib
    from rlsc_jax.evaluation import evaluate_problems, logprob_profile

    model, tokenizer = _load(cfg, sharding_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    questions = load_questions(cfg.data.source, data_dir=cfg.data.data_dir, question_field=cfg.data.question_field,
                               num_questions=num_questions, offset=cfg.data.offset)[:num_questions]
    records, summary = evaluate_problems(model, tokenizer, questions, template=cfg.data.template,
                                         sampling=cfg.sampling, batch_size=cfg.eval.batch_size, seed=cfg.seed,
                                         progress=progress, model_dir=cfg.model)
    return {"seq_logp": logprob_profile(records, threshold), "samples": summary}


def main(argv: list[str] | None = None) -> int:
    """0; bad input is one `error:` line and 2 before anything loads (the --output path included), Ctrl-C one
    line and 130."""
    p = argparse.ArgumentParser(prog=prog("diagnostics"), description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config file (as for train.py)")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--output", type=Path, help="also write the statistics as JSON here")
    p.add_argument("--logp", action="store_true", help="profile the samples' log p instead of the gradients")
    p.add_argument("--threshold", type=float, default=-30.0, help="--logp: report the fraction of log p below this")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    def diagnose() -> None:
        if args.output:
            check_writable(args.output, "--output")
        (_logp if args.logp else _gradients)(args, load_config(args.config, args.overrides))

    return run_command(diagnose, "interrupted")[0]


def _gradients(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Print (and optionally write) the gradient statistics."""
    stats = gradient_statistics(cfg, args.questions, args.draws)
    for i, q in enumerate(stats["questions"]):
        print(f"question {i}: signal {q['signal']:.4g}  noise {q['noise']:.4g}  snr {q['snr']:.3f}")
    print(f"median snr {stats['median_snr']:.3f}; mean cosine between questions' mean gradients "
          f"{stats['mean_cosine']:.4f}")
    if args.output:
        atomic_write_json(args.output, stats)


def _logp(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """`--logp`: print (and optionally write) the sampled log p profile."""
    stats = logprob_statistics(cfg, args.questions, args.threshold)
    lp, n = stats["seq_logp"], cfg.sampling.num_samples
    print(f"{lp['samples']} samples at T = {cfg.sampling.temperature}: log p median {lp['median']:.1f} "
          f"(10%: {lp['q10']:.1f}, 90%: {lp['q90']:.1f}); below {lp['threshold']:g}: {lp['below_threshold_frac']:.3f}; "
          f"p_old underflows to 0: {lp['p_old_underflow_frac']:.3f}; mean length {stats['samples']['mean_length']:.1f}")
    if f"mean@{n}" in stats["samples"]:
        print(f"mean@{n} {stats['samples'][f'mean@{n}']:.3f}, maj@{n} {stats['samples'][f'maj@{n}']:.3f}")
    if args.output:
        atomic_write_json(args.output, stats)


def cli() -> None:
    """`python -m rlsc_jax.diagnostics`."""
    exit_process(main())


if __name__ == "__main__":
    cli()
