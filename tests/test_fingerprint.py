"""The weights' fingerprint: a content hash per weight file, reused only while size and mtime are unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rlsc_jax.fingerprint import digests, fingerprint


def test_hash_is_the_files_sha256_and_is_reused_while_size_and_mtime_hold(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    first = fingerprint(tmp_path)
    assert digests(first) == {"model.safetensors": hashlib.sha256(b"weights v1").hexdigest()}
    stale = {"model.safetensors": {**first["model.safetensors"], "sha256": "recorded"}}
    assert digests(fingerprint(tmp_path, stale)) == {"model.safetensors": "recorded"}  # not read again
    weights.write_bytes(b"weights v2")
    os.utime(weights, ns=(0, first["model.safetensors"]["mtime_ns"] + 1))
    assert digests(fingerprint(tmp_path, stale)) == {"model.safetensors": hashlib.sha256(b"weights v2").hexdigest()}


def test_a_directory_without_weights_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors files"):
        fingerprint(tmp_path)
