"""Will it fit? Compiles (never runs) one RLSC step's programs for a config and reports per-device memory,
FLOPs and collective traffic.

    python -m rlsc_jax.plan [--config FILE] [key=value ...] [--devices 8 | --topology v5e:2x2] [--prompt-len 256]
                            [--hardware h200] [--strict] [--json FILE]

(`rlsc-plan` once installed.)

Reads only the model's `config.json` (no weights), simulates the mesh's devices on the host CPU, builds
abstract parameters and optimizer state, and compiles with XLA:CPU the train step (the config's rows,
grad_accum, remat, dtypes, widths `--prompt-len` + `sampling.max_new_tokens`), the sampler's prefill
and its decode loop. Memory comes from `memory_analysis()`, FLOPs and collective bytes from the
partitioned HLO (`rlsc_jax.hlo`). GPU and TPU compilers schedule and fuse differently: take the
figures as estimates of the same programs, not measurements. `--topology` compiles instead for a TPU slice of
that topology with the TPU compiler itself, ahead of time on this host (libtpu installed, no TPU needed, as
MaxText's train_compile does): its memory figures are then the TPU compiler's own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlsc_jax.cli import exit_process, prog, run_command
from rlsc_jax.files import atomic_write_json, check_writable

GiB = 1024**3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("plan"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config, as for train.py")
    p.add_argument("--devices", type=int, default=8, help="devices to simulate (the mesh's -1 takes the rest)")
    p.add_argument("--topology", help="compile for this TPU slice instead (e.g. v5e:2x2, v5p:2x2x1; needs libtpu)")
    p.add_argument("--prompt-len", type=int, default=256,
                   help="longest prompt in tokens (rounded up to the sampler's power-of-two bucket)")
    p.add_argument("--hardware", help="a100-80gb, h100-80gb, h200, tpu-v5e or tpu-v5p: adds a verdict and a step time")
    p.add_argument("--strict", action="store_true", help="exit 3 when the config does not fit --hardware")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_intermixed_args(argv)


def simulate_devices(count: int) -> None:
    """Makes JAX see `count` CPU devices; must run before JAX initialises (an error if it already has too few)."""
    if "jax" not in sys.modules:
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
    import jax
    if len(jax.devices()) < count:
        raise ValueError(f"--devices {count}: JAX already started with {len(jax.devices())} devices")


def topology_devices(name: str) -> list:
    """The devices of a TPU slice of topology `name`, to compile for ahead of time (libtpu, no TPU needed)."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"--topology {name}: needs libtpu to compile for TPUs (pip install -e \".[tpu]\")")
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as e:  # noqa: BLE001  libtpu's own message for an unknown topology
        raise ValueError(f"--topology {name}: {str(e).splitlines()[0]}") from None


def _per_device_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree (its largest shard of each array)."""
    import jax
    import numpy as np
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * leaf.dtype.itemsize
    return total


def _program(compiled) -> dict:
    """Memory (memory_analysis) and HLO totals of one compiled program, per device."""
    from rlsc_jax import hlo
    memory = compiled.memory_analysis()
    totals, loops = hlo.analyze(compiled.as_text())
    out = {"argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
           "alias_bytes": memory.alias_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
           **totals.as_dict(), "xla_cost_analysis_flops": float((compiled.cost_analysis() or {}).get("flops", 0.0))}
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    if loops:
        out["per_iteration"] = loops[0].as_dict()
    return out


def _abstract(compiled_outputs):
    """ShapeDtypeStructs (with shardings) of a compiled program's outputs, to lower the next program on."""
    import jax
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        compiled_outputs.out_info, compiled_outputs.output_shardings)


