"""Durable file writes: the one temp-file + fsync + ``os.replace`` helper that every module uses (base layer)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix, even after a crash."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, errors: str = "strict") -> None:
    atomic_write_bytes(path, text.encode("utf-8", errors))


def atomic_publish(tmp: Path, path: Path) -> None:
    """Make an already written temp file durable and move it to ``path`` (the directory is synced by the caller)."""
    fsync_file(tmp)
    os.replace(tmp, path)


def durable_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` and flush it to disk (the directory is synced by the caller)."""
    shutil.copyfile(src, dst)
    fsync_file(dst)


def tmp_name(path: Path) -> Path:
    """The temp-file name :func:`atomic_write_bytes` uses for ``path`` (for cleaning up after a killed writer)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
