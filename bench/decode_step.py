"""The sampler's decode on one accelerator against its memory-bandwidth bound, optionally profiled.

    JAX_PLATFORMS=cuda python bench/decode_step.py --config configs/paper_qwen25_math_1.5b.yaml \
        model=configs/models/qwen2.5-math-1.5b --hardware h200 [--share 8] [--profile DIR] [--json FILE]

Random weights of the config's model (parameters in `dtype`, decoded in `compute_dtype`, as in training), one
sampling call of 1 prompt x `sampling.num_samples` rows x `sampling.max_new_tokens` after compiling (the same
figures as `paper_step.py --decode`, without building a train state). XLA flags (command buffers, dumps) come from
`XLA_FLAGS`, so each setting is its own process.

`--share N` decodes a model whose MLP hidden units and vocabulary are an N-th of the config's: what one of N
devices reads per token under a tensor-parallel decode layout (`mesh.rules.decode_split`), without the layout's
collectives. `--profile DIR` traces the timed call and prints where the accelerator's time went: kernels per
decoded token, the time they were busy against the wall time, and the costliest kernels.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GiB = 1024**3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config, as for train.py")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt length in tokens")
    p.add_argument("--hardware", default="h200", help="the datasheet bandwidth the bound is taken against")
    p.add_argument("--share", type=int, default=1, help="decode an N-th of the MLP and vocabulary (see above)")
    p.add_argument("--label", default="default", help="the row's name in the table and the JSON")
    p.add_argument("--profile", type=Path, help="trace the timed call into this folder and summarise it")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_intermixed_args(argv)


def profile_summary(folder: Path, tokens: int, top: int = 12) -> dict:
    """Kernels on the accelerator's busiest stream in the trace under `folder`: count per decoded token, busy time
    against the stream's span, and the `top` kernels by total time."""
    import jax
    path = max(folder.rglob("*.xplane.pb"), key=lambda f: f.stat().st_mtime)
    planes = [p for p in jax.profiler.ProfileData.from_file(str(path)).planes if p.name.startswith("/device:")]
    streams = [(line.name, list(line.events)) for plane in planes for line in plane.lines
               if line.name.startswith("Stream")]
    if not streams:
        return {"error": f"no device streams in {path.name}"}
    name, events = max(streams, key=lambda s: sum(e.duration_ns for e in s[1]))
    busy = sum(e.duration_ns for e in events)
    span = max(e.start_ns + e.duration_ns for e in events) - min(e.start_ns for e in events)
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        by_name[e.name][0] += 1
        by_name[e.name][1] += e.duration_ns
    kernels = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {"stream": name, "kernels": len(events), "kernels_per_token": len(events) / tokens,
            "busy_ns": busy, "span_ns": span, "busy_fraction": busy / span,
            "mean_kernel_ns": busy / len(events), "mean_gap_ns": (span - busy) / len(events),
            "top": [{"name": n[:120], "count": c, "total_ns": t} for n, (c, t) in kernels]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    from flax import nnx

    from paper_step import decode_figures
    from rlsc_jax.config import load_config
    from rlsc_jax.dtypes import DTYPES
    from rlsc_jax.hardware import get_hardware
    from rlsc_jax.models import Decoder, ModelConfig

    hardware = get_hardware(args.hardware)
    cfg = load_config(args.config, args.overrides)
    model_cfg = ModelConfig.from_file(cfg.model)
    if args.share > 1:
        model_cfg = dataclasses.replace(model_cfg, intermediate_size=model_cfg.intermediate_size // args.share,
                                        vocab_size=model_cfg.vocab_size // args.share)
    model = Decoder(model_cfg, dtype=DTYPES[cfg.dtype], compute_dtype=DTYPES[cfg.compute_dtype], rngs=nnx.Rngs(0))
    d = decode_figures(model, cfg, args.prompt_len, hardware.hbm_bytes_per_s, args.profile)
    s = cfg.sampling
    report = {"label": args.label, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "share": args.share, "num_params": model_cfg.num_params, "rows": s.num_samples,
              "prompt_len": args.prompt_len, "new_tokens": s.max_new_tokens, **d}
    print(f"| {args.label} | {model_cfg.num_params / 1e9:.2f} B{f' (1/{args.share} share)' if args.share > 1 else ''} "
          f"| {s.num_samples} x {s.max_new_tokens} | {d['seconds_per_token'] * 1e3:.3f} | "
          f"{d['bound_filled_seconds_per_token'] * 1e3:.3f} | {d['fraction_of_bound_filled']:.0%} | "
          f"{d['weight_bytes'] / GiB:.2f} + {d['filled_cache_bytes_mean'] / GiB:.2f} | "
          f"{d['compile_and_first_call_seconds']:.0f} |", flush=True)
    if args.profile:
        report["profile"] = p = profile_summary(args.profile, s.max_new_tokens)
        if "error" in p:
            print(f"profile: {p['error']}", flush=True)
        else:
            print(f"profile ({p['stream']}): {p['kernels_per_token']:.0f} kernels per token, busy "
                  f"{p['busy_fraction']:.0%} of the span, mean kernel {p['mean_kernel_ns'] / 1e3:.2f} us, mean gap "
                  f"{p['mean_gap_ns'] / 1e3:.2f} us", flush=True)
            for k in p["top"]:
                print(f"  {k['total_ns'] / p['busy_ns']:6.1%} {k['count']:7d} x {k['total_ns'] / k['count'] / 1e3:7.2f} us "
                      f"{k['name']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
