# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Datalist helpers of the bundle's data contract: reading a Decathlon-style datalist with any modality keys,
subject-level seeded splits and the ``image_size`` rule."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing, pickle_hashing

from .demo_data import ensure_demo_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_IMAGE_SIZE",
    "as_image_size",
    "as_modality_pair",
    "cached_dataset",
    "channel_of",
    "check_cache",
    "check_or_exit",
    "check_records",
    "datalist_file",
    "datalist_images",
    "file_stem",
    "file_state_hashing",
    "load_datalist",
    "read_json",
    "read_torch_file",
    "require_file",
    "require_records",
    "resolve_path",
    "section_records",
    "subject_id",
    "train_val_split",
]

#: image file extensions stripped from file names
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz")

#: smallest slice side: the 70x70 PatchGAN and the 4-level U-Net need at least this much
MIN_IMAGE_SIZE = 32


def as_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """
    Normalise ``image_size`` (an int for square slices, or ``[h, w]``) to ``(h, w)``.

    Raises:
        ValueError: for a malformed value or a side below ``MIN_IMAGE_SIZE``.
    """
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and not isinstance(image_size, str) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be an int or [h, w], got {image_size!r}.")
    if min(size) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size {list(size)} is too small: each side must be >= {MIN_IMAGE_SIZE} "
            "(the PatchGAN discriminator and the 4-level U-Net need it)."
        )
    return size


def resolve_path(path: str, base_dir: str | os.PathLike) -> str:
    """``path`` when absolute, else ``base_dir/path`` (normalised)."""
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(os.fspath(base_dir), path))


def subject_id(record: dict[str, Any], keys: Sequence[str]) -> str:
    """The record's ``subject``, or one derived from the first file name (its stem up to the last ``_``/``-``)."""
    if record.get("subject"):
        return str(record["subject"])
    name = file_stem(str(record[keys[0]]))
    for sep in ("_", "-"):
        if sep in name:
            return name.rsplit(sep, 1)[0]
    return name


