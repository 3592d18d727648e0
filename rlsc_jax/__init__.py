"""rlsc_jax: label-free RL fine-tuning (RLSC, self-confidence) of Qwen2-family models in JAX."""

import os

# transformers serves only tokenizers and configs here; without PyTorch it would open every command with an
# advisory "PyTorch was not found. Models won't be available" line. Advisories only: real warnings still show.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
