"""Helpers shared by the `bench/` scripts: the shared random Qwen2 on both sides, the
machine's matmul peak, an interleaved timing loop, and the markdown table / JSON output.

Every bench script compares this project (JAX) against PyTorch `transformers` on the same machine, in
the same process, with the same weights, and reports ratios; nothing here asserts on time.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rlsc_jax.files import atomic_write_json

if os.environ.get("JAX_PLATFORMS", "cpu") in ("cuda", "gpu"):
    # JAX would otherwise take 75% of the GPU at its first use, leaving the PyTorch side (and child processes) little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Qwen2.5-0.5B's shapes (HF config.json of Qwen/Qwen2.5-0.5B); `num_hidden_layers` is the only knob
# the scripts change (24 is the real model).
QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, head_dim=64, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768,
    bos_token_id=151643, eos_token_id=151643, hidden_act="silu", use_sliding_window=False,
)


def qwen25_05b_config(layers: int = 24, **overrides) -> dict:
    """Qwen2Config kwargs with Qwen2.5-0.5B's shapes and `layers` decoder layers."""
    cfg = dict(QWEN25_05B, num_hidden_layers=layers)
    cfg.update(overrides)
    return cfg


@dataclass
class SharedModel:
    """The same random weights as a transformers (PyTorch) model and an `rlsc_jax` Decoder."""

    torch_model: object
    jax_model: object
    path: Path  # the HF directory both were built from (deleted with `cleanup`)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def build_shared_qwen2(config: dict, seed: int = 0, jax_dtype="float32", path: str | Path | None = None,
                       attn_implementation: str = "sdpa") -> SharedModel:
    """One random fp32 `transformers.Qwen2ForCausalLM` (default HF init, seeded), saved with
    `save_pretrained` and loaded back with `rlsc_jax.hf.load`, so both sides run identical weights.

    `path` keeps the checkpoint there; by default it lives in a temporary directory until `cleanup()`.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    from rlsc_jax import hf

    torch.manual_seed(seed)
    hf_cfg = Qwen2Config(**config)
    hf_cfg._attn_implementation = attn_implementation
    torch_model = Qwen2ForCausalLM(hf_cfg).to(torch.float32).eval()
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="rlsc_bench_")
        path = Path(tmp.name) / "model"
    path = Path(path)
    hf_logging.disable_progress_bar()
    torch_model.save_pretrained(str(path))
    jax_model = hf.load(path, dtype=jax_dtype)
    return SharedModel(torch_model, jax_model, path, tmp)


def load_shared(model_dir: str | Path, jax_dtype="float32", attn_implementation: str = "sdpa") -> SharedModel:
    """A checkpoint directory (real weights) as a transformers fp32 model and an `rlsc_jax` Decoder."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlsc_jax import hf

    torch_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                       attn_implementation=attn_implementation).eval()
    return SharedModel(torch_model, hf.load(model_dir, dtype=jax_dtype), Path(model_dir))


def shared_model(args, **config_overrides) -> SharedModel:
    """`--model DIR` when given (real weights), else a random Qwen2.5-0.5B-shaped model `--layers` deep."""
    if args.model is not None:
        return load_shared(args.model)
    return build_shared_qwen2(qwen25_05b_config(args.layers, **config_overrides))


def weights_label(args) -> str:
    """What the rows were measured on, printed beside every table."""
    if args.model is not None:
        return f"real weights ({Path(args.model).name})"
    return f"random weights, {args.layers} layers" + ("" if args.layers == 24 else " (shallow)")


# ---------------------------------------------------------------------------------------- protocol

def add_protocol_args(p) -> None:
    """The options every bench shares: the weights, and how busy a machine it agrees to measure on."""
    p.add_argument("--model", type=Path, default=None,
                   help="a Hugging Face checkpoint directory (real weights, measured first); default: random weights")
    p.add_argument("--max-load", type=float, default=0.25,
                   help="refuse to start when the 1-minute load average per core is above this (default 0.25)")
    p.add_argument("--allow-busy", action="store_true",
                   help="measure on a busy machine anyway; the table is then marked BUSY")


def machine_load() -> float:
    """The 1-minute load average per core."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def check_quiet(args) -> float:
    """Refuses (exit 2) to measure on a busy machine unless --allow-busy: PyTorch's threads collapse under load
    while XLA degrades less, so a busy machine flatters this project by up to 4x. Returns the load per core."""
    load = machine_load()
    if load > args.max_load and not args.allow_busy:
        print(f"error: the machine is busy (load {load:.2f} per core > --max-load {args.max_load}); ratios measured "
              f"now are not comparable. Wait, or pass --allow-busy to mark them BUSY.", file=sys.stderr)
        raise SystemExit(2)
    return load


def load_note(before: float, after: float, args) -> str:
    """The load per core before the run (BUSY when above --max-load) and after it (which includes the run's own)."""
    busy = before > args.max_load
    return (f"load per core {before:.2f} before, {after:.2f} after (the run's own){' BUSY' if busy else ''}")


def torch_at_its_best() -> None:
    """PyTorch as fast as it goes on a CPU: every core, denormals flushed (real weights produce them, and
    they slowed generate 1.55x; XLA:CPU already flushes them)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)


def spread(timing: "Timing") -> str:
    """The median and the range of the timed calls, as text."""
    return f"{timing.median:.3g} s ({min(timing.times):.3g}-{max(timing.times):.3g})"


# ------------------------------------------------------------------------------------------ timing

@dataclass
class Timing:
    """Wall-clock seconds of each timed call (warm-up and compile excluded)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)


