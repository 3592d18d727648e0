"""Where one decode step's time goes: the sampler's token loop split into timed sub-programs.

    python bench/decode_profile.py [--layers 24] [--rows 16] [--cache 192] [--iters 64]

A random fp32 Qwen2.5-0.5B-shaped model (`--layers` decoder layers; 24 is the real model). The whole
step is measured as the sampler runs it: `sample` with `--iters` more new tokens, minus the same call's
prefill and first tokens, per token. Each part runs `--iters` times inside one jitted `fori_loop` whose
carry depends on its result (so nothing is hoisted or dropped), in the decode layout the sampler uses:
the layers' matmuls (QKV, O, gate/up, down) at `--rows` rows; attention of one query per row over a
`--cache`-slot KV cache (scores, mask, softmax, values); the two cache writes per layer; the
vocabulary-wide work (LM head matmul, then the tempered log-softmax and the draw); and an empty loop.
"Other" is the whole step minus the parts: norms, RoPE, residual adds and fusion boundaries.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import (environment, markdown_table, matmul_peak, memory_bandwidth,  # noqa: E402
                          qwen25_05b_config, weights_label, write_json)
from rlsc_jax import hf  # noqa: E402
from rlsc_jax.models import Decoder, ModelConfig  # noqa: E402
from rlsc_jax.models.decoder import _cached_attention  # noqa: E402
from rlsc_jax.sampling import _pick, sample  # noqa: E402



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24, help="decoder layers (24 is the real Qwen2.5-0.5B)")
    p.add_argument("--rows", type=int, default=16, help="sample rows decoded together")
    p.add_argument("--cache", type=int, default=192, help="KV-cache slots (prompt + new tokens)")
    p.add_argument("--iters", type=int, default=64, help="decode steps per timed call")
    p.add_argument("--top-k", type=int, default=0, help="the draw's top-k filter (the paper's sampler: 50)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per part (the median is reported)")
    p.add_argument("--model", type=Path, default=None,
                   help="a Hugging Face checkpoint directory (real weights); default: random weights, --layers deep")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _loop(body, iters: int):
    """A jitted `fori_loop` of `body(i, carry) -> carry` over `iters` iterations; the carry is donated."""
    return jax.jit(lambda carry, *args: jax.lax.fori_loop(0, iters, lambda i, c: body(i, c, *args), carry),
                   donate_argnums=0)


def parts(model: Decoder, rows: int, cache_len: int, iters: int, top_k: int) -> dict:
    """name -> zero-argument callable running that part `iters` times."""
    cfg, layers, head = model.cfg, model.unstacked_layers(), model.decode_head()
    x = jnp.ones((rows, cfg.hidden_size), jnp.float32) * 0.01

    def matmuls(i, h, layers):
        for w in layers:
            a, m = w["attn"], w["mlp"]
            q = jnp.einsum("be,ehd->bhd", h, a["q"][...])
            k = jnp.einsum("be,ekd->bkd", h, a["k"][...])
            v = jnp.einsum("be,ekd->bkd", h, a["v"][...])
            o = jnp.einsum("bhd,hde->be", q, a["o"][...]) + (k.sum() + v.sum()) * 1e-9
            h = h + 1e-3 * ((jax.nn.silu(o @ m["gate"][...]) * (o @ m["up"][...])) @ m["down"][...])
        return h

    kv = jnp.ones((rows, cfg.num_kv_heads, cache_len, cfg.head_dim), jnp.float32)
    mask = jnp.ones((rows, cache_len), jnp.int32)
    q0 = jnp.ones((rows, 1, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim), jnp.float32)

    def attention(i, q, caches):
        for k, v in caches:
            q = q + 1e-3 * _cached_attention(q, k, v, jnp.full((1,), cache_len - 1), mask)
        return q

    def writes(i, caches):
        new = jnp.ones((rows, cfg.num_kv_heads, 1, cfg.head_dim), jnp.float32)
        return [tuple(jax.lax.dynamic_update_slice(c, new, (0, 0, i, 0)) for c in kv_pair) for kv_pair in caches]

    key = jax.random.key(0)

    def vocab(i, h, head):
        logits = jnp.einsum("be,ve->bv", h, head)
        token, lp = _pick(logits, jax.random.fold_in(key, i), 0.5, False, top_k, None)
        return h + 1e-6 * (lp[:, None] + token[:, None].astype(jnp.float32))

    def head_only(i, h, head):
        return h + 1e-9 * jnp.einsum("be,ve->bv", h, head)[:, :1]

    caches = lambda: [(kv + 0, kv + 0) for _ in range(cfg.num_layers)]  # noqa: E731
    return {
        "layer matmuls (QKV, O, MLP)": lambda: _loop(matmuls, iters)(x + 0, layers),
        "attention over the cache": lambda: _loop(attention, iters)(q0 + 0, caches()),
        "KV-cache writes": lambda: _loop(writes, iters)(caches()),
        "LM head matmul": lambda: _loop(head_only, iters)(x + 0, head),
        f"LM head + log-softmax + draw (top-k {top_k or 'off'})": lambda: _loop(vocab, iters)(x + 0, head),
        "empty loop": lambda: _loop(lambda i, c: c + 1, iters)(jnp.zeros((), jnp.int32)),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model is not None:
        model = hf.load(args.model)
        cfg = model.cfg
    else:
        cfg = ModelConfig.from_hf(qwen25_05b_config(args.layers, max_position_embeddings=4096, model_type="qwen2"))
        model = Decoder(cfg, rngs=nnx.Rngs(0))
    prompt = args.cache - args.iters - 1
    prompts = [np.random.default_rng(0).integers(0, 150000, prompt).tolist()]
    kw = dict(num_samples=args.rows, temperature=0.5, top_k=args.top_k, eos_ids=[cfg.vocab_size - 1], seed=0)
    short = _median_seconds(lambda: sample(model, prompts, max_new_tokens=1, **kw).tokens, args.repeats)
    full = _median_seconds(lambda: sample(model, prompts, max_new_tokens=args.iters + 1, **kw).tokens, args.repeats)
    step = (full - short) / args.iters
    rows, results = [["whole decode step (sampler)", step * 1e3, 100.0]], {"step_seconds": step}
    built = parts(model, args.rows, args.cache, args.iters, args.top_k)
    for name, fn in built.items():
        seconds = _median_seconds(fn, args.repeats) / args.iters
        results[name] = seconds
        rows.append([name, seconds * 1e3, 100 * seconds / step])
    accounted = sum(results[n] for n in built if n not in ("LM head matmul",))
    rows.append(["other (norms, RoPE, residuals, fusion boundaries)", (step - accounted) * 1e3,
                 100 * (step - accounted) / step])
    gflop = 2 * sum(cfg.matmul_params.values()) * args.rows / 1e9
    weight_gb = 4 * sum(cfg.matmul_params.values()) / 1e9
    bandwidth, peak = memory_bandwidth(), max(matmul_peak().values())
    floor = max(weight_gb / bandwidth, gflop / peak)
    results.update(bandwidth_gbps=bandwidth, matmul_peak_gflops=peak, floor_seconds=floor)
    rows.append(["floor: the weights read once at the measured bandwidth", floor * 1e3, 100 * floor / step])
    print(f"\none decode step, {weights_label(args)}, {args.rows} rows, {args.cache}-slot cache, fp32; "
          f"{gflop:.1f} GFLOP of matmuls per step = {gflop / step:.0f} GFLOP/s (peak {peak:.0f}); {weight_gb:.2f} GB "
          f"of weights per step = {weight_gb / step:.1f} GB/s (bandwidth {bandwidth:.1f} GB/s)\n")
    print(markdown_table(["part", "ms per step", "% of the step"], rows))
    if args.json:
        write_json(args.json, dict(args={k: str(v) for k, v in vars(args).items()}, results=results,
                                   environment=environment()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
