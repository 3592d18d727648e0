"""A model directory's content as a resume key: a SHA-256 per file (its `*.safetensors` by default), so that
records or checkpoints made by other weights at the same path are never mixed with new ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 24  # bytes read at a time
WEIGHTS = ("*.safetensors",)


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (a 7B checkpoint is 15 GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(model_dir: str | Path, known: dict[str, dict] | None = None,
                patterns: tuple[str, ...] = WEIGHTS) -> dict[str, dict]:
    """{file name: {size, mtime_ns, sha256}} of the model's files matching `patterns` (by default its weights);
    a file whose size and mtime match its entry in `known` (an earlier fingerprint) keeps that hash instead of
    being read again."""
    paths = sorted({p for pattern in patterns for p in Path(model_dir).glob(pattern) if p.is_file()})
    if not paths:
        raise FileNotFoundError(f"{model_dir}: no {' or '.join(patterns)} files")
    out = {}
    for path in paths:
        stat = path.stat()
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        cached = (known or {}).get(path.name, {})
        same = cached.get("size") == entry["size"] and cached.get("mtime_ns") == entry["mtime_ns"]
        out[path.name] = {**entry, "sha256": cached["sha256"] if same and "sha256" in cached else _sha256(path)}
    return out


def digests(weights: dict[str, dict]) -> dict[str, str]:
    """{file name: sha256}: what two fingerprints must share to be the same weights."""
    return {name: entry["sha256"] for name, entry in weights.items()}
