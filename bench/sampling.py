"""Sampling throughput: rlsc_jax's jitted sampler vs transformers `generate`, same weights, same run.

    python bench/sampling.py [--layers 24] [--new-tokens 128] [--samples 16] [--prompt-len 64] [--iters 2]
    JAX_PLATFORMS=cuda python bench/sampling.py   # both sides on the GPU, bf16

One random fp32 Qwen2.5-0.5B-shaped model (`--layers` decoder layers; 24 is the real model) on both
sides. Each case draws `--samples` completions of `--new-tokens` tokens per prompt at `--temperature` (0.5; no top-k /
top-p), for one prompt and for a batch of 4 prompts; PyTorch runs
`generate(do_sample=True, num_return_sequences=N)`. The EOS id is one the random model practically never
samples, so both sides generate the full length and tokens/s = rows x new tokens / seconds.
Roofline: 2 x (decoder + LM-head parameters) FLOPs per generated token against the machine's measured
fp32 matmul rate (attention over the short cache is ignored). Also reports bf16 parameters (JAX only:
PyTorch bf16 matmuls are unusably slow on this kind of CPU). On a GPU (`JAX_PLATFORMS=cuda`) both sides run
there in bf16 (fp32 would compare XLA's TF32 with PyTorch's full fp32), plus the sampler as training runs
it: fp32 master weights with bf16 compute.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import (build_shared_qwen2, environment, markdown_table, matmul_params, matmul_peak,  # noqa: E402
                          qwen25_05b_config, time_calls, torch_device, torch_sync, write_json)
from rlsc_jax import hf  # noqa: E402
from rlsc_jax.sampling import sample  # noqa: E402

EOS = 151935  # last vocabulary id: a random model samples it with probability ~1/V per token


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24,
                   help="decoder layers: 24 is the real Qwen2.5-0.5B; fewer is a shallow model, labelled as such")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (the paper's 0.5)")
    p.add_argument("--prompts", type=int, nargs="+", default=[1, 4], help="prompts per call, one case each")
    p.add_argument("--iters", type=int, default=2, help="timed calls per side and case")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16-parameter JAX rows")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    shared = build_shared_qwen2(qwen25_05b_config(args.layers, max_position_embeddings=4096))
    try:
        cfg = shared.jax_model.cfg
        device = torch_device()
        gpu = device == "cuda"
        bf16 = None if args.no_bf16 and not gpu else hf.load(shared.path, dtype="bfloat16")
        torch_model = shared.torch_model.to(device, torch.bfloat16 if gpu else torch.float32)
        models = {"jax bf16": bf16, "torch bf16": torch_model,
                  "jax fp32 masters, bf16 compute": hf.load(shared.path, compute_dtype="bfloat16")} if gpu else \
            {"jax fp32": shared.jax_model, "torch fp32": torch_model, **({"jax bf16": bf16} if bf16 else {})}
        baseline = "torch bf16" if gpu else "torch fp32"
        peak = max(matmul_peak("bfloat16" if gpu else "float32").values())
        flops_per_token = 2 * sum(matmul_params(cfg).values())
        rng = np.random.default_rng(0)
        rows, results = [], {}
        for num_prompts in args.prompts:
            prompts = [rng.integers(0, 150000, args.prompt_len).tolist() for _ in range(num_prompts)]
            kw = dict(num_samples=args.samples, max_new_tokens=args.new_tokens, temperature=args.temperature,
                      eos_ids=[EOS])
            ids = torch.tensor(prompts, device=device)

            def run_jax(model, seed=iter(range(10**6))):
                return jax.block_until_ready(sample(model, prompts, seed=next(seed), **kw).tokens)

            def run_torch(model):
                with torch.inference_mode():
                    out = model.generate(
                        ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=args.temperature, top_k=0,
                        top_p=1.0, max_new_tokens=args.new_tokens, num_return_sequences=args.samples,
                        eos_token_id=EOS, pad_token_id=EOS)
                torch_sync(device)
                return out

            fns = {name: functools.partial(run_torch if name.startswith("torch") else run_jax, model)
                   for name, model in models.items()}
            timings = time_calls(fns, iters=args.iters, warmup=1)
            tokens = num_prompts * args.samples * args.new_tokens
            base = tokens / timings[baseline].median
            for name, t in timings.items():
                tps = tokens / t.median
                results[f"{num_prompts}x{args.samples} {name}"] = dict(seconds=t.median, tokens_per_s=tps)
                rows.append([f"{num_prompts} prompt x {args.samples}", name, tps, t.median, tps / base,
                             100 * tps * flops_per_token / 1e9 / peak])
        print(f"\nsampling, Qwen2.5-0.5B shapes with {args.layers} layers, {args.prompt_len}-token prompts, "
              f"{args.new_tokens} new tokens, T={args.temperature}, on {device}; "
              f"{'bf16' if gpu else 'fp32'} matmul peak {peak:.0f} GFLOP/s\n")
        print(markdown_table(["case", "side", "tokens/s", "s/call", "vs torch", "% of roofline"], rows))
        if args.json:
            write_json(args.json, dict(args=vars(args) | {"json": str(args.json)}, peak_gflops=peak,
                                       results=results, environment=environment()))
    finally:
        shared.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
