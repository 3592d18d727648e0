"""Numeric agreement between this project's decoder and PyTorch `transformers` on one prompt: the forward layer
by layer, greedy decoding, and one RLSC step. Each function returns plain figures (JSON-ready); judging
them against tolerances is `rlsc_jax.compare`'s job.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlsc_jax import hf, torch_reference
from rlsc_jax.config import OptimConfig, SamplingConfig, TrainConfig
from rlsc_jax.logprobs import sequence_logprobs
from rlsc_jax.models import Decoder
from rlsc_jax.sampling import sample
from rlsc_jax.sharding import make_mesh, to_host
from rlsc_jax.training import Trainer

STEP_SAMPLES = 4
STEP_TEMPERATURE = 0.5  # the paper's sampling temperature; log p_i is scored at it
STEP_OPTIM = OptimConfig(lr=1e-5)  # the paper's lr; AdamW's other settings are train.py's defaults


def _difference(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max |ours - reference|, max |reference|, and their ratio (a scale-free figure for any layer)."""
    err = float(np.abs(ours - reference).max())
    scale = float(np.abs(reference).max())
    return {"max_abs": err, "reference_max": scale, "relative": err / scale if scale > 0 else err}


def hidden_state_names(num_layers: int) -> list[str]:
    """What transformers' `output_hidden_states` entries are: the embeddings, each layer's output, and the last
    layer's output after the final norm."""
    return ["embeddings", *(f"layer {i}" for i in range(num_layers - 1)), f"layer {num_layers - 1} + final norm"]


def forward(model: Decoder, torch_model, prompt_ids: list[int], layer_threshold: float) -> dict:
    """Every hidden state and the logits of the prompt on both sides: differences, the first hidden state whose
    relative difference exceeds `layer_threshold` (None if none does) and the argmax agreement."""
    ids = np.asarray([prompt_ids], np.int32)
    final, collected = model.collect(jnp.asarray(ids))
    ours = [np.asarray(h, np.float32) for h in collected[:-1]] + [np.asarray(final, np.float32)]
    logits = np.asarray(model.logits(final), np.float32)
    ref_hidden, ref_logits = torch_reference.forward(torch_model, ids)
    layers = [dict(name=name, **_difference(a, b))
              for name, a, b in zip(hidden_state_names(model.cfg.num_layers), ours, ref_hidden)]
    first = next((i for i, layer in enumerate(layers) if layer["relative"] > layer_threshold), None)
    agree = int((logits.argmax(-1) == ref_logits.argmax(-1)).sum())
    return {"tokens": len(prompt_ids), "hidden_states": layers,
            "first_diverging": None if first is None else layers[first]["name"],
            "first_diverging_index": first, "logits": _difference(logits, ref_logits),
            "argmax_agree": agree, "argmax_positions": len(prompt_ids)}


def _last_logits(model: Decoder, torch_model, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' next-token logits after `ids` (a full forward each), fp32 numpy."""
    ours = np.asarray(model(jnp.asarray([ids], jnp.int32))[0, -1], np.float32)
    return ours, torch_reference.forward(torch_model, np.asarray([ids]))[1][0, -1]


def greedy(model: Decoder, torch_model, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int],
           tie_tolerance: float) -> dict:
    """Greedy tokens from this project's sampler and from `generate(do_sample=False)`: how many leading tokens
    agree and, at the first divergence, both tokens with each side's margin (its logit of its own token minus
    its logit of the other side's token, from a full forward of the shared prefix). Both margins within
    `tie_tolerance` make the divergence a tie: two near-equal logits that numeric error may order either way.
    """
    out = sample(model, [prompt_ids], num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0,
                 eos_ids=eos_ids, seed=0)
    ours = to_host(out.tokens)[0, :int(to_host(out.lengths)[0])].tolist()
    theirs = torch_reference.greedy(torch_model, prompt_ids, max_new_tokens, eos_ids)
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    figures = {"requested": max_new_tokens, "rlsc_jax_tokens": ours, "transformers_tokens": theirs,
               "identical_leading": same, "divergence": None}
    if ours == theirs:
        return figures
    a, b = (ours + [None])[same], (theirs + [None])[same]
    if a is None or b is None:  # one side's tokens are a prefix of the other's: no two logits to weigh
        figures["divergence"] = {"position": same, "rlsc_jax_token": a, "transformers_token": b, "tie": False}
        return figures
    our_logits, their_logits = _last_logits(model, torch_model, prompt_ids + ours[:same])
    margins = float(our_logits[a] - our_logits[b]), float(their_logits[b] - their_logits[a])
    figures["divergence"] = {"position": same, "rlsc_jax_token": a, "transformers_token": b,
                             "rlsc_jax_margin": margins[0], "transformers_margin": margins[1],
                             "tie": max(abs(m) for m in margins) <= tie_tolerance}
    return figures


