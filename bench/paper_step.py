"""The paper's RLSC step on one accelerator, per setting: the train step's model-FLOPs utilisation for each
attention x remat setting, and the sampler's decode against its memory-bandwidth bound.

    JAX_PLATFORMS=cuda python bench/paper_step.py --config configs/paper_qwen25_math_1.5b.yaml \
        model=configs/models/qwen2.5-math-1.5b --hardware h200 [--settings xla:true cudnn:true cudnn:auto] \
        [--decode] [--json FILE]

Random weights of the config's model shape; every completion at full length (`sampling.max_new_tokens`), the
prompts left-padded to different lengths within `--prompt-len` (so the fused attention's row rotation is
exercised). Per setting (`ATTENTION:REMAT`, REMAT one of true, false, dots, nothing, auto): the step compiled
once, then timed `--iters` times; the XLA compiler's own `memory_analysis()` peak and the allocator's peak.
MFU = (6 x matmul parameters x tokens + attention FLOPs) / seconds / the datasheet's dense rate, attention
counted both full-square (as `rlsc_jax.plan` counts it) and causal (half of it: the work a causal kernel does).
Decode: one sampling call of 1 prompt x `sampling.num_samples` rows x `max_new_tokens`, its seconds per
decoded token against the HBM bound of reading, per token, the decode layout's weights plus the KV cache
filled so far (on average), and plus the cache windows the step really reads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 1024**3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config, as for train.py")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt width (rows are left-padded within it)")
    p.add_argument("--hardware", default="h200", help="the datasheet figures MFU and the bound are taken against")
    p.add_argument("--settings", nargs="+", default=["xla:true", "cudnn:true", "cudnn:auto"],
                   help="ATTENTION:REMAT pairs to time (REMAT: true, false, dots, nothing or auto)")
    p.add_argument("--iters", type=int, default=2, help="timed steps per setting, after one to compile")
    p.add_argument("--decode", nargs="*", choices=["default", "cpu-layout"],
                   help="also time one sampling call against its bound: as the backend chooses, and/or with the "
                        "CPU's choices forced (windowed cache reads, top-k by bisection)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_intermixed_args(argv)


def allocator_peak() -> float:
    import jax
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] if stats else float("nan")


def full_length_batch(trainer, rows: int, prompt_len: int, completion_len: int, vocab: int):
    """Random prompts left-padded to lengths spread over [prompt_len / 2, prompt_len], completions at full length."""
    import numpy as np

    from rlsc_jax.sampling import Samples
    rng = np.random.default_rng(0)
    prompt_mask = np.zeros((rows, prompt_len), np.int32)
    for r, n in enumerate(np.linspace(prompt_len // 2, prompt_len, rows).astype(int)):
        prompt_mask[r, prompt_len - n:] = 1
    tokens = rng.integers(0, vocab - 1, (rows, completion_len), dtype=np.int32)
    samples = Samples(tokens=tokens, completion_mask=np.ones_like(tokens), lengths=np.full(rows, completion_len),
                      logprobs=np.zeros(tokens.shape, np.float32),
                      prompt_ids=rng.integers(0, vocab - 1, (rows, prompt_len), dtype=np.int32) * prompt_mask,
                      prompt_mask=prompt_mask)
    return trainer.batch(samples, np.zeros(rows, np.int32))


def time_setting(trainer, state, batch, setting: str, shape: tuple, iters: int) -> tuple[dict, dict]:
    """(figures, state) for one ATTENTION:REMAT setting; the state is donated through the steps."""
    import jax

    from rlsc_jax import fit
    from rlsc_jax.models.decoder import ATTENTION, REMAT_POLICIES
    attention, remat = setting.split(":")
    trainer = dataclasses.replace(trainer, attention=ATTENTION[attention])
    out = {"setting": setting}
    if remat == "auto":
        memory = fit.device_memory_bytes()
        trainer, tried = fit.fit(trainer, state, *shape, memory)
        out["auto"] = fit.report(trainer, tried, memory)
        print(out["auto"], flush=True)
    else:
        policy = {"true": "nothing", "false": None}.get(remat, remat)
        assert policy is None or policy in REMAT_POLICIES, remat
        trainer = dataclasses.replace(trainer, remat=policy)
    out.update(remat=trainer.remat, grad_accum=trainer.grad_accum, compiled_peak_bytes=fit.peak_bytes(
        trainer, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state), *shape))
    t0 = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics["loss"])
    out["compile_and_first_step_seconds"] = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = trainer.step(state, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    out.update(times=times, seconds=min(times), loss=float(metrics["loss"]), allocator_peak_bytes=allocator_peak())
    return out, state


def decode_figures(model, cfg, prompt_len: int, hbm: float, profile: Path | None = None) -> dict:
    """One sampling call at full length, and the bandwidth bound of its decode steps; `profile`: the timed call
    is also traced there (`jax.profiler`)."""
    import jax
    import numpy as np
    from flax import nnx

    from rlsc_jax import sampling
    from rlsc_jax.models import decoder
    from rlsc_jax.models.decoder import CACHE_WINDOWS
    s = cfg.sampling
    model_cfg = model.cfg
    prompt = np.random.default_rng(1).integers(0, model_cfg.vocab_size - 1, prompt_len).tolist()
    call = lambda seed: sampling.sample(model, [prompt], num_samples=s.num_samples,  # noqa: E731
                                        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                        top_p=s.top_p, eos_ids=[model_cfg.vocab_size - 1], seed=seed)
    t0 = time.perf_counter()
    jax.block_until_ready(call(0).tokens)
    compile_s = time.perf_counter() - t0
    with jax.profiler.trace(str(profile)) if profile else contextlib.nullcontext():
        t0 = time.perf_counter()
        samples = call(1)
        jax.block_until_ready(samples.tokens)
        seconds = time.perf_counter() - t0
    graphdef, params = nnx.split(model)
    layers, head = sampling.Sampler(graphdef, s.num_samples, s.max_new_tokens, (0,), 0).layout(params)
    weights = sum(x.nbytes for x in jax.tree.leaves((layers, head)))
    if head is None:  # tied and uncast: the LM head is the embedding itself
        weights += model.embed[...].nbytes
    itemsize = np.dtype(model.compute_dtype).itemsize
    per_slot = 2 * model_cfg.num_layers * model_cfg.num_kv_heads * model_cfg.head_dim * itemsize * s.num_samples
    width = sampling.bucket_length(prompt_len)
    slots = width + np.arange(s.max_new_tokens)  # the query's slot at each decode step
    cache_len = width + s.max_new_tokens
    windowed = decoder.WINDOWED_CACHE if decoder.WINDOWED_CACHE is not None else jax.default_backend() == "cpu"
    windows = np.array([next((w for w in CACHE_WINDOWS if w > q and windowed), cache_len) for q in slots])
    filled, read = per_slot * (slots + 1).mean(), per_slot * np.minimum(windows, cache_len).mean()
    per_token = seconds / s.max_new_tokens
    return {"compile_and_first_call_seconds": compile_s, "seconds": seconds, "seconds_per_token": per_token,
            "generated_tokens": int(np.asarray(samples.completion_mask).sum()),
            "weight_bytes": weights, "filled_cache_bytes_mean": filled, "window_cache_bytes_mean": read,
            "bound_filled_seconds_per_token": (weights + filled) / hbm,
            "bound_windows_seconds_per_token": (weights + read) / hbm,
            "fraction_of_bound_filled": (weights + filled) / hbm / per_token,
            "fraction_of_bound_windows": (weights + read) / hbm / per_token,
            "allocator_peak_bytes": allocator_peak()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    from flax import nnx

    from rlsc_jax.config import load_config
    from rlsc_jax.dtypes import DTYPES
    from rlsc_jax.hardware import get_hardware
    from rlsc_jax.models import Decoder, ModelConfig
    from rlsc_jax.sharding import make_run_mesh
    from rlsc_jax.training import Trainer
    from rlsc_jax.validation import validate

    hardware = get_hardware(args.hardware)
    cfg = load_config(args.config, [*args.overrides, "remat=false", "attention=xla"])
    validate(cfg)
    model_cfg = ModelConfig.from_file(cfg.model)
    mesh = make_run_mesh(cfg, devices=jax.devices()[:1])
    model = Decoder(model_cfg, dtype=DTYPES[cfg.dtype], compute_dtype=DTYPES[cfg.compute_dtype], rngs=nnx.Rngs(0))
    trainer, state = Trainer.create(model, cfg, mesh)
    del model
    rows, width = cfg.questions_per_step * cfg.sampling.num_samples, args.prompt_len + cfg.sampling.max_new_tokens
    shape = (rows, args.prompt_len, cfg.sampling.max_new_tokens)
    batch = full_length_batch(trainer, *shape, model_cfg.vocab_size)
    flops = model_cfg.matmul_flops(rows, width, train=True)
    causal = model_cfg.matmul_flops(rows, width, train=True, causal=True)
    peak = hardware.matmul_flops(cfg.compute_dtype)
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "hardware": hardware.name,
              "rows": rows, "prompt_len": args.prompt_len, "completion_len": cfg.sampling.max_new_tokens,
              "num_params": model_cfg.num_params, "train_flops": flops, "causal_train_flops": causal,
              "settings": []}
    print(f"{report['device']}, jax {jax.__version__}: {model_cfg.num_params / 1e9:.2f} B parameters, "
          f"{rows} rows x ({args.prompt_len} + {cfg.sampling.max_new_tokens}) tokens, {cfg.dtype} masters, "
          f"{cfg.compute_dtype} compute; {flops / 1e12:.0f} TFLOP per step (causal {causal / 1e12:.0f})",
          flush=True)
    print("| attention:remat | chosen | s/step | MFU (full-square attn) | MFU (causal attn) | compiled peak GiB | "
          "allocator peak GiB | compile + 1st step s |\n|---|---|---|---|---|---|---|---|", flush=True)
    for setting in args.settings:
        try:
            row, state = time_setting(trainer, state, batch, setting, shape, args.iters)
        except Exception as e:  # noqa: BLE001  one setting failing (out of memory, no cuDNN) leaves the others
            row = {"setting": setting, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"| {setting} | failed: {row['error']} |", flush=True)
            report["settings"].append(row)
            continue
        row["mfu"], row["mfu_causal"] = flops / row["seconds"] / peak, causal / row["seconds"] / peak
        report["settings"].append(row)
        print(f"| {setting} | remat {row['remat'] or 'off'}, accum {row['grad_accum']} | {row['seconds']:.3f} | "
              f"{row['mfu']:.1%} | {row['mfu_causal']:.1%} | {row['compiled_peak_bytes'] / GiB:.1f} | "
              f"{row['allocator_peak_bytes'] / GiB:.1f} | {row['compile_and_first_step_seconds']:.1f} |", flush=True)
    for variant in (args.decode or ["default"]) if args.decode is not None else []:
        if variant == "cpu-layout":
            from rlsc_jax import sampling
            from rlsc_jax.models import decoder
            decoder.WINDOWED_CACHE = sampling.TOP_K_BISECTION = True
            jax.clear_caches()
        d = decode_figures(trainer.model(state), cfg, args.prompt_len, hardware.hbm_bytes_per_s)
        report[f"decode_{variant}"] = d
        print(f"decode ({variant}), {cfg.sampling.num_samples} rows x {cfg.sampling.max_new_tokens} tokens: {d['seconds']:.2f} s, "
              f"{d['seconds_per_token'] * 1e3:.2f} ms per token; bound at {hardware.hbm_bytes_per_s / 1e12:.1f} TB/s: "
              f"{d['bound_filled_seconds_per_token'] * 1e3:.2f} ms (weights {d['weight_bytes'] / GiB:.2f} GiB + "
              f"filled cache {d['filled_cache_bytes_mean'] / GiB:.2f} GiB) = {d['fraction_of_bound_filled']:.0%} of "
              f"the bound; counting the cache windows read ({d['window_cache_bytes_mean'] / GiB:.2f} GiB): "
              f"{d['fraction_of_bound_windows']:.0%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
