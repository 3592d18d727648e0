"""PyTorch `transformers` as the numeric reference: loading a checkpoint, a forward with every hidden state,
greedy `generate`, and one RLSC step (Algorithm 1) with autograd and `torch.optim.AdamW`.

PyTorch is a test and comparison dependency only (the `dev` extra): every function imports it
when called, and `require_torch` turns its absence into a one-line error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rlsc_jax.dtypes import DTYPES



def require_torch():
    """The `torch` module; a ModuleNotFoundError naming the package when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        raise ModuleNotFoundError("PyTorch is not installed: `pip install torch` (or pip install -e '.[dev]') "
                                  "to compare against transformers") from None
    return torch


def load_model(path: str | Path, dtype: str = "float32", num_layers: int | None = None):
    """A transformers causal LM in eval mode with parameters of `dtype`, optionally only its first
    `num_layers` decoder layers (the deeper layers' tensors are skipped), quietly."""
    torch = require_torch()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    extra = {} if num_layers is None else {"num_hidden_layers": num_layers}
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # a truncated load reports every skipped tensor otherwise
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True,
                                                     **extra)
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    return model.eval()


def forward(model, input_ids: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """transformers' `output_hidden_states` (the embeddings, each layer's output, the last one after the
    final norm) and the logits of input_ids [B, T], all as fp32 numpy."""
    torch = require_torch()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(input_ids), dtype=torch.long), output_hidden_states=True)
    return [h.float().numpy() for h in out.hidden_states], out.logits.float().numpy()


def greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int]) -> list[int]:
    """`generate(do_sample=False)` of one prompt: the new tokens, up to and including the first EOS.

    The checkpoint's own generation settings (repetition penalty, sampling defaults) are replaced by
    plain ones, so this is argmax decoding and nothing else.
    """
    torch = require_torch()
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids], dtype=torch.long), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids), pad_token_id=eos_ids[0])
    return out[0, len(prompt_ids):].tolist()


@dataclasses.dataclass
class Step:
    """One reference RLSC step: the loss, log p_i per sample, gradients and updated parameters by HF name
    (fp32 numpy)."""

    loss: float
    logp: np.ndarray
    grads: dict[str, np.ndarray]
    params: dict[str, np.ndarray]


def rlsc_step(model, samples, num_samples: int, temperature: float, objective: str = "rlsc_l2", alpha: float = 0.1,
              lr: float = 1e-5, weight_decay: float = 0.01, eps: float = 1e-8) -> Step:
    """Algorithm 1 with autograd, updating `model` in place: log p_i over answer tokens at `temperature`
    (fp32 log-softmax), p_old detached, L1 or L2 summed over each question's samples and averaged over
    questions, one `torch.optim.AdamW` step.

    `samples` holds left-padded prompt_ids / prompt_mask and tokens / completion_mask, rows grouped by
    question (`rlsc_jax.sampling.Samples`).
    """
    if objective not in ("rlsc_l1", "rlsc_l2"):
        raise ValueError(f"objective {objective!r}: the reference has rlsc_l1 and rlsc_l2")
    torch = require_torch()
    prompt_ids, prompt_mask, tokens, completion_mask = (
        np.asarray(getattr(samples, k)) for k in ("prompt_ids", "prompt_mask", "tokens", "completion_mask"))
    ids = torch.tensor(np.concatenate([prompt_ids, tokens], 1), dtype=torch.long)
    attn = torch.tensor(np.concatenate([prompt_mask, completion_mask], 1), dtype=torch.long)
    answer = torch.tensor(np.concatenate([np.zeros_like(prompt_mask), completion_mask], 1))
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.enable_grad():
        logits = model(ids, attention_mask=attn, position_ids=positions).logits[:, :-1].float() / temperature
        token_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        logp = (token_logp * answer[:, 1:]).sum(-1).view(-1, num_samples)
        p_old = logp.detach().exp()
        weight = p_old if objective == "rlsc_l1" else p_old + alpha
        loss = -(weight * logp).sum(1).mean()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=eps)
        opt.zero_grad()
        loss.backward()
    grads = {n: p.grad.detach().float().numpy() for n, p in model.named_parameters()}
    opt.step()
    params = {n: p.detach().float().numpy() for n, p in model.named_parameters()}
    return Step(float(loss.detach()), logp.detach().numpy().ravel(), grads, params)