@functools.partial(jax.jit, static_argnums=0)
def _sequence_logp(graphdef, state, prompt_ids, prompt_mask, tokens, completion_mask) -> jax.Array:
    """log p_i of every sampled completion at the step's temperature, scored as the trainer scores them."""
    ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    attention = jnp.concatenate([prompt_mask, completion_mask], axis=1)
    answer = jnp.concatenate([jnp.zeros_like(prompt_mask), completion_mask], axis=1)
    return sequence_logprobs(nnx.merge(graphdef, state), ids, attention, answer, STEP_TEMPERATURE)[0]


def _spacing(arr: np.ndarray) -> float:
    """The spacing of the tensor's own dtype at its largest magnitude (what storing an update can round by)."""
    return float(jnp.finfo(arr.dtype).eps) * float(np.abs(arr.astype(np.float32)).max())


def step(model: Decoder, torch_model, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int]) -> dict:
    """One L2 step on `STEP_SAMPLES` completions of the prompt drawn by this project's sampler, here (the
    trainer's jitted step) and in PyTorch (`torch_reference.rlsc_step`): loss, per-sample log p (and its largest
    difference per answer token), gradient norm and the updated parameters' largest difference.

    Both models are updated in place (the PyTorch one by AdamW; ours is donated to the step), so this runs last.
    """
    samples = sample(model, [prompt_ids], num_samples=STEP_SAMPLES, max_new_tokens=max_new_tokens,
                     temperature=STEP_TEMPERATURE, eos_ids=eos_ids, seed=0)
    ref = torch_reference.rlsc_step(torch_model, samples, STEP_SAMPLES, STEP_TEMPERATURE, "rlsc_l2",
                                    lr=STEP_OPTIM.lr, weight_decay=STEP_OPTIM.weight_decay, eps=STEP_OPTIM.eps)
    lengths = to_host(samples.lengths)
    logp = to_host(_sequence_logp(*nnx.split(model), *(jnp.asarray(getattr(samples, k)) for k in
                                                         ("prompt_ids", "prompt_mask", "tokens", "completion_mask"))))
    cfg = TrainConfig(sampling=SamplingConfig(num_samples=STEP_SAMPLES, temperature=STEP_TEMPERATURE),
                      optim=STEP_OPTIM)
    trainer, state = Trainer.create(model, cfg, make_mesh(devices=jax.devices()[:1]))
    state, metrics = trainer.step(state, trainer.batch(samples))
    max_abs, worst = 0.0, {"ratio": -1.0}
    for m, value in hf.hf_tensors(trainer.model(state)):
        diff = float(np.abs(value.astype(np.float32) - ref.params[m.hf_name]).max())
        allowed = 2 * STEP_OPTIM.lr + 2 * _spacing(value)
        max_abs = max(max_abs, diff)
        if diff / allowed > worst["ratio"]:
            worst = {"tensor": m.hf_name, "max_abs": diff, "allowed": allowed, "ratio": diff / allowed}
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    ref_norm = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in ref.grads.values())))
    return {"samples": STEP_SAMPLES, "temperature": STEP_TEMPERATURE, "lr": STEP_OPTIM.lr,
            "completion_lengths": lengths.tolist(),
            "loss": {"rlsc_jax": loss, "transformers": ref.loss, "relative": abs(loss - ref.loss) / abs(ref.loss)},
            "logp": {"rlsc_jax": logp.tolist(), "transformers": ref.logp.tolist(), **_difference(logp, ref.logp),
                     "per_token": float((np.abs(logp - ref.logp) / np.maximum(lengths, 1)).max())},
            "grad_norm": {"rlsc_jax": grad_norm, "transformers": ref_norm,
                          "relative": abs(grad_norm - ref_norm) / ref_norm},
            "updated_params": {"max_abs": max_abs, "in_lr": max_abs / STEP_OPTIM.lr, "worst": worst}}
