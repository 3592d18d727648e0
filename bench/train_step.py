"""One RLSC training step: rlsc_jax (remat, fused log-likelihood, donated state) vs the same step in PyTorch.

    python bench/train_step.py [--layers 24] [--rows 16] [--prompt-len 64] [--completion-len 256] [--iters 2]
    JAX_PLATFORMS=cuda python bench/train_step.py --compute-dtype bfloat16   # both sides on the GPU

Both sides load one random fp32 Qwen2.5-0.5B-shaped checkpoint (`--layers` decoder layers) and run the
RLSC L2 step (docs/method.md) on the same 16 completions: PyTorch with a transformers model, the naive full
[B, T, V] logits and torch.optim.AdamW; JAX with `rlsc_jax.training.Trainer`. Each side runs in its own
process so its peak memory is its own: resident memory (ru_maxrss) on CPU, the allocator's peak on a GPU
(`JAX_PLATFORMS=cuda`, where PyTorch runs on cuda and `--compute-dtype bfloat16` means autocast; JAX also
reports the compiled step's own figures, `memory_analysis()`, to set against the measured peak).
MFU = 6 x matmul parameters x tokens (+ attention) per step against the machine's matmul peak (remat's
recomputation is not counted as useful work). A second table compares the fused log-likelihood with the naive one (value + gradient
w.r.t. hidden states and LM head) at V = 151936 and 16 x 1024 tokens: time, and XLA's compiled
temporary memory (the naive one is only run if it fits in memory). A side the kernel kills for memory is
reported as such (at 24 layers and 16 x (64 + 256) tokens the naive PyTorch step needs more than 24 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import add_protocol_args  # noqa: E402

ALPHA, TEMPERATURE, LR = 0.1, 0.5, 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24,
                   help="decoder layers: 24 is the real Qwen2.5-0.5B; fewer is a shallow model, labelled as such")
    p.add_argument("--rows", type=int, default=16, help="completions per step (N samples of one question)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--completion-len", type=int, default=256)
    p.add_argument("--iters", type=int, default=2, help="timed steps per side (after one warm-up step)")
    p.add_argument("--no-remat", action="store_true")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="matmul dtype over fp32 master weights (JAX compute_dtype; PyTorch autocast)")
    p.add_argument("--logprob-tokens", type=int, default=16 * 1024, help="tokens in the log-likelihood table")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    add_protocol_args(p)
    return p.parse_args(argv)


def batch(args) -> dict[str, np.ndarray]:
    """Fixed prompt + completion rows: random ids, completions of varied length (EOS then padding)."""
    rng = np.random.default_rng(0)
    rows, p, c = args.rows, args.prompt_len, args.completion_len
    lengths = rng.integers(c // 2, c + 1, rows)
    mask = (np.arange(c)[None] < lengths[:, None]).astype(np.int32)
    return dict(prompt_ids=rng.integers(0, 150000, (rows, p)).astype(np.int32), prompt_mask=np.ones((rows, p), np.int32),
                tokens=(rng.integers(0, 150000, (rows, c)) * mask).astype(np.int32), completion_mask=mask)


def run_torch(args, data) -> list[float]:
    """The paper's step in PyTorch: naive logits, L2 with p_old detached, AdamW."""
    import torch
    from transformers import AutoModelForCausalLM
    from bench.common import torch_at_its_best, torch_device, torch_sync
    torch_at_its_best()
    device = torch_device()
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    tensor = lambda a: torch.tensor(a, dtype=torch.long, device=device)  # noqa: E731
    ids = tensor(np.concatenate([data["prompt_ids"], data["tokens"]], 1))
    attn = tensor(np.concatenate([data["prompt_mask"], data["completion_mask"]], 1))
    answer = tensor(np.concatenate([np.zeros_like(data["prompt_mask"]), data["completion_mask"]], 1))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.compute_dtype == "bfloat16")
    times = []
    for _ in range(args.iters + 1):
        t0 = time.perf_counter()
        with autocast:
            logits = model(ids, attention_mask=attn).logits[:, :-1] / TEMPERATURE
        logp = (torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0] * answer[:, 1:]).sum(-1)
        loss = -((logp.detach().exp() + ALPHA) * logp).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch_sync(device)
        times.append(time.perf_counter() - t0)
        del logits, logp, loss
    return times[1:]


