# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Package the bundle as the zip a MONAI Model Zoo submission needs.

    python scripts/export_bundle.py                                   # outputs/<name>_v<version>.zip, no weights
    python scripts/export_bundle.py --include_weights True            # + the large_files.yml files found locally
    python scripts/export_bundle.py --include_tests True --output_dir /tmp/release

The zip holds one folder, ``<bundle_name>/``, with ``configs/``, ``docs/``, ``LICENSE``, ``README.md``,
``requirements.txt``, ``large_files.yml``, the ``bundle/`` and ``scripts/`` Python files and, optionally, ``tests/``.
Never included: caches (``__pycache__``, ``*.pyc``, ``.ruff_cache``, ...), ``data/``, ``outputs/``, ``eval/`` and
``models/``, except the files declared in ``large_files.yml`` with ``--include_weights True``: then the md5 of each
packed file is written into the zip's ``large_files.yml`` (``hash_val``) and printed, so that it can be committed with
the release (docs/README.md, "Publishing weights"). Every entry is printed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from typing import Any

import fire
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_BUNDLE_NAME = "multi_condos_mri_segmentation"
#: top-level files of every export (all required)
TOP_LEVEL_FILES = ("LICENSE", "README.md", "requirements.txt", "large_files.yml")
#: (folder, file patterns, recursive) of every export; docs/ and configs/ are required
FOLDERS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("configs", ("*.json", "*.yaml", "*.yml", "*.conf"), False),
    ("docs", ("*",), True),
    ("bundle", ("*.py",), False),
    ("scripts", ("*.py",), False),
)
TEST_FOLDER = ("tests", ("*.py", "*.json", "*.ini"), True)
#: never exported, whatever the patterns say: run products at the top level, caches and hidden items anywhere
EXCLUDED_TOP_DIRS = frozenset({"data", "outputs", "eval", "models", "dist", "build", "cache"})
EXCLUDED_DIRS = frozenset({"__pycache__", ".git", ".ruff_cache", ".pytest_cache", ".benchmarks", ".ci"})
EXCLUDED_FILES = ("*.pyc", "*.pyo", ".*", "*~", "*.swp")


