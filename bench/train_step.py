"""One RLSC training step: rlsc_jax (remat, fused log-likelihood, donated state) vs the same step in PyTorch.

    python bench/train_step.py [--layers 24] [--rows 16] [--prompt-len 64] [--completion-len 256] [--iters 2]

Both sides load one random fp32 Qwen2.5-0.5B-shaped checkpoint (`--layers` decoder layers) and run the
RLSC L2 step (docs/method.md) on the same 16 completions: PyTorch with a transformers model, the naive full
[B, T, V] logits and torch.optim.AdamW; JAX with `rlsc_jax.training.Trainer`. Each side runs in its own
process so its peak resident memory (ru_maxrss) is its own. MFU = 6 x matmul parameters x tokens
(+ attention) per step against the machine's fp32 matmul peak (remat's recomputation is not counted as
useful work). A second table compares the fused log-likelihood with the naive one (value + gradient
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
    p.add_argument("--logprob-tokens", type=int, default=16 * 1024, help="tokens in the log-likelihood table")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
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
    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    ids = torch.tensor(np.concatenate([data["prompt_ids"], data["tokens"]], 1), dtype=torch.long)
    attn = torch.tensor(np.concatenate([data["prompt_mask"], data["completion_mask"]], 1), dtype=torch.long)
    answer = torch.tensor(np.concatenate([np.zeros_like(data["prompt_mask"]), data["completion_mask"]], 1))
    times = []
    for _ in range(args.iters + 1):
        t0 = time.perf_counter()
        logits = model(ids, attention_mask=attn).logits[:, :-1] / TEMPERATURE
        logp = (torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0] * answer[:, 1:]).sum(-1)
        loss = -((logp.detach().exp() + ALPHA) * logp).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        del logits, logp, loss
    return times[1:]


def run_jax(args, data) -> list[float]:
    """The same step through rlsc_jax's Trainer (jitted, donated, remat, chunked log-likelihood)."""
    import jax
    from rlsc_jax import hf
    from rlsc_jax.config import load_config
    from rlsc_jax.sampling import Samples
    from rlsc_jax.sharding import make_mesh
    from rlsc_jax.training import Trainer
    cfg = load_config(None, [f"sampling.num_samples={args.rows}", f"optim.lr={LR}", f"objective_args.alpha={ALPHA}",
                             f"remat={not args.no_remat}", f"sampling.temperature={TEMPERATURE}"])
    mesh = make_mesh()
    trainer, state = Trainer.create(hf.load(args.model, mesh=mesh), cfg, mesh)
    samples = Samples(lengths=None, logprobs=None, **data)
    times = []
    for _ in range(args.iters + 1):
        t0 = time.perf_counter()
        state, metrics = trainer.step(state, trainer.batch(samples))
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    return times[1:]


def child(args) -> int:
    """One side, in its own process; prints its step times and peak RSS as JSON."""
    data = batch(args)
    times = (run_jax if args.side == "jax" else run_torch)(args, data)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"times": times, "peak_rss_gb": peak_gb}))
    return 0


def logprob_table(args, peak: float) -> tuple[list[list], dict]:
    """Fused vs naive log-likelihood (value + gradients) at the real vocabulary."""
    import jax
    import jax.numpy as jnp
    from bench.common import time_calls, jax_blocking
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
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name, fn in (("fused", fused), ("naive", naive)):
        grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        temp = grad.lower(h, w).compile().memory_analysis().temp_size_in_bytes / 1024**3
        seconds = None
        if temp * 1024**3 < 0.6 * available:
            seconds = time_calls({name: jax_blocking(grad, h, w)}, iters=2, warmup=1)[name].median
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
    from bench.common import (build_shared_qwen2, environment, markdown_table, matmul_params, matmul_peak,
                              qwen25_05b_config, write_json)
    peak = max(matmul_peak().values())
    with tempfile.TemporaryDirectory(prefix="rlsc_bench_") as tmp:
        shared = build_shared_qwen2(qwen25_05b_config(args.layers), path=Path(tmp) / "model")
        cfg = shared.jax_model.cfg
        del shared
        results = {}
        for side in ("jax", "torch"):
            cmd = [sys.executable, __file__, "--side", side, "--model", str(Path(tmp) / "model"),
                   "--layers", str(args.layers), "--rows", str(args.rows), "--prompt-len", str(args.prompt_len),
                   "--completion-len", str(args.completion_len), "--iters", str(args.iters),
                   *(["--no-remat"] if args.no_remat else [])]
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
    flops = 6 * sum(matmul_params(cfg).values()) * tokens + 6 * cfg.num_layers * args.rows * cfg.num_heads * seq**2 * cfg.head_dim
    rows = []
    for side, r in results.items():
        if r.get("killed"):
            rows.append([side, "killed (out of memory)", "-", "-", "-"])
            continue
        s = float(np.median(r["times"]))
        r.update(seconds=s, tokens_per_s=tokens / s, mfu=flops / s / 1e9 / peak)
        rows.append([side, r["tokens_per_s"], s, r["peak_rss_gb"], 100 * r["mfu"]])
    j, t = results["jax"], results["torch"]
    if "seconds" in j and "seconds" in t:
        rows.append(["jax / torch", j["tokens_per_s"] / t["tokens_per_s"], j["seconds"] / t["seconds"],
                     j["peak_rss_gb"] / t["peak_rss_gb"], "-"])
    print(f"\nRLSC step, Qwen2.5-0.5B shapes with {args.layers} layers, {args.rows} x ({args.prompt_len} + "
          f"{args.completion_len}) tokens, fp32, remat={not args.no_remat}; fp32 matmul peak {peak:.0f} GFLOP/s\n")
    print(markdown_table(["side", "tokens/s", "s/step", "peak RSS GB", "MFU %"], rows))
    lp_rows, lp = logprob_table(args, peak)
    print(f"\nlog-likelihood value + gradient, V=151936, {args.logprob_tokens} tokens, E=896\n")
    print(markdown_table(["version", "XLA temp GB", "seconds"], lp_rows))
    if args.json:
        write_json(args.json, dict(args={k: str(v) for k, v in vars(args).items()}, peak_gflops=peak, step=results,
                                   logprobs=lp, environment=environment()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