def read_json(path: str | os.PathLike) -> Any:
    """
    The content of a JSON file (a datalist).

    Raises:
        FileNotFoundError: naming the file.
        ValueError: malformed JSON, naming the file, line and column.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist not found: {os.path.abspath(path)}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def read_torch_file(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """
    ``torch.load(path, weights_only=True)`` of a file the bundle wrote (``what`` names it in the error).

    Raises:
        ValueError: the file cannot be read (truncated, not a torch file, unsafe pickle), naming it.
    """
    try:
        return torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling / zip errors of a corrupt or foreign file
        raise ValueError(f"{path}: cannot be read as {what} ({type(e).__name__}: {e}).") from e


def load_datalist(
    data_list_file_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    keys: Sequence[str],
    sections: Sequence[str] = ("training", "validation"),
) -> dict[str, list[dict[str, Any]]]:
    """
    Read a Decathlon-style datalist and return its ``sections`` with absolute paths for ``keys``.

    Each returned record keeps the other entries of the datalist record and always has ``subject``.
    Sections missing from the file are returned as empty lists, except ``training`` when it is asked for.

    Raises:
        FileNotFoundError: the datalist or a file it names is missing.
        ValueError: malformed JSON, no ``training`` list, or a record without one of ``keys``.
    """
    path = os.fspath(data_list_file_path)
    content = read_json(path)
    if not isinstance(content, dict) or ("training" in sections and not isinstance(content.get("training"), list)):
        raise ValueError(f"{path}: a datalist needs a 'training' list of records.")
    problems: list[str] = []
    out: dict[str, list[dict[str, Any]]] = {}
    for section in sections:
        records = content.get(section) or []
        out[section] = []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                problems.append(f"{section}[{i}]: not a dict")
                continue
            missing = [k for k in keys if k not in record]
            sid = record.get("subject", f"{section}[{i}]")
            if missing:
                problems.append(f"subject {sid}: missing key(s) {missing} (has {sorted(record)})")
                continue
            item = dict(record)
            for k in keys:
                item[k] = resolve_path(str(record[k]), dataset_dir)
                if not os.path.isfile(item[k]):
                    problems.append(f"subject {sid}, key '{k}': file not found: {item[k]}")
            item["subject"] = subject_id(record, keys)
            out[section].append(item)
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s) with the datalist:\n  " + "\n  ".join(problems))
    if "training" in sections and not out["training"]:
        raise ValueError(f"{path}: the 'training' list is empty.")
    return out


def section_records(
    data_list_file_path: str | os.PathLike, dataset_dir: str | os.PathLike, section: str, keys: Sequence[str]
) -> list[dict[str, Any]]:
    """
    The records of one datalist ``section`` with absolute paths for those of ``keys`` they have and a ``subject``,
    for the leak check (``bundle.validation.check_overlaps``): a missing datalist (records given directly, e.g. by
    MONAI Label) or section gives ``[]``; records without any of ``keys`` are left out.
    """
    path = os.fspath(data_list_file_path)
    content = read_json(path) if os.path.isfile(path) else {}
    out = []
    for record in (content.get(section) or []) if isinstance(content, dict) else []:
        present = [k for k in keys if isinstance(record, dict) and k in record]
        if present:
            item = {k: resolve_path(str(record[k]), dataset_dir) for k in present}
            item["subject"] = subject_id(record, present)
            out.append(item)
    return out


def train_val_split(
    datalist: dict[str, list[dict[str, Any]]], val_fraction: float = 0.2, seed: int = 0, min_val: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """
    ``{"training", "validation"}`` records: the datalist's own ``validation`` list when it has one, else a seeded
    subject-level split of ``training`` (all records of a subject go to the same side).

    Raises:
        ValueError: when ``val_fraction`` is outside [0, 1) or too few subjects remain for training.
    """
    if datalist.get("validation"):
        return {"training": list(datalist["training"]), "validation": list(datalist["validation"])}
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    subjects = sorted({r["subject"] for r in datalist["training"]})
    n_val = 0 if val_fraction == 0 else max(int(min_val), round(val_fraction * len(subjects)))
    if len(subjects) - n_val < 1:
        raise ValueError(f"{len(subjects)} training subject(s) are too few for a validation split of {n_val}.")
    order = np.random.default_rng(seed).permutation(len(subjects))
    val_subjects = {subjects[i] for i in order[:n_val]}
    return {
        "training": [r for r in datalist["training"] if r["subject"] not in val_subjects],
        "validation": [r for r in datalist["training"] if r["subject"] in val_subjects],
    }


def cached_dataset(
    data: Sequence[Any],
    transform: Callable[..., Any],
    cache_args: Mapping[str, Any] | None = None,
) -> Dataset:
    """
    The dataset of a config with the cache it asks for. Every cache keeps the deterministic transforms' output
    (up to the first random transform), which the configs make compact (cropped to the foreground, float16 images,
    uint8 masks).

    Args:
        data: the records.
        transform: the transforms.
        cache_args: ``cache``, ``cache_rate``, ``cache_dir``, ``num_workers`` (the configs' ``cache_args``):
        cache: ``memory`` (``CacheDataset``, ``cache_rate`` of the records in RAM), ``disk`` (``PersistentDataset``
            in ``cache_dir``, keyed by each record, the state of its files (``file_state_hashing``) and the
            transforms, so a changed file or preprocessing misses the old cache instead of reusing it) or ``none`` (``Dataset``: everything is recomputed each time).
        cache_rate: the fraction of records held in memory (``memory`` only).
        cache_dir: the folder of the disk cache (``disk`` only).
        num_workers: the threads that fill the memory cache.

    Raises:
        ValueError: an unknown ``cache``, a ``cache_rate`` outside [0, 1] or ``disk`` without ``cache_dir``.
    """
    args = dict(cache_args or {})
    cache, cache_rate = args.get("cache", "memory"), args.get("cache_rate", 1.0)
    cache_dir, num_workers = args.get("cache_dir"), args.get("num_workers", 1)
    check_cache(cache, cache_rate, cache_dir)
    if cache == "memory":
        return CacheDataset(data, transform, cache_rate=float(cache_rate), num_workers=num_workers)
    if cache == "disk":
        # track_meta keeps the metadata (spacing for HD95, file names) of cached volumes; reading MetaTensors back
        # needs weights_only=False, acceptable for files this dataset wrote itself
        return PersistentDataset(
            data,
            transform,
            cache_dir=os.fspath(cache_dir),
            hash_func=file_state_hashing,
            hash_transform=json_hashing,
            track_meta=True,
            weights_only=False,
        )
    return Dataset(data, transform)


def file_state_hashing(item: Any) -> bytes:
    """
    The disk cache key of a record: the record and, for each file it names, its size, modification time (ns) and
    inode. A file rewritten in place (or replaced by another) misses the old cache entry: never stale data.
    """
    files: dict[str, list[int]] = {}
    if isinstance(item, Mapping):
        for key, value in item.items():
            if isinstance(value, str) and os.path.isfile(value):
                st = os.stat(value)
                files[str(key)] = [int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)]
    return pickle_hashing({"record": item, "files": files})


def check_cache(cache: str, cache_rate: float = 1.0, cache_dir: str | os.PathLike | None = None) -> None:
    """
    Raises:
        ValueError: an unknown ``cache``, a ``cache_rate`` outside [0, 1] or ``disk`` without ``cache_dir``.
    """
    if cache not in ("memory", "disk", "none"):
        raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}.")
    if not 0.0 <= float(cache_rate) <= 1.0:
        raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate}.")
    if cache == "disk" and not cache_dir:
        raise ValueError("cache 'disk' needs a cache_dir (e.g. --cache_dir /scratch/multi_condos_cache).")


def as_modality_pair(modalities: Sequence[str]) -> list[str]:
    """
    Validate the modality pair ``[A, B]`` (datalist keys).

    Raises:
        ValueError: unless ``modalities`` is two distinct, non-empty strings other than ``subject``/``label``.
    """
    if isinstance(modalities, str) or len(modalities) != 2:
        raise ValueError(f"modalities must be a pair [A, B] of datalist keys, got {modalities!r}.")
    pair = [str(m) for m in modalities]
    if pair[0] == pair[1] or not all(pair) or {"subject", "label"} & set(pair):
        raise ValueError(f"modalities must be two different image keys, got {pair}.")
    return pair


def check_or_exit(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """
    Run a check from a config's ``initialize`` and turn a data or settings error into ``SystemExit`` with the
    message alone: ``python -m monai.bundle run`` then stops with that message and a non-zero status, without a
    traceback and before anything is written (config expressions re-raise ``Exception`` wrapped, not
    ``SystemExit``).
    """
    try:
        return check(*args, **kwargs)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"ERROR: {e}") from None


def require_file(path: str | os.PathLike, hint: str = "") -> str:
    """
    Raises:
        FileNotFoundError: naming ``path`` (and the ``hint`` on how to make it) when it is not a file.
    """
    if not os.path.isfile(os.fspath(path)):
        raise FileNotFoundError(f"{os.path.abspath(path)} not found" + (f": {hint}" if hint else "."))
    return os.fspath(path)


def require_records(records: Sequence[Any], section: str, data_list_file_path: str | os.PathLike) -> None:
    """
    Raises:
        ValueError: when the datalist has no ``section`` records.
    """
    if not records:
        raise ValueError(f"{data_list_file_path}: no '{section}' records to run on.")


def datalist_file(
    data_list_file_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    demo_data_list_file_path: str | os.PathLike | None = None,
) -> str:
    """
    ``data_list_file_path``, after generating the embedded demo dataset when it is the demo datalist and absent.
    """
    path = os.fspath(data_list_file_path)
    if demo_data_list_file_path is not None and os.path.abspath(path) == os.path.abspath(demo_data_list_file_path):
        ensure_demo_dataset(dataset_dir, path)
    return path


def datalist_images(
    data_list_file_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    key: str,
    section: str = "testing",
    demo_data_list_file_path: str | os.PathLike | None = None,
) -> list[dict[str, str]]:
    """
    ``[{"image": path}]`` for the ``key`` volume of every record of the datalist's ``section`` (absolute paths).

    When ``data_list_file_path`` is ``demo_data_list_file_path``, the demo dataset is generated first if absent.

    Raises:
        FileNotFoundError: the datalist or a file it names is missing.
        ValueError: malformed datalist, records without ``key``, or an empty ``section``.
    """
    path = datalist_file(data_list_file_path, dataset_dir, demo_data_list_file_path)
    datalist = load_datalist(path, dataset_dir, [key], sections=(section,))
    records = [{"image": record[key], **channel_of(record, key)} for record in datalist[section]]
    if not records:
        raise ValueError(
            f"{path}: no '{section}' records to run on. Choose another --data_section, or give the volumes "
            "directly: --dataset#data \"[{'image': '/path/to/volume.nii.gz'}]\"."
        )
    return records


def channel_of(record: dict[str, Any], key: str, image_key: str = "image") -> dict[str, Any]:
    """``{"channels": {image_key: i}}`` when ``record`` gives ``key`` a channel index, else ``{}``."""
    channels = record.get("channels") or {}
    return {"channels": {image_key: channels[key]}} if key in channels else {}


def file_stem(path: str) -> str:
    """The file name without its image extension (``.nii.gz``, ``.nii``, ...)."""
    name = os.path.basename(path)
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def check_records(records: Sequence[Mapping[str, Any]], key: str = "image") -> Sequence[Mapping[str, Any]]:
    """
    Check the input records of an inference config (``dataset#data``): a non-empty list of dicts whose ``key`` is an
    existing file, with distinct file names (the outputs are named after them in one folder).

    Raises:
        ValueError: an empty list, a record without ``key``, or two inputs with the same file name.
        FileNotFoundError: a missing input file.
    """
    if isinstance(records, (str, Mapping)) or not isinstance(records, Sequence) or not records:
        raise ValueError(f"dataset#data must be a non-empty list of records like [{{'{key}': path}}], got {records!r}.")
    seen: dict[str, str] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping) or key not in record:
            raise ValueError(f"dataset#data[{i}] must be a dict with an '{key}' entry, got {record!r}.")
        path = os.fspath(record[key])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset#data[{i}]: input volume not found: {path}")
        stem = file_stem(path)
        if stem in seen:
            raise ValueError(
                f"dataset#data: {seen[stem]} and {path} have the same file name; their outputs would overwrite "
                "each other in output_dir."
            )
        seen[stem] = path
    return records