def plan(cfg, devices: int | list, prompt_len: int, memory_bytes: float | None = None) -> dict:
    """Compiles the step's programs for `cfg` on `devices` simulated devices (or on the given devices, e.g. a
    TPU topology's); returns every figure.

    `remat: auto` is resolved against `memory_bytes` per device (`rlsc_jax.fit`); `attention: cudnn` and `splash`
    are planned with the XLA attention (XLA:CPU has neither kernel; a fused kernel needs less memory, not more)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rlsc_jax import fit, sampling
    from rlsc_jax.dtypes import DTYPES
    from rlsc_jax.models import Decoder, ModelConfig
    from rlsc_jax.sharding import make_run_mesh, replicated, use_mesh
    from rlsc_jax.training import Trainer
    from rlsc_jax.validation import validate

    validate(cfg)
    if cfg.remat == "auto" and memory_bytes is None:
        raise ValueError("remat=auto: give --hardware, whose memory the plan chooses the setting against")
    attention = cfg.attention
    cfg = dataclasses.replace(cfg, attention="xla")
    model_cfg = ModelConfig.from_file(cfg.model)
    s = cfg.sampling
    devices = jax.devices()[:devices] if isinstance(devices, int) else devices
    mesh = make_run_mesh(cfg, devices=devices)
    model = nnx.eval_shape(lambda: Decoder(model_cfg, dtype=DTYPES[cfg.dtype], compute_dtype=DTYPES[cfg.compute_dtype],
                                           rules=cfg.mesh.rules, rngs=nnx.Rngs(0)))
    trainer, state = Trainer.create(model, cfg, mesh)
    prompt_width = sampling.bucket_length(prompt_len)
    if prompt_width + s.max_new_tokens > model_cfg.max_position_embeddings:
        raise ValueError(f"--prompt-len {prompt_len} (bucket {prompt_width}) + sampling.max_new_tokens "
                         f"{s.max_new_tokens} exceeds the model's {model_cfg.max_position_embeddings} positions")
    rows = cfg.questions_per_step * s.num_samples
    fit_tried = None
    if cfg.remat == "auto":
        trainer, fit_tried = fit.fit(trainer, state, rows, prompt_width, s.max_new_tokens, memory_bytes)
    programs = {"train_step": _program(trainer.compile_step(state, rows, prompt_width, s.max_new_tokens))}

    graphdef = nnx.graphdef(model)
    params = state.params
    put = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=replicated(mesh))  # noqa: E731
    prompts = sampling.bucket_rows(cfg.questions_per_step)
    key_data = np.asarray(jax.random.key_data(jax.random.key(0)))
    sampler = sampling.Sampler(graphdef, num_samples=s.num_samples, max_new_tokens=s.max_new_tokens, eos_ids=(0,),
                               pad_id=0, greedy=s.temperature == 0, top_k=s.top_k, top_p=s.top_p < 1.0)
    scalar = put((), jnp.float32)
    with use_mesh(mesh):  # as `sampling.sample` runs them
        layout = _abstract(sampling._layout.lower(sampler, params).compile())
        prompt = put((prompts, prompt_width), jnp.int32)
        prefill = sampling._prefill.lower(sampler, params, layout, prompt, prompt).compile()
        prefilled = _abstract(prefill)
        decode = sampling._decode.lower(sampler, params, layout, prefilled.cache, prefilled.replace(cache=None),
                                        put(key_data.shape, key_data.dtype), scalar, scalar).compile()
    programs["prefill"] = _program(prefill)
    programs["decode"] = _program(decode)

    param_bytes = _per_device_bytes(state.params)
    opt_bytes = _per_device_bytes(state.opt_state)
    sampling_peak = opt_bytes + max(programs["prefill"]["peak_bytes"], programs["decode"]["peak_bytes"])
    width = prompt_width + s.max_new_tokens
    return {
        "model": {"path": cfg.model, "num_params": model_cfg.num_params, "num_layers": model_cfg.num_layers},
        "mesh": dict(mesh.shape), "devices": len(devices), "device_kind": devices[0].device_kind, "dtype": cfg.dtype,
        "compute_dtype": cfg.compute_dtype,
        "rows": rows, "grad_accum": trainer.grad_accum, "remat": trainer.remat, "remat_auto": fit_tried,
        "attention": attention,
        "prompt_width": prompt_width, "max_new_tokens": s.max_new_tokens,
        "parameter_bytes": param_bytes, "optimizer_state_bytes": opt_bytes, "gradient_bytes": param_bytes,
        "decode_layout_bytes": _per_device_bytes(layout),
        "programs": programs,
        "per_device_peak_bytes": max(programs["train_step"]["peak_bytes"], sampling_peak),
        "sampling_peak_bytes": sampling_peak,
        "analytic_train_flops_per_device": model_cfg.matmul_flops(rows, width, train=True) / len(devices),
    }


def judge(report: dict, hardware) -> dict:
    """Fits or not, and a rough seconds-per-RLSC-step: every sample runs to max_new_tokens, each program at
    peak FLOP/s or HBM bandwidth (whichever binds), collectives at full interconnect bandwidth and not
    overlapped with compute. Ignores kernel efficiency, early EOS, host work, checkpoints and compiling."""
    flops = hardware.matmul_flops(report["compute_dtype"])
    ici = hardware.interconnect_bytes_per_s
    p = report["programs"]
    # A TPU compile writes matmuls as convolutions, which `rlsc_jax.hlo` does not count: then the analytic count
    train_flops = p["train_step"]["flops"] or report["analytic_train_flops_per_device"]
    train = train_flops / flops + p["train_step"]["collective_bytes_total"] / ici
    prefill = p["prefill"]["flops"] / flops + p["prefill"]["collective_bytes_total"] / ici
    per_token = p["decode"].get("per_iteration", p["decode"])
    # What one decode step reads: the compiled loop's arguments (decode layout, embedding / LM head, KV cache);
    # jit drops the arguments a program never reads, here the stacked layers that the decode layout replaces.
    read = p["decode"]["argument_bytes"]
    token = max(per_token["flops"] / flops, read / hardware.hbm_bytes_per_s) + per_token["collective_bytes_total"] / ici
    needed = report["per_device_peak_bytes"]
    return {"hardware": hardware.name, "source": hardware.source, "device_memory_bytes": hardware.memory_bytes,
            "fits": needed <= hardware.memory_bytes,
            "verdict": ("fits" if needed <= hardware.memory_bytes else
                        f"does not fit (needs {needed / GiB:.1f} GiB, has {hardware.memory_bytes / GiB:.1f} GiB)"),
            "seconds": {"train_step": train, "prefill": prefill, "decode_per_token": token,
                        "rlsc_step": train + prefill + report["max_new_tokens"] * token}}


def table(report: dict) -> str:
    """The report as a markdown table per device."""
    gib = lambda n: f"{n / GiB:.2f}"  # noqa: E731
    m = report["model"]
    lines = [f"{m['path']}: {m['num_params'] / 1e9:.2f} B parameters, {m['num_layers']} layers; compiled for "
             f"{report['devices']} x {report['device_kind']}; mesh "
             + " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
             + f"; {report['rows']} rows x ({report['prompt_width']} + {report['max_new_tokens']}) tokens, "
             f"grad_accum {report['grad_accum']}, remat {report['remat']}, {report['dtype']} masters, "
             f"{report['compute_dtype']} compute, attention {report['attention']}"
             + (" (planned with xla)" if report["attention"] != "xla" else ""), "",
             "| per device | GiB |", "|---|---|",
             f"| parameters | {gib(report['parameter_bytes'])} |",
             f"| optimizer state | {gib(report['optimizer_state_bytes'])} |",
             f"| gradients (inside the step's temp) | {gib(report['gradient_bytes'])} |",
             f"| sampler's decode layout | {gib(report['decode_layout_bytes'])} |", "",
             "| program | arguments GiB | outputs GiB | temp GiB | peak GiB | TFLOP | collectives GiB |",
             "|---|---|---|---|---|---|---|"]
    for name, p in report["programs"].items():
        lines.append(f"| {name} | {gib(p['argument_bytes'])} | {gib(p['output_bytes'])} | {gib(p['temp_bytes'])} | "
                     f"{gib(p['peak_bytes'])} | {p['flops'] / 1e12:.3f} | {gib(p['collective_bytes_total'])} |")
        if "per_iteration" in p:
            it = p["per_iteration"]
            lines.append(f"| {name}, per token | | | | | {it['flops'] / 1e12:.4f} | {gib(it['collective_bytes_total'])} |")
    train = report["programs"]["train_step"]["flops"]
    lines += ["", f"peak per device: {gib(report['per_device_peak_bytes'])} GiB (sampling: "
              f"{gib(report['sampling_peak_bytes'])} GiB with the optimizer state resident)"]
    if train:
        lines.append(f"train-step matmul FLOPs per device {train / 1e12:.2f} T vs analytic 6·N·tokens + attention "
                     f"{report['analytic_train_flops_per_device'] / 1e12:.2f} T (ratio "
                     f"{train / report['analytic_train_flops_per_device']:.2f}: remat recomputes the layers' forward, "
                     "grad_accum > 1 scores every row once more without gradients, the log-likelihood recomputes "
                     "the LM head)")
    else:
        lines.append("matmul FLOPs: not read from this compiler's HLO (a TPU compile writes them as convolutions); "
                     f"the step time takes the analytic {report['analytic_train_flops_per_device'] / 1e12:.2f} T "
                     "per device")
    if report["remat_auto"]:
        lines.append(f"remat=auto chose remat {report['remat'] or 'off'}, grad_accum {report['grad_accum']} (tried: "
                     + "; ".join(report["remat_auto"]) + ")")
    if "judgement" in report:
        j = report["judgement"]
        sec = j["seconds"]
        lines += [f"{j['hardware']}: {j['verdict']}; about {sec['rlsc_step']:.1f} s per RLSC step (train "
                  f"{sec['train_step']:.2f} s, prefill {sec['prefill']:.3f} s, decode {sec['decode_per_token'] * 1e3:.2f} ms "
                  f"x {report['max_new_tokens']} tokens)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """0, or 3 when `--strict` and the config does not fit `--hardware`; bad input is one `error:` line and 2,
    checked (the `--json` path included) before anything compiles."""
    args = parse_args(argv)

    def report() -> dict:
        for flag, value in (("--devices", args.devices), ("--prompt-len", args.prompt_len)):
            if value < 1:
                raise ValueError(f"{flag} {value}: must be >= 1")
        if args.json:
            check_writable(args.json, "--json")
        simulate_devices(1 if args.topology else args.devices)
        from rlsc_jax.config import load_config
        from rlsc_jax.hardware import get_hardware
        hardware = get_hardware(args.hardware) if args.hardware else None
        devices = topology_devices(args.topology) if args.topology else args.devices
        report = plan(load_config(args.config, args.overrides), devices, args.prompt_len,
                      hardware.memory_bytes if hardware else None)
        if hardware is not None:
            report["judgement"] = judge(report, hardware)
            report["device_memory_bytes"] = hardware.memory_bytes
            report["fits"] = report["judgement"]["fits"]
        print(table(report))
        if args.json:
            atomic_write_json(args.json, report)
        return report

    code, done = run_command(report, "interrupted")
    return code or (3 if args.strict and done.get("fits") is False else 0)


def cli() -> None:
    """The `rlsc-plan` console script."""
    exit_process(main())


if __name__ == "__main__":
    cli()
