"""Training configuration: a dataclass schema, YAML files and `key=value` overrides, via OmegaConf.

The schema imports nothing of the model, mesh or objectives; `rlsc_jax.validation` checks a config against them."""

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

PACKAGE = Path(__file__).resolve().parent
DEFAULT_MODEL = str(PACKAGE / "assets" / "default_model")
LONG_MODEL = str(PACKAGE / "assets" / "long_model")  # configs/cpu_long.yaml's, the long task


def _asset(name: str) -> str:
    """`${asset:NAME}` in a YAML file: the package's rlsc_jax/assets/NAME, wherever it is installed."""
    return str(PACKAGE / "assets" / name)


OmegaConf.register_resolver("asset", _asset, replace=True)

MAY_CHANGE = "may_change_on_resume"  # field metadata: see `resumable`


def resumable(default=dataclasses.MISSING, *, factory=dataclasses.MISSING):
    """A field a run may change when it resumes (`run_record`): it decides how long, where, how often or with what
    memory layout the run goes on, not what it computes. On a section, every key of it."""
    return dataclasses.field(default=default, default_factory=factory, metadata={MAY_CHANGE: True})


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
    data_dir: str = resumable(str(BENCHMARK_DIR))  # the six benchmarks shipped in rlsc_jax/data/benchmarks
    question_field: str = "question"
    num_questions: int = 100  # 0 = all (synthetic: 256)
    offset: int = 0  # skip the first questions: train on a benchmark's tail while eval.* scores its head
    template: str = "plain"
    shuffle: bool = True


@dataclasses.dataclass
class SamplingConfig:
    """How the N completions per question are drawn (paper: N = 16, T = 0.5): training's `sampling.*`, each
    evaluation protocol's decoding, and eval.py's overrides of it; checked by `check_sampling`."""

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
    """Held-out evaluation before and after training (0 questions = skip) and every `every` steps in between;
    `eval.py`'s settings are `eval_cli.EvalRunConfig`."""

    source: str = "synthetic"
    num_questions: int = 100
    every: int = 15  # also after every K-th step, logged in metrics.jsonl as eval/<metric>; 0 = only before and after
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

    model: str = resumable(DEFAULT_MODEL)  # the weights' content is recorded, not their path
    output_dir: str = resumable("runs/default")
    steps: int = resumable(30)  # when the schedule is constant (`run_record.trajectory_settings`)
    seed: int = 0
    dtype: str = "float32"  # storage of parameters and optimizer state (the masters)
    compute_dtype: str = "float32"  # matmuls and attention (bfloat16 on GPU/TPU)
    objective: str = "rlsc_l2"
    objective_args: ObjectiveArgs = dataclasses.field(default_factory=ObjectiveArgs)
    questions_per_step: int = 16
    grad_accum: int = resumable(1)
    # recompute each layer in the backward pass (true: keeping `remat_policy`'s), or "auto": the cheapest of no
    # remat, "dots", "nothing" (then a larger grad_accum) whose compiled step fits the device (rlsc_jax.fit)
    remat: Union[bool, str] = resumable(False)
    remat_policy: str = resumable("nothing")  # what a rematerialised layer keeps: "nothing" or "dots" (matmul outputs)
    attention: str = resumable("xla")  # full-sequence attention: "xla" (this project's) or "cudnn" (fused; NVIDIA GPUs)
    # tokens per device in each chunk of the fused log-likelihood (whose transient fp32 logits take chunk * V * 4
    # bytes per device); also `logprobs.DEFAULT_CHUNK_SIZE`
    logprob_chunk: int = resumable(1024)
    checkpoint_every: int = resumable(10)
    # at step 1 and every K steps, each loss summand's gradient norm (rlsc_l2); 0 = never
    grad_terms_every: int = resumable(0)
    # every K steps print one question's most and least likely completion; 0 = never
    show_samples_every: int = resumable(10)
    profile_steps: list[int] = resumable(factory=list)  # steps (from 1) traced into output_dir/profile
    # where step metrics also go (metrics.jsonl always): tensorboard, wandb, mlflow (rlsc_jax/trackers.py)
    trackers: list[str] = resumable(factory=lambda: ["tensorboard"])
    tracker_project: str = resumable("rlsc_jax")  # the W&B project / MLflow experiment
    max_skipped_steps: int = resumable(3)  # this many non-finite steps in a row stop the run (exit 2, no final/)
    keep_checkpoints: int = resumable(2)
    export_final: bool = resumable(True)
    export_dtype: str = resumable("")  # dtype of the exported final/ checkpoint; "" = the masters' (`dtype`)
    plot: bool = resumable(True)
    mesh: MeshConfig = resumable(factory=MeshConfig)  # checkpoints restore onto another mesh
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    eval: EvalConfig = resumable(factory=EvalConfig)


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


def check_sampling(s: SamplingConfig, prefix: str = "", training: bool = False) -> None:
    """The one check of sampling settings, wherever they come from: a one-line ValueError naming the key
    (`prefix` + field). Training needs T > 0; evaluation allows greedy (T = 0) for one sample per problem."""
    finite_t = math.isfinite(s.temperature)
    checks = (
        ("num_samples", s.num_samples >= 1, ">= 1"),
        ("max_new_tokens", s.max_new_tokens >= 1, ">= 1"),
        ("temperature", finite_t and s.temperature > 0, "finite and > 0 for training") if training else
        ("temperature", finite_t and s.temperature >= 0, "finite and >= 0 (0 = greedy)"),
        ("top_k", s.top_k >= 0, ">= 0 (0 = off)"),
        ("top_p", 0 < s.top_p <= 1, "in (0, 1]"),
    )
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(f"{prefix}{key}={getattr(s, key)!r}: must be {expected}")
    if s.num_samples > 1 and s.temperature == 0:
        raise ValueError(f"{prefix}num_samples={s.num_samples} needs temperature > 0 (greedy samples are all "
                         "identical)")


def check_seed(seed: int, key: str = "seed") -> None:
    """A one-line error naming `key` unless `seed` fits JAX's PRNG key (a 64-bit integer)."""
    if not -2**63 <= seed < 2**63:
        raise ValueError(f"{key}={seed}: must be a 64-bit integer (JAX's PRNG key takes no larger seed)")


def to_yaml(cfg) -> str:
    """The resolved config as YAML (saved beside every run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
