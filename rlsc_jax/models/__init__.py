"""Decoder models (Qwen2 and Llama families) in Flax NNX."""

from rlsc_jax.models.config import ModelConfig
from rlsc_jax.models.decoder import DecodeCache, Decoder, LayerCache, default_positions, init_cache

__all__ = ["DecodeCache", "Decoder", "LayerCache", "ModelConfig", "default_positions", "init_cache"]
