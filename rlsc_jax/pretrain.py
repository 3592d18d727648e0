"""Pretrains the embedded default model: a small Qwen2 decoder taught the synthetic arithmetic task by NLL.

Everything comes from one command and one seed: a byte-level BPE tokenizer trained on pretrain-split
text, a randomly initialised `Decoder`, and supervised NLL on (plain chat prompt -> solution) pairs
whose solutions carry slips, so the model ends up right on one sample only part of the time while
the majority of many samples is right more often -- the regime RLSC needs. Fresh problems every
step; one jitted, state-donating AdamW step. Ends with a held-out report (greedy, mean@16, maj@16 at
T = 1.0 and 0.5) written beside the model.

    python -m rlsc_jax.pretrain --output rlsc_jax/assets/default_model [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from rlsc_jax import hf
from rlsc_jax.bpe import train_tokenizer
from rlsc_jax.evaluation import evaluate_problems
from rlsc_jax.logprobs import sequence_logprobs
from rlsc_jax.models import Decoder, ModelConfig
from rlsc_jax.synthetic import solution_with_slips, split_problems, split_questions
from rlsc_jax.tokenizer import chat_prompt_ids


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Tokenizer, model shape, optimisation and report settings; the defaults build the shipped model."""

    steps: int = 1200
    batch_size: int = 32
    seq_len: int = 144  # prompt + completion, padded (longest of 5000: 137 tokens; longer ones are cut)
    peak_lr: float = 1.5e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    slip_prob: float = 0.15
    seed: int = 0
    vocab_size: int = 512
    tokenizer_problems: int = 5000
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    eval_questions: int = 100
    eval_samples: int = 16
    max_new_tokens: int = 96


def build_tokenizer(cfg: PretrainConfig) -> PreTrainedTokenizerBase:
    """ChatML BPE tokenizer learned from pretrain-split questions and solutions (never the held-out text)."""
    problems = split_problems("pretrain", cfg.tokenizer_problems, seed=cfg.seed)
    return train_tokenizer([t for p in problems for t in (p.question, p.solution)], cfg.vocab_size)


def model_config(cfg: PretrainConfig, vocab_size: int) -> ModelConfig:
    """The Qwen2 shape; 256 positions hold a prompt (<= ~80 tokens) and 96 new tokens with room to spare."""
    return ModelConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                       head_dim=cfg.head_dim, rope_theta=10000.0, tie_word_embeddings=True,
                       max_position_embeddings=256)


def make_batch(tok: PreTrainedTokenizerBase, cfg: PretrainConfig, step: int) -> dict[str, np.ndarray]:
    """Step `step`'s fresh problems as right-padded [B, seq_len] ids, attention mask and completion mask."""
    problems = split_problems("pretrain", cfg.batch_size, seed=cfg.seed * 1_000_003 + step + 1)
    rng = random.Random(f"rlsc_jax.pretrain:{cfg.seed}:{step}")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = np.full((cfg.batch_size, cfg.seq_len), tok.pad_token_id, np.int32)
    attention, completion = np.zeros_like(ids), np.zeros_like(ids)
    for i, p in enumerate(problems):
        prompt = chat_prompt_ids(tok, p.question)
        answer = tok(solution_with_slips(p, rng, cfg.slip_prob), add_special_tokens=False)["input_ids"] + [end]
        row = (prompt + answer)[: cfg.seq_len]
        ids[i, : len(row)] = row
        attention[i, : len(row)] = 1
        completion[i, len(prompt): len(row)] = 1
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": completion}


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation) -> Callable:
    """The jitted step (params, opt_state), batch -> new state, loss; the state buffers are donated."""

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params)
        seq_logp, aux = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"], 1.0)
        return -seq_logp.sum() / jnp.maximum(aux["num_tokens"], 1)

    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)


def train(cfg: PretrainConfig, tok: PreTrainedTokenizerBase, progress: bool = True) -> tuple[Decoder, list[float]]:
    """Trains a fresh decoder for `cfg.steps` AdamW steps (warmup + cosine); returns it and the loss per step."""
    model = Decoder(model_config(cfg, len(tok)), dtype=jnp.float32, rngs=nnx.Rngs(cfg.seed))
    graphdef, params = nnx.split(model)
    warmup = min(cfg.warmup_steps, cfg.steps // 10)  # short runs (tests) still get a cosine phase
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.peak_lr, warmup, cfg.steps, end_value=cfg.peak_lr / 10)
    decay_matrices = lambda tree: jax.tree.map(lambda x: x.ndim > 1, tree)  # noqa: E731 (not norms or biases)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_matrices))
    step_fn = make_train_step(graphdef, optimizer)
    state, losses = (params, optimizer.init(params)), []
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    for step in bar:
        state, loss = step_fn(state, {k: jnp.asarray(v) for k, v in make_batch(tok, cfg, step).items()})
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return nnx.merge(graphdef, state[0]), losses


def heldout_report(model: Decoder, tok: PreTrainedTokenizerBase, cfg: PretrainConfig) -> dict[str, dict]:
    """Plain-template summaries on the first held-out questions: greedy, then n samples at T = 1.0 and 0.5."""
    problems = split_questions("heldout", cfg.eval_questions)
    run = functools.partial(evaluate_problems, model, tok, problems, template="plain",
                            max_new_tokens=cfg.max_new_tokens, batch_size=16, seed=cfg.seed, progress=False)
    report = {"greedy": run()[1]}
    for t in (1.0, 0.5):
        report[f"T={t}"] = run(num_samples=cfg.eval_samples, temperature=t)[1]
    return report


def loss_curve(losses: list[float], points: int = 10) -> dict[int, float]:
    """Mean training loss over each of `points` equal windows, keyed by the window's last step."""
    width = max(1, len(losses) // points)
    return {end: round(float(np.mean(losses[end - width: end])), 4) for end in range(width, len(losses) + 1, width)}


def save(model: Decoder, tok: PreTrainedTokenizerBase, path: Path, report: dict) -> None:
    """Writes weights, tokenizer, generation_config.json and the report, all or nothing (temp dir + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        hf.save(model, tmp)
        tok.save_pretrained(str(tmp))
        end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
        (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": [end, pad], "pad_token_id": pad}))
        (tmp / "pretrain_report.json").write_text(json.dumps(report, indent=2))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        if path.exists():
            path.rmdir()  # empty (checked before training)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    """CLI: pretrain, report on held-out questions, save to --output (which must be absent or empty)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        parser.error(f"{args.output}: exists and is not empty; refusing to overwrite")
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    start = time.time()
    tok = build_tokenizer(cfg)
    model, losses = train(cfg, tok)
    train_seconds = time.time() - start
    heldout = heldout_report(model, tok, cfg)
    report = {"heldout": heldout, "loss_curve": loss_curve(losses), "num_params": model.cfg.num_params,
              "train_seconds": round(train_seconds), "wall_seconds": round(time.time() - start),
              "config": dataclasses.asdict(cfg)}
    save(model, tok, args.output, report)
    print(json.dumps({k: report[k] for k in ("heldout", "loss_curve", "wall_seconds")}, indent=2))


if __name__ == "__main__":
    main()
