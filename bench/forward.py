"""Full-sequence forward throughput: rlsc_jax (jitted) vs transformers PyTorch, same weights, same run.

    python bench/forward.py [--layers 24] [--batch 16] [--seq 256] [--iters 5] [--warmup 1] [--json FILE]

One random fp32 Qwen2.5-0.5B-shaped `Qwen2ForCausalLM` (`--layers` decoder layers; 24 is the real
model) is saved with `save_pretrained` and loaded with `rlsc_jax.hf.load`, so both sides run the same
weights on the same token batch. Both compute the full [B, T, V] fp32 logits (that is what a plain
forward returns; at V = 151936 the LM head is most of the work for shallow models). Prints one markdown
table with tokens/s, ms/iter (median of the timed calls, interleaved jax/torch), model GFLOP/s and
that as a fraction of the machine's fp32 matmul rate (the faster of a jnp and a torch 2048^3 matmul).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import (add_protocol_args, build_shared_qwen2, check_quiet, environment,  # noqa: E402
                          jax_blocking, load_note, load_shared, machine_load, markdown_table,
                          matmul_peak, max_abs_diff, qwen25_05b_config, time_calls, torch_at_its_best, weights_label,
                          write_json)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24,
                   help="decoder layers: 24 is the real Qwen2.5-0.5B; fewer is a shallow model, labelled as such")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--iters", type=int, default=5, help="timed calls per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side after compilation")
    p.add_argument("--seed", type=int, default=0)
    add_protocol_args(p)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    for name in ("layers", "batch", "seq", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    load_before = check_quiet(args)
    torch_at_its_best()

    if args.model:
        shared = load_shared(args.model)
    else:
        shared = build_shared_qwen2(qwen25_05b_config(args.layers), seed=args.seed)
    try:
        torch_model, model = shared.torch_model, shared.jax_model
        cfg = model.cfg
        ids_np = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, (args.batch, args.seq), dtype=np.int64)

        # JAX: split once, jit a pure (state, ids) -> logits; the nnx merge is traced, not run per call.
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, ids):
            return nnx.merge(graphdef, state)(ids)

        ids_j = jnp.asarray(ids_np, dtype=jnp.int32)
        t0 = time.perf_counter()
        compiled = forward.lower(state, ids_j).compile()
        compile_s = time.perf_counter() - t0

        ids_t = torch.from_numpy(ids_np)
        out: dict[str, object] = {}

        def run_jax():
            out["jax"] = jax_blocking(compiled, state, ids_j)()

        def run_torch():
            with torch.inference_mode():
                out["torch"] = torch_model(ids_t, use_cache=False).logits

        timings = time_calls({"jax": run_jax, "torch": run_torch}, iters=args.iters, warmup=args.warmup)
        diff = max_abs_diff(out["jax"], out["torch"].numpy())
        logit_scale = float(np.max(np.abs(out["torch"].numpy())))
        out.clear()  # frees both logits before the peak is read
        peak = matmul_peak()
    finally:
        shared.cleanup()

    flops = cfg.matmul_flops(args.batch, args.seq, causal=True)
    tokens = args.batch * args.seq
    machine_peak = max(peak.values())  # the machine's fp32 matmul rate: the faster library's 2048^3 matmul
    results = {}
    for name, t in timings.items():
        gflops = flops / t.median / 1e9
        results[name] = {
            "tokens_per_s": tokens / t.median, "ms_per_iter": 1e3 * t.median, "ms_best": 1e3 * t.best,
            "times_s": t.times, "model_gflops": gflops, "library_matmul_gflops": peak[name],
            "fraction_of_matmul_peak": gflops / machine_peak,
        }
    ratio = results["jax"]["tokens_per_s"] / results["torch"]["tokens_per_s"]
    p = cfg.matmul_params

    print(f"forward: {weights_label(args)}; {load_note(load_before, machine_load(), args)}")
    print(f"forward: Qwen2.5-0.5B shapes, {cfg.num_layers} layers, fp32, batch {args.batch} x seq {args.seq} "
          f"-> full [B,T,V] = [{args.batch},{args.seq},{cfg.vocab_size}] fp32 logits; "
          f"{args.iters} timed calls per side (median), {args.warmup} warm-up")
    print(f"model FLOPs/forward: {flops / 1e9:,.1f} G (layers {p['layers'] / 1e6:.1f} M params, "
          f"LM head {p['lm_head'] / 1e6:.1f} M params, causal attention); "
          f"fp32 2048^3 matmul: jax {peak['jax']:.0f}, torch {peak['torch']:.0f} GFLOP/s "
          f"(peak = the faster, {machine_peak:.0f})")
    print()
    print(markdown_table(
        ["impl", "tokens/s", "ms/iter", "model GFLOP/s", "% of matmul peak"],
        [[name, r["tokens_per_s"], r["ms_per_iter"], r["model_gflops"], 100 * r["fraction_of_matmul_peak"]]
         for name, r in results.items()]))
    print()
    print(f"jax/torch throughput ratio: {ratio:.2f}x | jax compile: {compile_s:.1f} s (excluded) | "
          f"max |logit diff|: {diff:.2e} (max |logit| {logit_scale:.2f})")

    if args.json is not None:
        write_json(args.json, {
            "bench": "forward", "config": vars(args) | {"json": str(args.json)},
            "model": {"layers": cfg.num_layers, "vocab": cfg.vocab_size, "hidden": cfg.hidden_size,
                      "matmul_params": p, "flops_per_forward": flops},
            "results": results, "ratio_jax_over_torch": ratio, "jax_compile_s": compile_s,
            "matmul_peak_gflops": machine_peak, "max_abs_logit_diff": diff, "max_abs_logit": logit_scale, "environment": environment(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