def file_hash(path: str, hash_type: str = "md5") -> str:
    """Hex digest of ``path`` (``hash_type``: md5, sha1, sha256 or sha512, as ``large_files.yml`` allows)."""
    if hash_type not in ("md5", "sha1", "sha256", "sha512"):
        raise ValueError(f"hash_type must be md5, sha1, sha256 or sha512, got {hash_type!r}.")
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_large_files(root: str) -> list[dict[str, Any]]:
    """The ``large_files`` entries of ``root/large_files.yml`` (``path``, ``url``, ``hash_val``, ``hash_type``)."""
    path = os.path.join(root, "large_files.yml")
    with open(path) as f:
        content = yaml.safe_load(f) or {}
    entries = content.get("large_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e and "url" in e for e in entries):
        raise ValueError(f"{path}: expected 'large_files: [{{path, url, hash_val, hash_type}}, ...]'.")
    return [dict(e) for e in entries]


def _excluded(rel_path: str) -> bool:
    parts = rel_path.split("/")
    if parts[0] in EXCLUDED_TOP_DIRS or any(p in EXCLUDED_DIRS or p.startswith(".") for p in parts[:-1]):
        return True
    return any(fnmatch.fnmatch(parts[-1], pattern) for pattern in EXCLUDED_FILES)


def _folder_files(root: str, folder: str, patterns: Sequence[str], recursive: bool) -> list[str]:
    base = os.path.join(root, folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if recursive and d not in EXCLUDED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if any(fnmatch.fnmatch(name, p) for p in patterns) and not _excluded(rel):
                found.append(rel)
    return found


def bundle_files(root: str = ROOT, include_tests: bool = False) -> list[str]:
    """The repository-relative paths of an export without weights, sorted.

    Raises:
        FileNotFoundError: a required top-level file or folder (``configs/``, ``docs/``, ``bundle/``) is missing.
    """
    missing = [f for f in TOP_LEVEL_FILES if not os.path.isfile(os.path.join(root, f))]
    missing += [f"{d}/" for d in ("configs", "docs", "bundle") if not os.path.isdir(os.path.join(root, d))]
    if missing:
        raise FileNotFoundError(f"{root}: required bundle file(s) missing: {missing}")
    files = list(TOP_LEVEL_FILES)
    for folder, patterns, recursive in FOLDERS + ((TEST_FOLDER,) if include_tests else ()):
        files += _folder_files(root, folder, patterns, recursive)
    return sorted(set(files))


def _large_files_yaml(entries: Iterable[dict[str, Any]]) -> str:
    header = (
        "# Files of this bundle that are not in git; downloaded by the Model Zoo CI and by\n"
        "# `python -m monai.bundle download_large_files`. Written by scripts/export_bundle.py.\n"
    )
    return header + yaml.safe_dump({"large_files": list(entries)}, sort_keys=False, width=200)


def export_bundle(
    output_dir: str | None = None,
    bundle_name: str = DEFAULT_BUNDLE_NAME,
    include_weights: bool = False,
    include_tests: bool = False,
    root: str = ROOT,
    filename: str | None = None,
) -> str:
    """
    Write ``<output_dir>/<bundle_name>_v<version>.zip`` (``version`` from configs/metadata.json; ``output_dir``
    defaults to ``<root>/outputs``) and print every entry; returns the zip's path.

    Args:
        output_dir: folder of the zip (created if needed).
        bundle_name: the bundle's folder name in the zip (the Model Zoo's lower_snake_case name).
        include_weights: also pack the files declared in ``large_files.yml`` (e.g. ``models/model.pt``); each must
            exist. Without it, only ``large_files.yml`` tells where they will be downloaded from.
        include_tests: also pack ``tests/`` (Python files, data and ini files).
        root: the bundle (repository) root.
        filename: zip file name (default ``<bundle_name>_v<version>.zip``).

    Raises:
        FileNotFoundError: a required file, or with ``include_weights`` a declared large file, is missing.
        ValueError: malformed ``large_files.yml`` or a declared path outside ``models/``.
    """
    root = os.path.abspath(os.fspath(root))
    with open(os.path.join(root, "configs", "metadata.json")) as f:
        version = json.load(f)["version"]
    files = bundle_files(root, include_tests=bool(include_tests))
    entries = read_large_files(root)

    weights = []
    for entry in entries:
        rel = os.path.normpath(entry["path"]).replace(os.sep, "/")
        if not rel.startswith("models/") or ".." in rel.split("/"):
            raise ValueError(f"large_files.yml: declared path {entry['path']!r} must be a file under models/.")
        local = os.path.join(root, rel)
        if include_weights and not os.path.isfile(local):
            raise FileNotFoundError(f"--include_weights True: {local} (declared in large_files.yml) does not exist.")
        if os.path.isfile(local):
            hash_type = entry.get("hash_type") or "md5"
            digest = file_hash(local, hash_type)
            if include_weights:  # the packed file and the zip's large_files.yml agree
                if entry.get("hash_val") and entry["hash_val"] != digest:
                    print(
                        f"warning: {rel}: large_files.yml has {hash_type} {entry['hash_val']}, the packed file {digest}"
                    )
                entry.update(hash_type=hash_type, hash_val=digest)
                weights.append(rel)
                print(f"{rel}: {hash_type} {digest} (packed; hash_val written into the zip's large_files.yml)")
            else:
                print(f"{rel}: {hash_type} {digest} (local file, not packed; large_files.yml left as it is)")
        if "<" in str(entry["url"]):
            print(f"warning: {rel}: placeholder url {entry['url']} - set the release url before submitting")

    output_dir = os.path.abspath(os.fspath(output_dir or os.path.join(root, "outputs")))
    os.makedirs(output_dir, exist_ok=True)
    zip_path = os.path.join(output_dir, filename or f"{bundle_name}_v{version}.zip")
    total = 0
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files + weights:
            arcname = f"{bundle_name}/{rel}"
            if rel == "large_files.yml":
                data = _large_files_yaml(entries).encode()
                zf.writestr(arcname, data)
                size = len(data)
            else:
                zf.write(os.path.join(root, rel), arcname)
                size = os.path.getsize(os.path.join(root, rel))
            total += size
            print(f"  {size:>10d}  {arcname}")
    print(
        f"wrote {zip_path}: {len(files) + len(weights)} files, {total} bytes uncompressed, {os.path.getsize(zip_path)} bytes"
    )
    return zip_path


if __name__ == "__main__":
    fire.Fire(export_bundle)
