"""`rlsc_jax.plan`'s estimates against one real device: the same config's RLSC step run on the local accelerator.

    JAX_PLATFORMS=cuda python bench/plan_check.py --config configs/paper_qwen25_math_1.5b.yaml \
        model=configs/models/qwen2.5-math-1.5b [--prompt-len 256] [--hardware h100-80gb] [--plan-json FILE]

The plan compiles the step's programs with XLA:CPU for one simulated device and judges them against the
vendor's figures (`--hardware`); here the same programs run on this process's first device with random
weights of the config's model shape (every completion runs to `sampling.max_new_tokens`, the plan's worst
case): one sampling call (prefill + decode) and one train step on its samples, each once to compile and
once timed. Memory: the allocator's peak after sampling, then after the step (the process holds the
parameters and optimizer state throughout, as the plan counts them), and the GPU compiler's own
`memory_analysis()` of the step. `--plan-json` reuses a plan written by `python -m rlsc_jax.plan --json`
for the same config, `--devices 1` and `--prompt-len` (else it runs in a subprocess on the host CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the allocator's peak is then this run's own

GiB = 1024**3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config, as for train.py")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (a power-of-two bucket, as the plan's)")
    p.add_argument("--hardware", default="h100-80gb", help="what the plan judges against (rlsc_jax.hardware)")
    p.add_argument("--plan-json", type=Path, help="a plan already written for this config with --devices 1")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_intermixed_args(argv)


def run_plan(args) -> dict:
    """The plan's report for this config on one simulated device (a host-CPU subprocess)."""
    if args.plan_json:
        return json.loads(args.plan_json.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [sys.executable, "-m", "rlsc_jax.plan", "--devices", "1", "--prompt-len", str(args.prompt_len),
               "--hardware", args.hardware, "--json", str(out), *(["--config", args.config] if args.config else []),
               *args.overrides]
        subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def peak_bytes() -> float:
    """The allocator's peak on this process's first device (nan on a CPU, whose allocator keeps no count)."""
    import jax
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] if stats else float("nan")


def timed(fn):
    """(result, seconds) of fn() once compiled: one call to compile, one timed."""
    import jax
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def measure(args) -> dict:
    """Sampling and one train step of the config on this process's first device, random weights."""
    import jax
    import numpy as np
    from flax import nnx

    from rlsc_jax.config import load_config
    from rlsc_jax.validation import validate
    from rlsc_jax.dtypes import DTYPES
    from rlsc_jax.models import Decoder, ModelConfig
    from rlsc_jax.sampling import sample
    from rlsc_jax.sharding import make_run_mesh
    from rlsc_jax.training import Trainer

    cfg = load_config(args.config, args.overrides)
    validate(cfg)
    s = cfg.sampling
    model_cfg = ModelConfig.from_file(cfg.model)
    mesh = make_run_mesh(cfg, devices=jax.devices()[:1])
    model = Decoder(model_cfg, dtype=DTYPES[cfg.dtype], compute_dtype=DTYPES[cfg.compute_dtype], rngs=nnx.Rngs(0))
    trainer, state = Trainer.create(model, cfg, mesh)
    del model
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model_cfg.vocab_size - 1, args.prompt_len).tolist()
               for _ in range(cfg.questions_per_step)]
    seeds = iter(range(10**6))
    samples, sample_s = timed(lambda: sample(
        trainer.model(state), prompts, num_samples=s.num_samples, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, eos_ids=[model_cfg.vocab_size - 1],
        seed=next(seeds)))
    out = {"sampling_seconds": sample_s, "peak_after_sampling_bytes": peak_bytes(),
           "generated_tokens": int(np.asarray(samples.completion_mask).sum())}
    batch = trainer.batch(samples)
    t0 = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics["loss"])
    out["train_compile_and_step_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics["loss"])
    out["train_step_seconds"] = time.perf_counter() - t0
    out["peak_after_train_bytes"] = peak_bytes()
    memory = trainer.compile_step(state, len(prompts) * s.num_samples, args.prompt_len, s.max_new_tokens) \
        .memory_analysis()
    out["gpu_compiled_train_peak_bytes"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                            - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    out["gpu_compiled_train_temp_bytes"] = memory.temp_size_in_bytes
    out["device"] = str(jax.devices()[0].device_kind)
    return out


def table(plan: dict, got: dict) -> str:
    gib = lambda b: f"{b / GiB:.2f}"  # noqa: E731
    train = plan["programs"]["train_step"]
    sec = plan.get("judgement", {}).get("seconds", {})
    decode = sec.get("decode_per_token", 0) * plan["max_new_tokens"] + sec.get("prefill", 0)
    rows = [
        ("train step peak, GiB", gib(train["peak_bytes"]), gib(got["gpu_compiled_train_peak_bytes"]),
         gib(got["peak_after_train_bytes"])),
        ("train step temp, GiB", gib(train["temp_bytes"]), gib(got["gpu_compiled_train_temp_bytes"]), "-"),
        ("sampling peak (optimizer state resident), GiB", gib(plan["sampling_peak_bytes"]), "-",
         gib(got["peak_after_sampling_bytes"])),
        ("sampling seconds (prefill + decode)", f"{decode:.2f}", "-", f"{got['sampling_seconds']:.2f}"),
        ("train step seconds", f"{sec.get('train_step', float('nan')):.2f}", "-", f"{got['train_step_seconds']:.2f}"),
    ]
    lines = [f"RLSC step on {got['device']}: {plan['rows']} rows x ({plan['prompt_width']} + {plan['max_new_tokens']})"
             f" tokens, {plan['model']['num_params'] / 1e9:.2f} B parameters, {plan['dtype']} masters, "
             f"{plan['compute_dtype']} compute; {got['generated_tokens']} tokens generated",
             "", "| figure | plan (XLA:CPU, judged) | GPU compiler | measured |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = run_plan(args)
    got = measure(args)
    print(table(plan, got))
    if args.json:
        args.json.write_text(json.dumps({"plan": plan, "measured": got}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
