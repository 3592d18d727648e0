"""Sampling throughput: rlsc_jax's jitted sampler vs transformers `generate`, same weights, same run.

    python bench/sampling.py --model DIR [--new-tokens 64 256] [--top-k 50] [--iters 3]   # real weights first
    python bench/sampling.py [--layers 24]                                                # random weights
    JAX_PLATFORMS=cuda python bench/sampling.py --model DIR   # both sides on the GPU, bf16

`--model` is a Hugging Face checkpoint directory (e.g. the one `../shared/tools/real_model.py` builds), loaded by
both sides; without it, one random fp32 Qwen2.5-0.5B-shaped model `--layers` deep. Real weights get a GSM8K
question in the model's chat template as the prompt, random weights `--prompt-len` random ids. Each case draws
`--samples` completions of `--new-tokens` tokens for `--prompts` prompts at `--temperature` (0.5) with `--top-k`;
PyTorch runs `generate(do_sample=True, num_return_sequences=N)` at its best (every core, denormals flushed, SDPA).
The EOS id is past the tokenizer's ids, so both sides generate the full length: tokens/s = rows x new tokens /
seconds. Calls alternate between the sides; each row gives the median and the range of `--iters` calls, and the
table the machine's load per core before and after (the script refuses a busy machine unless --allow-busy).
Roofline: 2 x (decoder + LM-head parameters) FLOPs per token against the machine's measured matmul rate. On a GPU
both sides run in bf16, plus the sampler as training runs it: fp32 master weights with bf16 compute.
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

from bench.common import (add_protocol_args, check_quiet, environment, load_note, machine_load,  # noqa: E402
                          markdown_table, matmul_peak, shared_model, spread, time_calls,
                          torch_at_its_best, torch_device, torch_sync, weights_label, write_json)
from rlsc_jax import hf  # noqa: E402
from rlsc_jax.sampling import sample  # noqa: E402

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_args(p)
    p.add_argument("--layers", type=int, default=24,
                   help="decoder layers of the random model: 24 is the real Qwen2.5-0.5B; fewer is shallow, labelled")
    p.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256], help="new tokens per row, one case each")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64, help="random prompt tokens (random weights only)")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (the paper's 0.5)")
    p.add_argument("--top-k", type=int, default=0, help="top-k filter on both sides (the paper's sampler: 50)")
    p.add_argument("--prompts", type=int, nargs="+", default=[1], help="prompts per call, one case each")
    p.add_argument("--iters", type=int, default=3, help="timed calls per side and case, interleaved")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16-parameter JAX rows")
    p.add_argument("--no-torch", action="store_true",
                   help="the JAX rows alone, against the first case (e.g. rows per call: --prompts 16 64 --samples 1)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def prompt_ids(args, shared, rng) -> list[int]:
    """A GSM8K question in the model's chat template (real weights), or random ids (random weights)."""
    if args.model is None:
        return rng.integers(0, 150000, args.prompt_len).tolist()
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    return tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    load_before = check_quiet(args)
    torch_at_its_best()
    shared = shared_model(args, max_position_embeddings=4096)
    try:
        cfg = shared.jax_model.cfg
        eos = cfg.vocab_size  # past every id: never sampled, so every row runs the full length
        device = torch_device()
        gpu = device == "cuda"
        bf16 = None if args.no_bf16 and not gpu else hf.load(shared.path, dtype="bfloat16")
        torch_model = shared.torch_model.to(device, torch.bfloat16 if gpu else torch.float32)
        models = {"jax bf16": bf16, "torch bf16": torch_model,
                  "jax fp32 masters, bf16 compute": hf.load(shared.path, compute_dtype="bfloat16")} if gpu else \
            {"jax fp32": shared.jax_model, "torch fp32": torch_model, **({"jax bf16": bf16} if bf16 else {})}
        if args.no_torch:
            models = {k: v for k, v in models.items() if not k.startswith("torch")}
        baseline = "torch bf16" if gpu else "torch fp32"
        peak = max(matmul_peak("bfloat16" if gpu else "float32").values())
        flops_per_token = 2 * sum(cfg.matmul_params.values())
        rng = np.random.default_rng(0)
        rows, results, first = [], {}, None
        for num_prompts in args.prompts:
            prompts = [prompt_ids(args, shared, rng) for _ in range(num_prompts)]
            ids = torch.tensor(prompts, device=device)
            for new_tokens in args.new_tokens:
                kw = dict(num_samples=args.samples, max_new_tokens=new_tokens, temperature=args.temperature,
                          top_k=args.top_k, eos_ids=[eos])

                def run_jax(model, kw=kw, seed=iter(range(10**6))):
                    return jax.block_until_ready(sample(model, prompts, seed=next(seed), **kw).tokens)

                def run_torch(model, new_tokens=new_tokens):
                    with torch.inference_mode():
                        out = model.generate(
                            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=args.temperature,
                            top_k=args.top_k, top_p=1.0, max_new_tokens=new_tokens,
                            num_return_sequences=args.samples, eos_token_id=eos, pad_token_id=eos)
                    torch_sync(device)
                    return out

                fns = {name: functools.partial(run_torch if name.startswith("torch") else run_jax, model)
                       for name, model in models.items()}
                timings = time_calls(fns, iters=args.iters, warmup=1)
                tokens = num_prompts * args.samples * new_tokens
                if args.no_torch:  # against the first case's first side, per row and token
                    first = first or tokens / timings[next(iter(timings))].median
                    base = first
                else:
                    base = tokens / timings[baseline].median
                case = f"{num_prompts} prompt x {args.samples} x {new_tokens}"
                for name, t in timings.items():
                    tps = tokens / t.median
                    results[f"{case} {name}"] = dict(seconds=t.times, tokens_per_s=tps, ratio=tps / base)
                    rows.append([case, name, tps, spread(t), tps / base,
                                 100 * tps * flops_per_token / 1e9 / peak])
        load_after = machine_load()
        print(f"\nsampling, {weights_label(args)}, T={args.temperature}, top-k {args.top_k or 'off'}, on {device}; "
              f"{'bf16' if gpu else 'fp32'} matmul peak {peak:.0f} GFLOP/s; "
              f"{load_note(load_before, load_after, args)}\n")
        print(markdown_table(["case", "side", "tokens/s", "s/call (range)",
                              "vs the first case" if args.no_torch else "vs torch", "% of roofline"], rows))
        if args.json:
            write_json(args.json, dict(args={k: str(v) for k, v in vars(args).items()}, peak_gflops=peak,
                                       load_per_core=[load_before, load_after], weights=weights_label(args),
                                       results=results, environment=environment()))
    finally:
        shared.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
