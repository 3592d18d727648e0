"""What defines a run's trajectory, recorded in its output dir so that a rerun cannot silently mix states.

`run.json` holds the settings that decide which parameters step k produces (model config and a content
fingerprint of its files, objective, sampling, optimizer, data, seed, dtypes) and is written before the
first step. Resuming into the same output dir with any of them changed is refused, naming the keys.
The keys in `MUTABLE`, the config's fields marked `config.resumable`, may change on a rerun: they decide how
long, where, how often or with what memory layout the run goes on, not what it computes (the mesh included:
checkpoints restore onto another mesh).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlsc_jax.config import MAY_CHANGE, MOVED, TrainConfig
from rlsc_jax.files import atomic_write_text
from rlsc_jax.fingerprint import digests, fingerprint
from rlsc_jax.models import ModelConfig

RECORD = "run.json"


def mutable_keys(schema=TrainConfig, prefix: str = "") -> tuple[str, ...]:
    """The dotted keys of the fields marked `config.resumable` ("section." for a whole section)."""
    out = []
    for f in dataclasses.fields(schema):
        section = f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
        if f.metadata.get(MAY_CHANGE):
            out.append(f"{prefix}{f.name}." if section else f"{prefix}{f.name}")
        elif section:
            out += mutable_keys(f.default_factory, f"{prefix}{f.name}.")
    return tuple(out)


MUTABLE = mutable_keys()
MUTABLE_SHOWN = tuple(k + "*" if k.endswith(".") else k for k in MUTABLE)
MODEL_FILES = ("*.safetensors", "*.json", "*.txt", "*.model", "*.jinja")  # weights, config, tokenizer


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested dict as {dotted.key: value}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_config(cfg: TrainConfig) -> dict:
    """Every config key as {dotted.key: value}."""
    return flatten(dataclasses.asdict(cfg))


def with_new_defaults(old: dict, new: dict) -> dict:
    """`old` (flat settings recorded earlier) with each key of `new` that it lacks set to the schema's default:
    a key added to the schema since had its default's behaviour, so a run recorded before it still matches."""
    defaults = flat_config(TrainConfig())
    return {**{k: defaults[k] for k in new.keys() - old.keys() if k in defaults}, **old}


def trajectory_settings(cfg: TrainConfig) -> dict:
    """The config keys that decide the trajectory; `steps` counts only when the schedule decays over it."""
    flat = flat_config(cfg)
    keep = {k: v for k, v in flat.items() if not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MUTABLE)}
    if cfg.optim.schedule != "constant":
        keep["steps"] = cfg.steps
    return keep


def make_record(cfg: TrainConfig, known: dict | None = None) -> dict:
    """The record of `cfg`'s run: its trajectory settings, model config and model files' fingerprint."""
    return {"settings": trajectory_settings(cfg), "model_config": ModelConfig.from_file(cfg.model).to_hf(),
            "model_files": fingerprint(cfg.model, known, MODEL_FILES)}


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable 'key: old -> new' lines for every setting, model config field or model file that differs."""
    out = []
    for section, label in (("settings", ""), ("model_config", "model config.json ")):
        a, b = old.get(section, {}), new.get(section, {})
        if section == "settings":
            a = with_new_defaults(a, b)
        out += [f"{label}{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    a, b = digests(old.get("model_files", {})), digests(new.get("model_files", {}))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if changed:
        out.append(f"model files changed: {', '.join(changed)}")
    return out


def read_record(path: Path) -> dict | None:
    """The record at `path`; None if there is none; a one-line ValueError naming the file if it is unreadable."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run record ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: unreadable run record (not a JSON object)")
    return record


def check_resume(out: Path, cfg: TrainConfig, resuming: bool) -> dict:
    """The record of this run; when `resuming` and the output dir's record differs, is missing or unreadable,
    a one-line ValueError naming what changed or the file (nothing is written either way): checkpoints whose
    settings are unknown must not be resumed under new ones."""
    path = out / RECORD
    try:
        old, problem = read_record(path), f"{path} is missing"
    except ValueError as e:
        old, problem = None, str(e)
    if old is None and resuming:
        raise ValueError(f"{problem}: the settings of the checkpoints in {out / 'checkpoints'} are unknown, so "
                         f"they are not resumed; use another output_dir")
    if old is not None:  # a record written before a key moved names it by its old key
        old["settings"] = {MOVED.get(k, k): v for k, v in old.get("settings", {}).items()}
    if old is not None and resuming:
        quick = {"settings": trajectory_settings(cfg)}
        changed = differences({"settings": old.get("settings", {})}, quick)
        if not changed:
            record = make_record(cfg, known=old.get("model_files"))
            changed = differences(old, record)
        if changed:
            raise ValueError(f"{out} holds checkpoints of a run with other settings ({'; '.join(changed)}); "
                             f"use another output_dir, or restore them (keys that may change on a rerun: "
                             f"{', '.join(MUTABLE_SHOWN)})")
        return record
    return make_record(cfg, known=old.get("model_files") if old else None)


def write_record(out: Path, record: dict) -> None:
    """Writes run.json (atomically)."""
    atomic_write_text(out / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
