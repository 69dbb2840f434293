# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Writing files so that a reader never sees a partial one (temporary file in the same folder, then ``os.replace``)
and the content hash that model records use to name the exact weights they describe."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "atomic_torch_save", "sha256_file"]

#: files are created readable by everyone (mkstemp's 0600 would make generators.pt private to one user)
FILE_MODE = 0o644


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None], overwrite: bool = True) -> bool:
    """
    Write ``path`` through ``writer(temporary_path)``, then move it into place atomically.

    Args:
        path: the destination.
        writer: writes the whole content to the path it is given.
        overwrite: ``False`` keeps an existing ``path`` (the temporary file is removed).

    Returns:
        whether ``path`` was written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the temporary name ends with the destination's name: writers that choose a format by extension (nibabel) work
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=f"_{os.path.basename(path)}", dir=folder)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, FILE_MODE & ~_umask())
        if not overwrite:
            try:  # os.link fails if path exists: no check-then-write race
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links
                if os.path.exists(path):
                    return False
                os.replace(tmp, path)
            return True
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> bool:
    """Write ``text`` (UTF-8) to ``path`` atomically; see ``atomic_write``."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _write, overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> bool:
    """Write ``obj`` as indented JSON (non-JSON values as ``str``) to ``path`` atomically; see ``atomic_write``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n", overwrite)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically: never a truncated file, even when killed during the write."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
