"""Test setup: 8 simulated CPU devices (set before jax is imported), offline HF, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache for the session, shared by this process and the commands its tests start: they
# compile the same tiny programs again and again (every module's end clears the in-memory caches, and every
# train.py run is a new process). Loading them instead cut tests/test_train_cli.py from 485 s to 357 s, starting
# empty. A fresh directory per session, removed at exit, so that no run depends on an earlier one's programs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _compile_cache = tempfile.mkdtemp(prefix="rlsc-jax-compile-cache-")
    atexit.register(shutil.rmtree, _compile_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compile_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from rlsc_jax.benchmarks import BENCHMARK_DIR, load_benchmark  # noqa: E402
from rlsc_jax.bpe import train_tokenizer  # noqa: E402
from tests.hf_models import make_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    """The six math benchmark JSONL files shipped in the package (rlsc_jax/data/benchmarks)."""
    return BENCHMARK_DIR


@pytest.fixture(scope="session")
def tiny_model(benchmark_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 whose vocabulary is a BPE tokenizer trained on GSM8K questions, in one HF directory."""
    tok = train_tokenizer([p.question for p in load_benchmark("gsm8k", benchmark_dir, limit=200)], vocab_size=320)
    model = make_hf_model("qwen2", vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id,
                          max_position_embeddings=1024)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(autouse=True)
def _stop_wandb():
    """W&B's service process and its threads outlive a finished run in this process: stop them after each test
    that started them, so that no later test compiles beside them (the suite once crashed with a segfault in
    XLA's compiler while they ran; the cause was not established)."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module's compiled programs and traced functions released when it ends: one process runs the whole
    suite, and what hundreds of compilations leave behind otherwise accumulates in it (the suite crashed twice,
    with a segfault inside XLA's compiler, two thirds of the way through; the cause was not established)."""
    yield
    import jax
    jax.clear_caches()


@pytest.fixture
def interruptible_popen():
    """`subprocess.Popen` whose child takes Ctrl-C as from a terminal. A shell starts background jobs with SIGINT
    ignored, and an ignored signal stays ignored across exec (a handled one is reset to the default): a suite run
    in the background would otherwise test commands that cannot be interrupted."""

    def popen(*args, **kwargs) -> subprocess.Popen:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return subprocess.Popen(*args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)

    return popen
