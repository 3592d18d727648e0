"""Test setup: 8 simulated CPU devices (set before jax is imported), offline HF, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

BENCHMARK_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    """The shared math benchmark JSONL files (outside the repo; never copied in)."""
    if not BENCHMARK_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {BENCHMARK_DIR}")
    return BENCHMARK_DIR
