"""Checks of a `TrainConfig` against what its values name (dtypes, remat policies, mesh axes and rules, the
objective, the eval protocol): above the schema and the modules it checks against, so none imports back."""

from __future__ import annotations

import dataclasses
import math

from rlsc_jax.config import TrainConfig, check_sampling, check_seed
from rlsc_jax.dtypes import DTYPES
from rlsc_jax.models.decoder import ATTENTION, REMAT_POLICIES
from rlsc_jax.objectives import HPARAMS, bind_checked
from rlsc_jax.protocols import get_protocol
from rlsc_jax.sharding import MESH_AXES, axis_rules


def validate(cfg: TrainConfig) -> None:
    """Every value range `train.py` depends on, checked before anything is loaded or written; each failure
    is a one-line ValueError naming the key."""
    check_seed(cfg.seed)
    check_sampling(cfg.sampling, "sampling.", training=True)
    s, o, e = cfg.sampling, cfg.optim, cfg.eval
    finite = math.isfinite
    checks = (
        ("steps", cfg.steps >= 1, ">= 1"),
        ("questions_per_step", cfg.questions_per_step >= 1, ">= 1"),
        ("grad_accum", cfg.grad_accum >= 1, ">= 1"),
        ("checkpoint_every", cfg.checkpoint_every >= 1, ">= 1"),
        ("grad_terms_every", cfg.grad_terms_every >= 0, ">= 0 (0 = never)"),
        ("show_samples_every", cfg.show_samples_every >= 0, ">= 0 (0 = never)"),
        ("keep_checkpoints", cfg.keep_checkpoints >= 1, ">= 1"),
        ("profile_steps", all(k >= 1 for k in cfg.profile_steps), "step numbers >= 1"),
        ("logprob_chunk", cfg.logprob_chunk >= 1, ">= 1"),
        ("max_skipped_steps", cfg.max_skipped_steps >= 1, ">= 1"),
        ("optim.lr", finite(o.lr) and o.lr > 0, "finite and > 0"),
        ("optim.eps", finite(o.eps) and o.eps > 0, "finite and > 0"),
        ("optim.weight_decay", finite(o.weight_decay) and o.weight_decay >= 0, "finite and >= 0"),
        ("optim.b1", 0 <= o.b1 < 1, "in [0, 1)"),
        ("optim.b2", 0 <= o.b2 < 1, "in [0, 1)"),
        ("optim.grad_clip", finite(o.grad_clip) and o.grad_clip >= 0, "finite and >= 0 (0 = off)"),
        ("optim.warmup_steps", o.warmup_steps >= 0, ">= 0"),
        ("optim.schedule", o.schedule in ("constant", "cosine"), "'constant' or 'cosine'"),
        ("data.num_questions", cfg.data.num_questions >= 0, ">= 0 (0 = all)"),
        ("data.offset", cfg.data.offset >= 0, ">= 0"),
        ("eval.num_questions", e.num_questions >= 0, ">= 0 (0 = skip)"),
        ("eval.offset", e.offset >= 0, ">= 0"),
        ("eval.every", e.every >= 0, ">= 0 (0 = only before and after)"),
        ("eval.num_samples", e.num_samples >= 1, ">= 1"),
        ("eval.batch_size", e.batch_size >= 1, ">= 1"),
        ("eval.max_new_tokens", e.max_new_tokens >= 0, ">= 0 (0 = the protocol's or sampling.max_new_tokens)"),
        ("eval.temperature", finite(e.temperature) and e.temperature >= 0, "finite and >= 0"),
        ("dtype", cfg.dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
        ("compute_dtype", cfg.compute_dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
        ("export_dtype", cfg.export_dtype in ("", *DTYPES), f"'' or one of {', '.join(DTYPES)}"),
        ("remat", cfg.remat is True or cfg.remat is False or cfg.remat == "auto", "true, false or auto"),
        ("remat_policy", cfg.remat_policy in REMAT_POLICIES, f"one of {', '.join(REMAT_POLICIES)}"),
        ("attention", cfg.attention in ATTENTION, f"one of {', '.join(ATTENTION)}"),
        ("compute_dtype", cfg.attention != "cudnn" or cfg.compute_dtype in ("bfloat16", "float16"),
         "bfloat16 or float16 with attention=cudnn (the fused kernel has no float32)"),
        *((f"objective_args.{key}", finite(value) and HPARAMS[key][0](value), f"finite and {HPARAMS[key][1]}")
          for key, value in dataclasses.asdict(cfg.objective_args).items()),
        *((f"mesh.{axis}", getattr(cfg.mesh, axis) >= 1 or getattr(cfg.mesh, axis) == -1, ">= 1 or -1")
          for axis in MESH_AXES),
    )
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(f"{key}={_value(cfg, key)!r}: must be {expected}")
    if [getattr(cfg.mesh, axis) for axis in MESH_AXES].count(-1) > 1:
        raise ValueError("mesh: at most one axis may be -1")
    axis_rules(cfg.mesh.rules)
    rows = cfg.questions_per_step * s.num_samples
    if rows % cfg.grad_accum:
        raise ValueError(f"grad_accum={cfg.grad_accum} must divide questions_per_step * sampling.num_samples = {rows}")
    bind_checked(cfg.objective, s.num_samples, rows, **dataclasses.asdict(cfg.objective_args))
    get_protocol(cfg.eval.protocol)


def _value(cfg, dotted: str):
    """The value at a dotted key of a nested config dataclass."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
