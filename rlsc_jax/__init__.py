"""rlsc_jax: label-free RL fine-tuning (RLSC, self-confidence) of Qwen2-family models in JAX."""
