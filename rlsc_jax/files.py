"""Writes that are all or nothing: a temporary sibling renamed into place, so a reader never sees half a file;
and one command at a time per output directory."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same directory (mode 0644, as a plain write)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, value) -> None:
    """`value` as indented JSON (UTF-8 kept readable), written all or nothing; creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def make_dir(path: str | Path, key: str) -> Path:
    """Creates directory `path` (and its parents) if needed; an OSError becomes one line naming `key`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{key}={str(path)!r}: cannot create the directory ({e.strerror}: {e.filename})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"{key}={str(path)!r}: the directory is not writable")
    return path


@contextmanager
def exclusive_dir(path: str | Path, key: str):
    """Creates directory `path` (`make_dir`) and holds an exclusive lock on its `.lock` file for the block: a
    second command on the same directory fails at once, one line naming `key`. The kernel drops the lock when
    the process ends, even by SIGKILL, so a lock file left behind never blocks a rerun."""
    path = make_dir(path, key)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"{key}={str(path)!r} is in use by another run (process {holder}); wait for it to "
                         f"end or use another {key}") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def check_writable(path: str | Path, key: str, empty_dir_ok: bool = False) -> Path:
    """Checks, before the work whose result goes to `path`, that it can be written there: `path` is no directory
    (with `empty_dir_ok`, none but an empty one, which the result replaces) and a probe file can be made (and is
    removed) in its nearest existing parent. One line naming `key` otherwise; nothing is left behind."""
    path = Path(path)
    if path.is_dir() and not (empty_dir_ok and not any(path.iterdir())):
        raise ValueError(f"{key} {path}: is a directory" + (" and not empty" if empty_dir_ok else ""))
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{key} {path}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.")
    except OSError as e:
        raise ValueError(f"{key} {path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path