def time_calls(fns: dict[str, Callable[[], object]], iters: int, warmup: int = 1,
               interleave: bool = True) -> dict[str, Timing]:
    """Times each zero-argument `fn` (which must block until its result is ready) `iters` times.

    With `interleave` the calls alternate between the functions (a, b, a, b, ...), so background load
    on a shared machine hits all sides alike instead of whichever ran during the noisy minute.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = [(i, name) for i in range(iters) for name in fns] if interleave else \
        [(i, name) for name in fns for i in range(iters)]
    for _, name in order:
        t0 = time.perf_counter()
        fns[name]()
        times[name].append(time.perf_counter() - t0)
    return {name: Timing(t) for name, t in times.items()}


def jax_blocking(fn: Callable, *args) -> Callable[[], object]:
    """A zero-argument call of a jitted `fn(*args)` that waits for the result."""
    import jax

    return lambda: jax.block_until_ready(fn(*args))


def matmul_peak(dtype: str = "float32", iters: int = 10) -> dict[str, float]:
    """The machine's matmul GFLOP/s in `dtype`: the best of `iters` n x n @ n x n matmuls, in jnp and torch
    (n = 2048 on CPU, 8192 on a GPU)."""
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch_device()
    n = 8192 if device == "cuda" else 2048
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    a_j, b_j = jnp.asarray(a_np, dtype), jnp.asarray(b_np, dtype)
    mm = jax.jit(jnp.matmul)
    a_t, b_t = (torch.from_numpy(x).to(device, getattr(torch, dtype)) for x in (a_np, b_np))

    def torch_mm():
        with torch.inference_mode():
            out = torch.matmul(a_t, b_t)
        torch_sync(device)
        return out

    t = time_calls({"jax": jax_blocking(mm, a_j, b_j), "torch": torch_mm}, iters=iters, warmup=2)
    flops = 2 * n ** 3
    return {name: flops / timing.best / 1e9 for name, timing in t.items()}


def memory_bandwidth(gigabytes: float = 1.0, iters: int = 5) -> float:
    """The machine's read bandwidth in GB/s: the best of `iters` jitted sums over a `gigabytes` fp32 array (far
    larger than the caches), the ceiling for a decode step that reads every weight once."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(int(gigabytes * 1e9) // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    t = time_calls({"sum": jax_blocking(total, x)}, iters=iters, warmup=1)["sum"]
    return x.nbytes / t.best / 1e9


def torch_device() -> str:
    """Where the PyTorch side runs: "cuda" when JAX was asked for the GPU (`JAX_PLATFORMS=cuda`), else "cpu",
    so both sides always share one kind of device."""
    return "cuda" if os.environ.get("JAX_PLATFORMS", "cpu") in ("cuda", "gpu") else "cpu"


def torch_sync(device: str) -> None:
    """Waits for queued PyTorch GPU work, so a timed call ends when its result exists."""
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def device_peak_gb(side: str) -> float | None:
    """This process's peak accelerator memory on `side` ("jax" or "torch") in GB; None on CPU."""
    if torch_device() != "cuda":
        return None
    if side == "torch":
        import torch
        return torch.cuda.max_memory_allocated() / 1024**3
    import jax
    return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 1024**3


def memory_bytes() -> int:
    """Memory the JAX side may fill: the GPU's (its allocator's limit) on a GPU, else the host's RAM."""
    if torch_device() == "cuda":
        import jax
        return jax.devices()[0].memory_stats()["bytes_limit"]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def max_abs_diff(a, b, chunk: int = 1) -> float:
    """max |a - b| over the leading axis in chunks (no second full-size temporary of [B, T, V] logits)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(max(np.max(np.abs(a[i:i + chunk] - b[i:i + chunk])) for i in range(0, a.shape[0], chunk)))


# ------------------------------------------------------------------------------------------ output

def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats are printed with thousands separators and sensible precision."""

    def fmt(x):
        if isinstance(x, float):
            if abs(x) >= 100:
                return f"{x:,.0f}"
            if abs(x) >= 10:
                return f"{x:.1f}"
            return f"{x:.3g}"
        return str(x)

    cells = [headers] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def environment() -> dict:
    """Versions and the machine, recorded next to every bench result."""
    import jax
    import torch
    import transformers
    import flax

    return {
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "jax": jax.__version__, "jax_backend": jax.default_backend(), "jax_devices": len(jax.devices()),
        "flax": flax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def write_json(path: str | Path, payload: dict) -> None:
    """Writes the results atomically (temporary sibling, then rename)."""
    atomic_write_json(path, payload)