def run_jax(args, data) -> tuple[list[float], dict]:
    """The same step through rlsc_jax's Trainer (jitted, donated, remat, chunked log-likelihood); also the
    compiled step's memory_analysis() figures in GB."""
    import jax
    from rlsc_jax import hf
    from rlsc_jax.config import load_config
    from rlsc_jax.sampling import Samples
    from rlsc_jax.sharding import make_mesh
    from rlsc_jax.training import Trainer
    cfg = load_config(None, [f"sampling.num_samples={args.rows}", f"optim.lr={LR}", f"objective_args.alpha={ALPHA}",
                             f"remat={not args.no_remat}", f"sampling.temperature={TEMPERATURE}"])
    mesh = make_mesh()
    trainer, state = Trainer.create(hf.load(args.model, mesh=mesh, compute_dtype=args.compute_dtype), cfg, mesh)
    memory = trainer.compile_step(state, args.rows, args.prompt_len, args.completion_len).memory_analysis()
    compiled = {k: getattr(memory, f"{k}_size_in_bytes") / 1024**3 for k in ("argument", "output", "alias", "temp")}
    compiled["peak"] = compiled["argument"] + compiled["output"] - compiled["alias"] + compiled["temp"]
    samples = Samples(lengths=None, logprobs=None, **data)
    times = []
    for _ in range(args.iters + 1):
        t0 = time.perf_counter()
        state, metrics = trainer.step(state, trainer.batch(samples))
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    return times[1:], compiled


def child(args) -> int:
    """One side, in its own process; prints its step times and peak memory (GB) as JSON."""
    from bench.common import device_peak_gb
    data = batch(args)
    out = {}
    if args.side == "jax":
        out["times"], out["compiled_gb"] = run_jax(args, data)
    else:
        out["times"] = run_torch(args, data)
    out["peak_gb"] = device_peak_gb(args.side)
    if out["peak_gb"] is None:
        out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(out))
    return 0


