"""Tiny random transformers models (Qwen2 / Llama) saved to disk, the reference for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 128

# name -> (family, overrides); covers tied/untied, kv_heads 1, 2 and = heads, head_dim != hidden/heads.
VARIANTS = {
    "qwen2-untied-kv2": ("qwen2", dict(num_key_value_heads=2)),
    "qwen2-tied-kv1": ("qwen2", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen2-kv4-headdim24": ("qwen2", dict(num_key_value_heads=4, head_dim=24)),
    "llama-untied-kv2": ("llama", dict(num_key_value_heads=2)),
    "llama-tied-kv4-headdim8": ("llama", dict(num_key_value_heads=4, head_dim=8, tie_word_embeddings=True)),
}


def make_hf_model(family: str = "qwen2", seed: int = 0, **overrides):
    """A random tiny model in eval mode; weights drawn wider than the default init so errors show."""
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=256,
                rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 2)
    base.update(overrides)
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**base))
    else:
        model = LlamaForCausalLM(LlamaConfig(**base))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.08)
    return model.eval()


def save_hf_model(model, path: Path) -> Path:
    """Saves the model as safetensors (the format `rlsc_jax.hf.load` reads)."""
    model.save_pretrained(str(path))
    return path


def make_chat_model_dir(path: Path, texts: list[str], vocab_size: int = 320, seed: int = 0, family: str = "qwen2",
                        **overrides) -> Path:
    """A tiny random Qwen2 (or Llama) plus a ChatML BPE tokenizer trained on `texts`, saved as one HF directory."""
    from rlsc_jax.bpe import train_tokenizer
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = make_hf_model(family, seed=seed, vocab_size=len(tokenizer), eos_token_id=eos, bos_token_id=None,
                          **overrides)
    model.generation_config.eos_token_id = eos
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
