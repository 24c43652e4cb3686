"""Atomic file writes: a crash never leaves half a file where a result should be.

Every writer in the project (source files, diagrams, checkpoints, exports, tables, plots) goes
through :func:`atomic_path`: write to a temporary file beside the target, then ``os.replace``.
The temporary's name starts with ``.NAME.`` and contains ``.tmp``, so a run directory can
recognise and remove what a killed process left (:func:`is_temporary`).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_bytes_atomic", "is_temporary", "TMP_MARK"]

TMP_MARK = ".tmp"


def _mode_for(path: Path) -> int:
    """The mode the file gets: the one it has now, else what a plain open() would give
    (mkstemp makes files private, 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.
    ``suffix`` is kept at the end of the temporary name for writers that choose a format by
    it (``.onnx``, ``.png``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_MARK + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".data"):  # .data: an ONNX exporter's external weights
            if os.path.exists(leftover):
                os.unlink(leftover)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def is_temporary(name: str) -> bool:
    """A file :func:`atomic_path` (or an older writer) left behind when killed."""
    return name.startswith(".") and TMP_MARK in name