def logprob_table(args, peak: float) -> tuple[list[list], dict]:
    """Fused vs naive log-likelihood (value + gradients) at the real vocabulary."""
    import jax
    import jax.numpy as jnp
    from bench.common import jax_blocking, memory_bytes, time_calls
    from rlsc_jax.logprobs import DEFAULT_CHUNK_SIZE, token_logprobs
    e, v, n = 896, 151936, args.logprob_tokens
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (16, n // 16, e)) * 0.1
    w = jax.random.normal(k2, (e, v)) * 0.02
    t = jax.random.randint(k3, (16, n // 16), 0, v)

    def fused(h, w):
        return token_logprobs(h, w, t, TEMPERATURE)[0].sum()

    def naive(h, w):
        logits = jnp.einsum("bte,ev->btv", h, w) / TEMPERATURE
        return jnp.take_along_axis(jax.nn.log_softmax(logits), t[..., None], -1).sum()

    rows, out = [], {}
    available = memory_bytes()
    for name, fn in (("fused", fused), ("naive", naive)):
        grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        temp = grad.lower(h, w).compile().memory_analysis().temp_size_in_bytes / 1024**3
        seconds = None
        if temp * 1024**3 < 0.6 * available:
            try:
                seconds = time_calls({name: jax_blocking(grad, h, w)}, iters=2, warmup=1)[name].median
            except jax.errors.JaxRuntimeError as e:  # the allocator's verdict outranks the estimate above
                if "RESOURCE_EXHAUSTED" not in str(e):
                    raise
        out[name] = {"temp_gb": temp, "seconds": seconds}
        rows.append([name, temp, seconds if seconds is not None else "not run (memory)"])
    rows.append(["fused / naive", out["fused"]["temp_gb"] / out["naive"]["temp_gb"],
                 out["fused"]["seconds"] / out["naive"]["seconds"] if out["naive"]["seconds"] else "-"])
    out["chunk_size"] = DEFAULT_CHUNK_SIZE
    return rows, out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side:
        return child(args)
    from bench.common import (build_shared_qwen2, check_quiet, environment, load_note, machine_load, markdown_table,
                              matmul_peak, qwen25_05b_config, torch_device, weights_label, write_json)
    from rlsc_jax.models import ModelConfig
    load_before = check_quiet(args)
    peak = max(matmul_peak(args.compute_dtype).values())
    with tempfile.TemporaryDirectory(prefix="rlsc_bench_") as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            build_shared_qwen2(qwen25_05b_config(args.layers), path=model_dir)
        cfg = ModelConfig.from_file(model_dir)
        results = {}
        for side in ("jax", "torch"):
            cmd = [sys.executable, __file__, "--side", side, "--model", str(model_dir),
                   "--layers", str(args.layers), "--rows", str(args.rows), "--prompt-len", str(args.prompt_len),
                   "--completion-len", str(args.completion_len), "--iters", str(args.iters),
                   "--compute-dtype", args.compute_dtype, *(["--no-remat"] if args.no_remat else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == -signal.SIGKILL:  # the kernel's OOM killer: a result, not a failure
                results[side] = {"killed": True}
                continue
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    tokens = args.rows * (args.prompt_len + args.completion_len)
    seq = args.prompt_len + args.completion_len
    flops = cfg.matmul_flops(args.rows, seq, train=True, causal=True)
    rows = []
    for side, r in results.items():
        if r.get("killed"):
            rows.append([side, "killed (out of memory)", "-", "-", "-"])
            continue
        s = float(np.median(r["times"]))
        r.update(seconds=s, tokens_per_s=tokens / s, mfu=flops / s / 1e9 / peak)
        rows.append([side, r["tokens_per_s"], s, r["peak_gb"], 100 * r["mfu"]])
    j, t = results["jax"], results["torch"]
    if "seconds" in j and "seconds" in t:
        rows.append(["jax / torch", j["tokens_per_s"] / t["tokens_per_s"], j["seconds"] / t["seconds"],
                     j["peak_gb"] / t["peak_gb"], "-"])
    memory = "peak device GB" if torch_device() == "cuda" else "peak RSS GB"
    print(f"\nRLSC step, {weights_label(args)}, {args.rows} x ({args.prompt_len} + "
          f"{args.completion_len}) tokens, fp32 masters, {args.compute_dtype} compute, remat={not args.no_remat}; "
          f"{args.compute_dtype} matmul peak {peak:.0f} GFLOP/s; {load_note(load_before, machine_load(), args)}\n")
    print(markdown_table(["side", "tokens/s", "s/step", memory, "MFU %"], rows))
    if "compiled_gb" in j:
        c = j["compiled_gb"]
        print(f"\nJAX step, compiled (memory_analysis): arguments {c['argument']:.2f} + outputs {c['output']:.2f} "
              f"- aliased {c['alias']:.2f} + temp {c['temp']:.2f} = {c['peak']:.2f} GB; "
              f"measured peak {j['peak_gb']:.2f}")
    lp_rows, lp = logprob_table(args, peak)
    print(f"\nlog-likelihood value + gradient, V=151936, {args.logprob_tokens} tokens, E=896\n")
    print(markdown_table(["version", "XLA temp GB", "seconds"], lp_rows))
    if args.json:
        write_json(args.json, dict(args={k: str(v) for k, v in vars(args).items()}, peak_gflops=peak, step=results,
                                   logprobs=lp, environment=environment()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
