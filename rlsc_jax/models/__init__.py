"""Decoder models (Qwen2 and Llama families) in Flax NNX."""

from rlsc_jax.models.config import ModelConfig
from rlsc_jax.models.decoder import Decoder, KVCache, default_positions, init_cache

__all__ = ["Decoder", "KVCache", "ModelConfig", "default_positions", "init_cache"]
