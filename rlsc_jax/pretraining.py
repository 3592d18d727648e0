"""The work of `python -m rlsc_jax.pretrain`: a small Qwen2 decoder taught a synthetic arithmetic task by NLL.

Everything comes from one command and one seed: a byte-level BPE tokenizer trained on pretrain-split
text, a randomly initialised `Decoder`, and supervised NLL on (plain chat prompt -> solution) pairs
whose solutions carry slips, so the model ends up right on one sample only part of the time while
the majority of many samples is right more often -- the regime RLSC needs. Fresh problems every
step; one jitted, state-donating AdamW step. Ends with a held-out report (greedy, then mean@16, maj@16
and the samples' log p profile at each report temperature) written beside the model.

    python -m rlsc_jax.pretrain --output rlsc_jax/assets/default_model [--steps N] [--seed S]
    python -m rlsc_jax.pretrain --task long --output rlsc_jax/assets/long_model

`--task long` is the long-answer task (`rlsc_jax.synthetic_long`) with its own defaults (`TASK_DEFAULTS`): it
starts from the shipped default model's weights (`--init default`; its embedding carried over to the long
task's own tokenizer by `warm_start`), which already copies operands and adds, and learns the long format.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
import tempfile
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
from rlsc_jax.config import DEFAULT_MODEL, SamplingConfig
from rlsc_jax.evaluation import evaluate_problems, logprob_profile
from rlsc_jax.logprobs import sequence_logprobs
from rlsc_jax.models import Decoder, ModelConfig
from rlsc_jax.pretrain_config import PretrainConfig, report_temperatures
from rlsc_jax.synthetic_splits import split_problems, split_questions
from rlsc_jax.tokenizer import chat_prompt_ids, load_tokenizer


def build_tokenizer(cfg: PretrainConfig) -> PreTrainedTokenizerBase:
    """ChatML BPE tokenizer learned from pretrain-split questions and solutions (never the held-out text)."""
    problems = split_problems("pretrain", cfg.tokenizer_problems, seed=cfg.seed, task=cfg.task)
    return train_tokenizer([t for p in problems for t in (p.question, p.solution)], cfg.vocab_size)


def model_config(cfg: PretrainConfig, vocab_size: int) -> ModelConfig:
    """The Qwen2 shape; the default's 256 positions hold a prompt (<= ~80 tokens) and 96 new tokens with room to
    spare, the long task's 512 a prompt (<= ~110 tokens) and 320."""
    return ModelConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                       head_dim=cfg.head_dim, rope_theta=10000.0, tie_word_embeddings=True,
                       max_position_embeddings=cfg.max_positions)


def make_batch(tok: PreTrainedTokenizerBase, cfg: PretrainConfig, step: int) -> dict[str, np.ndarray]:
    """Step `step`'s fresh problems as right-padded [B, seq_len] ids, attention mask and completion mask."""
    problems = split_problems("pretrain", cfg.batch_size, seed=cfg.seed * 1_000_003 + step + 1, task=cfg.task)
    rng = random.Random(f"rlsc_jax.pretrain:{cfg.seed}:{step}")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = np.full((cfg.batch_size, cfg.seq_len), tok.pad_token_id, np.int32)
    attention, completion = np.zeros_like(ids), np.zeros_like(ids)
    for i, p in enumerate(problems):
        prompt = chat_prompt_ids(tok, p.question)
        answer = tok(p.sample_solution(rng, cfg.slip_prob), add_special_tokens=False)["input_ids"] + [end]
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


def init_path(cfg: PretrainConfig) -> Path | None:
    """The checkpoint `cfg.init` names: None for a random start, the shipped default model for "default"."""
    if not cfg.init:
        return None
    return Path(DEFAULT_MODEL if cfg.init == "default" else cfg.init)


def warm_start(model: Decoder, tok: PreTrainedTokenizerBase, source: Path) -> None:
    """Copies `source`'s layers and final norm into `model` and carries its embedding (and untied LM head) over to
    `tok`'s vocabulary.

    A token both tokenizers have keeps its row; a new token starts at the mean of the rows of the pieces
    `source`'s tokenizer splits it into (both are byte-level BPE, so every token has pieces). The shapes other
    than the vocabulary must match; positions may differ (RoPE has no position parameters).
    """
    src, src_tok = hf.load(source), load_tokenizer(source)
    shape = lambda c: (c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads,  # noqa: E731
                       c.head_dim, c.tie_word_embeddings, c.attention_bias)
    if shape(src.cfg) != shape(model.cfg):
        raise ValueError(f"--init {source}: its shape {shape(src.cfg)} differs from this model's {shape(model.cfg)} "
                         "(hidden, intermediate, layers, heads, kv heads, head dim, tied, bias)")
    nnx.update(model.layers, nnx.state(src.layers))
    nnx.update(model.final_norm, nnx.state(src.final_norm))
    old_vocab = src_tok.get_vocab()
    rows = {i: [old_vocab[t]] if t in old_vocab else
            src_tok(tok.convert_tokens_to_string([t]), add_special_tokens=False)["input_ids"]
            for t, i in tok.get_vocab().items()}

    def carry(old: np.ndarray, new: np.ndarray) -> np.ndarray:  # [V, E] rows
        new = new.copy()
        for i, pieces in rows.items():
            if pieces:  # (a token that decodes to nothing keeps its random row)
                new[i] = old[pieces].mean(axis=0)
        return new

    model.embed.value = jnp.asarray(carry(np.asarray(src.embed.value), np.asarray(model.embed.value)))
    if not model.cfg.tie_word_embeddings:
        model.lm_head.value = jnp.asarray(carry(np.asarray(src.lm_head.value).T, np.asarray(model.lm_head.value).T).T)


def train(cfg: PretrainConfig, tok: PreTrainedTokenizerBase, progress: bool = True) -> tuple[Decoder, list[float]]:
    """Trains a decoder for `cfg.steps` AdamW steps (warmup + cosine), from random weights or `cfg.init`'s;
    returns it and the loss per step."""
    model = Decoder(model_config(cfg, len(tok)), dtype=jnp.float32, rngs=nnx.Rngs(cfg.seed))
    if init_path(cfg) is not None:
        warm_start(model, tok, init_path(cfg))
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
    """Plain-template summaries on the first held-out questions: greedy, then n samples at each report
    temperature (default T = 1.0 and 0.5), each with the profile of its samples' log p (`logprob_profile`)."""
    problems = split_questions("heldout", cfg.eval_questions, task=cfg.task)
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    run = functools.partial(evaluate_problems, model, tok, problems, template="plain", batch_size=16, seed=cfg.seed,
                            progress=False)
    report = {"greedy": run(sampling=greedy)[1]}
    for t in report_temperatures(cfg):
        records, summary = run(sampling=dataclasses.replace(greedy, num_samples=cfg.eval_samples, temperature=t))
        report[f"T={t}"] = {**summary, "seq_logp": logprob_profile(records)}
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


def check_finite(model: Decoder, losses: list[float]) -> None:
    """A one-line ValueError if training diverged (a non-finite loss or weight): such a model is never saved."""
    bad = next((step for step, loss in enumerate(losses, 1) if not np.isfinite(loss)), None)
    if bad is not None:
        raise ValueError(f"pretraining diverged: loss {losses[bad - 1]} at step {bad} (try a lower --peak-lr); "
                         "nothing was saved")
    if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(nnx.state(model))):
        raise ValueError("pretraining diverged: the weights are not finite (try a lower --peak-lr); nothing was saved")
