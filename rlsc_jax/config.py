"""Training configuration: a dataclass schema, YAML files and `key=value` overrides, via OmegaConf."""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from rlsc_jax.benchmarks import BENCHMARK_DIR
from rlsc_jax.hf import DTYPES
from rlsc_jax.models.decoder import ATTENTION, REMAT_POLICIES
from rlsc_jax.objectives import HPARAMS, bind_checked
from rlsc_jax.protocols import get_protocol
from rlsc_jax.sharding import MESH_AXES, axis_rules

PACKAGE = Path(__file__).resolve().parent
DEFAULT_MODEL = str(PACKAGE / "assets" / "default_model")
LONG_MODEL = str(PACKAGE / "assets" / "long_model")  # configs/cpu_long.yaml's, the long task


def _asset(name: str) -> str:
    """`${asset:NAME}` in a YAML file: the package's rlsc_jax/assets/NAME, wherever it is installed."""
    return str(PACKAGE / "assets" / name)


OmegaConf.register_resolver("asset", _asset, replace=True)


@dataclasses.dataclass
class MeshConfig:
    """Device mesh sizes; -1 takes the remaining devices (at most one axis). `rules` replaces the mesh axes of the
    logical axes it names in `sharding.DEFAULT_RULES` (e.g. `mesh.rules.mlp=[fsdp]`)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """Where the unlabeled questions come from: `synthetic` (short answers), `synthetic_long` (long answers, see
    rlsc_jax/synthetic_long.py), a benchmark name, or a JSONL path."""

    source: str = "synthetic"
    data_dir: str = str(BENCHMARK_DIR)  # the six benchmarks shipped in rlsc_jax/data/benchmarks
    question_field: str = "question"
    num_questions: int = 100  # 0 = all (synthetic: 256)
    offset: int = 0  # skip the first questions: train on a benchmark's tail while eval.* scores its head
    template: str = "plain"
    shuffle: bool = True


@dataclasses.dataclass
class SamplingConfig:
    """How the N completions per question are drawn (paper: N = 16, T = 0.5)."""

    num_samples: int = 16
    temperature: float = 0.5
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96


@dataclasses.dataclass
class OptimConfig:
    """AdamW (paper: lr 1e-5; the CPU default's 3e-5 was chosen on validation questions) with optional warmup,
    cosine decay and global-norm clipping (0 = off)."""

    lr: float = 3e-5
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    grad_clip: float = 0.0


@dataclasses.dataclass
class EvalConfig:
    """Held-out evaluation before and after training (0 questions = skip); `eval.py`'s settings are
    `eval_cli.EvalRunConfig`."""

    source: str = "synthetic"
    num_questions: int = 100
    offset: int = 0  # skip the first held-out questions: offset=100 is a validation slice disjoint from the default's
    num_samples: int = 16
    temperature: float = 0.5
    batch_size: int = 16
    protocol: str = "qwen-math"  # benchmark / JSONL sources: this named protocol (rlsc_jax/protocols.py) instead
    max_new_tokens: int = 0  # evaluation budget; 0 = the protocol's (benchmarks, JSONL) or sampling.max_new_tokens


@dataclasses.dataclass
class ObjectiveArgs:
    """The objectives' hyper-parameters (docs/objectives.md); each objective is given those it takes."""

    alpha: float = 0.1  # RLSC L2's weight floor α (rlsc_l2)
    advantage_eps: float = 1e-6  # ttrl, self_certainty: advantage (r − mean) / (std + eps)


# old key -> where it lives now: giving the old one is an error naming the new one
MOVED = {"alpha": "objective_args.alpha", "advantage_eps": "objective_args.advantage_eps"}


@dataclasses.dataclass
class TrainConfig:
    """Everything `train.py` reads. `model`, `output_dir`, `steps`, `seed` and `mesh.*` are a stable contract."""

    model: str = DEFAULT_MODEL
    output_dir: str = "runs/default"
    steps: int = 30
    seed: int = 0
    dtype: str = "float32"  # storage of parameters and optimizer state (the masters)
    compute_dtype: str = "float32"  # matmuls and attention (bfloat16 on GPU/TPU)
    objective: str = "rlsc_l2"
    objective_args: ObjectiveArgs = dataclasses.field(default_factory=ObjectiveArgs)
    questions_per_step: int = 16
    grad_accum: int = 1
    # recompute each layer in the backward pass (true: keeping `remat_policy`'s), or "auto": the cheapest of no
    # remat, "dots", "nothing" (then a larger grad_accum) whose compiled step fits the device (rlsc_jax.fit)
    remat: Union[bool, str] = False
    remat_policy: str = "nothing"  # what a rematerialised layer keeps: "nothing" or "dots" (matmul outputs)
    attention: str = "xla"  # full-sequence attention: "xla" (this project's) or "cudnn" (fused; NVIDIA GPUs)
    logprob_chunk: int = 1024  # tokens per device in each chunk of the fused log-likelihood
    checkpoint_every: int = 10
    grad_terms_every: int = 0  # at step 1 and every K steps, each loss summand's gradient norm (rlsc_l2); 0 = never
    show_samples_every: int = 10  # every K steps print one question's most and least likely completion; 0 = never
    profile_steps: list[int] = dataclasses.field(default_factory=list)  # steps (from 1) traced into output_dir/profile
    max_skipped_steps: int = 3  # this many non-finite steps in a row stop the run (exit 2, no final/)
    keep_checkpoints: int = 2
    export_final: bool = True
    export_dtype: str = ""  # dtype of the exported final/ checkpoint; "" = the masters' (`dtype`)
    plot: bool = True
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def _valid_keys(schema) -> list[str]:
    """Every dotted key of the schema, for 'did you mean' suggestions."""
    out = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += [f"{f.name}.{k}" for k in _valid_keys(type(default))]
        else:
            out.append(f.name)
    return out


def config_dir() -> Path:
    """The shipped YAML configs: rlsc_jax/configs in an installed wheel, else the checkout's configs/."""
    return PACKAGE / "configs" if (PACKAGE / "configs").is_dir() else PACKAGE.parent / "configs"


def find_config(path: str | Path) -> Path:
    """`path` when it is a file, else the shipped config of that name (`paper_qwen25_math_7b`, `.yaml` optional,
    also as `configs/NAME.yaml`), so a config runs from any directory."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = config_dir() / (path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml")
    if path.parent in (Path("."), Path("configs")) and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in config_dir().glob("*.yaml")))
    raise FileNotFoundError(f"{path}: config file not found (shipped configs, by name: {names})")


def load_config(path: str | Path | None = None, overrides: list[str] = (), schema=TrainConfig):
    """Schema defaults, then the YAML file, then `key=value` overrides; returns a `schema` instance.

    Unknown keys and ill-typed values are one-line ValueErrors naming the key (and the closest valid key).
    """
    merged = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        path = find_config(path)
        layers.append((str(path), _read_yaml(path)))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
    layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    for where, layer in layers:
        _check_sections(OmegaConf.to_container(layer), schema, where)
        try:
            merged = OmegaConf.merge(merged, layer)
        except ConfigKeyError as e:
            key = e.full_key or str(e.key)
            if MOVED.get(key) in _valid_keys(schema):
                raise ValueError(f"{where}: config key {key!r} is now {MOVED[key]!r}") from None
            close = difflib.get_close_matches(key, _valid_keys(schema), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown config key {key!r}{hint}") from None
        except OmegaConfBaseException as e:
            raise ValueError(f"{where}: bad value for {e.full_key!r}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def _check_sections(values: dict, schema, where: str, prefix: str = "") -> None:
    """A section of the schema (e.g. `sampling`) given a scalar is a one-line error naming the key (OmegaConf's
    own merge error names no key)."""
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(schema)
                if f.default_factory is not dataclasses.MISSING}
    sections = {k: v for k, v in defaults.items() if isinstance(v, dict) or dataclasses.is_dataclass(v)}
    for key, value in values.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {prefix}{key} must be a mapping of keys (e.g. {prefix}{key}.<key>: value),"
                                 f" got {value!r}")
            if dataclasses.is_dataclass(sections[key]):
                _check_sections(value, type(sections[key]), where, f"{prefix}{key}.")


def _read_yaml(path: Path):
    """A YAML file that must hold a mapping of keys; syntax errors and other shapes are one-line errors."""
    try:
        layer = OmegaConf.load(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: invalid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(layer, DictConfig):
        kind = type(layer).__name__.replace("Config", "")
        raise ValueError(f"{path}: expected a mapping of config keys, got a {kind}")
    return layer


def check_seed(seed: int, key: str = "seed") -> None:
    """A one-line error naming `key` unless `seed` fits JAX's PRNG key (a 64-bit integer)."""
    if not -2**63 <= seed < 2**63:
        raise ValueError(f"{key}={seed}: must be a 64-bit integer (JAX's PRNG key takes no larger seed)")


def validate(cfg: TrainConfig) -> None:
    """Every value range `train.py` depends on, checked before anything is loaded or written; each failure
    is a one-line ValueError naming the key."""
    check_seed(cfg.seed)
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
        ("sampling.num_samples", s.num_samples >= 1, ">= 1"),
        ("sampling.max_new_tokens", s.max_new_tokens >= 1, ">= 1"),
        ("sampling.temperature", finite(s.temperature) and s.temperature > 0, "finite and > 0 for training"),
        ("sampling.top_k", s.top_k >= 0, ">= 0 (0 = off)"),
        ("sampling.top_p", 0 < s.top_p <= 1, "in (0, 1]"),
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


def to_yaml(cfg) -> str:
    """The resolved config as YAML (saved beside every run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
