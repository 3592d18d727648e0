"""Training configuration: a dataclass schema, YAML files and `key=value` overrides, via OmegaConf."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

DEFAULT_MODEL = str(Path(__file__).resolve().parent / "assets" / "default_model")


@dataclasses.dataclass
class MeshConfig:
    """Device mesh sizes; -1 takes the remaining devices (at most one axis)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclasses.dataclass
class DataConfig:
    """Where the unlabeled questions come from: `synthetic`, a benchmark name, or a JSONL path."""

    source: str = "synthetic"
    data_dir: str = "../shared/data/benchmarks"
    question_field: str = "question"
    num_questions: int = 100  # 0 = all (synthetic: 256)
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
    """Held-out evaluation before and after training (0 questions = skip)."""

    source: str = "synthetic"
    num_questions: int = 100
    offset: int = 0  # skip the first held-out questions: offset=100 is a validation slice disjoint from the default's
    num_samples: int = 16
    temperature: float = 0.5
    batch_size: int = 16


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
    alpha: float = 0.1  # RLSC L2's weight floor α (rlsc_l2)
    advantage_eps: float = 1e-6  # ttrl, self_certainty: advantage (r − mean) / (std + eps)
    questions_per_step: int = 16
    grad_accum: int = 1
    remat: bool = False
    remat_policy: str = "nothing"  # what a rematerialised layer keeps: "nothing" or "dots" (matmul outputs)
    logprob_chunk: int = 1024  # tokens per device in each chunk of the fused log-likelihood
    checkpoint_every: int = 10
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


def load_config(path: str | Path | None = None, overrides: list[str] = (), schema=TrainConfig):
    """Schema defaults, then the YAML file, then `key=value` overrides; returns a `schema` instance.

    Unknown keys and ill-typed values are one-line ValueErrors naming the key (and the closest valid key).
    """
    merged = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        layers.append((str(path), OmegaConf.load(path)))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
    layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except ConfigKeyError as e:
            key = e.full_key or str(e.key)
            close = difflib.get_close_matches(key, _valid_keys(schema), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown config key {key!r}{hint}") from None
        except OmegaConfBaseException as e:
            raise ValueError(f"{where}: bad value for {e.full_key!r}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def to_yaml(cfg) -> str:
    """The resolved config as YAML (saved beside every run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
