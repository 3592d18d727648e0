"""Test setup: 8 simulated CPU devices (set before jax is imported), offline HF, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from rlsc_jax.benchmarks import BENCHMARK_DIR  # noqa: E402


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    """The six math benchmark JSONL files shipped in the package (rlsc_jax/data/benchmarks)."""
    return BENCHMARK_DIR
