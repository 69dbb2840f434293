# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Checks of the records a config will actually use, before anything runs: every problem is collected (naming the
subject, the key and the file) and reported at once. Headers are checked first for all files (fast), then the voxels
(NaN/inf, label values), with results cached per file (path, size, mtime) within the process.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from .data import file_stem, subject_id

__all__ = ["DataProblems", "check_overlaps", "check_validation_labels", "summary_text", "validate_records"]

logger = logging.getLogger("multi_condos")

#: threads reading voxels in the data check (decompressing NIfTI files is most of a real dataset's check)
VOXEL_CHECK_THREADS = min(8, os.cpu_count() or 1)

#: per-file voxel statistics, keyed by (path, size, mtime_ns): a file is read once per process
_VOXEL_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


class DataProblems(ValueError):
    """All problems found in the records, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in the input data:\n  " + "\n  ".join(self.problems)
            if self.problems
            else "no problem"
        )


@dataclass
class _Header:
    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]


@dataclass
class DatasetSummary:
    """What was checked: subjects, shapes, spacings, intensity ranges per key, label values."""

    n_subjects: int = 0
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    spacings: set[tuple[float, ...]] = field(default_factory=set)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    label_values: set[int] = field(default_factory=set)


def _subject(record: Mapping[str, Any], keys: Sequence[str], index: int) -> str:
    if record.get("subject"):
        return str(record["subject"])
    for key in keys:
        if isinstance(record.get(key), str):
            return file_stem(record[key])
    return f"record {index}"


def _read_header(path: str) -> _Header:
    """nibabel header of ``path``; raises ``ValueError`` naming the problem."""
    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for non-image or damaged files
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from e
    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise ValueError(f"not an image volume ({type(img).__name__})")  # noqa: TRY004 (a data error)
    if len(img.shape) < 3:
        raise ValueError(f"a 2-D image (shape {tuple(img.shape)}): a 3-D volume is needed (axial slices = the last axis)")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return _Header(tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float), zooms)


def _channel_problem(shape: Sequence[int], channels: Any, key: str) -> str | None:
    """What is wrong with the channel index of a multi-channel file (``None`` when nothing is)."""
    n = int(shape[3]) if len(shape) > 3 else 1
    index = channels.get(key) if isinstance(channels, Mapping) else None
    if index is None:
        return None if n == 1 else f"{n} channels (shape {tuple(shape)}) but the record gives no channel index"
    if not 0 <= int(index) < n:
        return f"channel index {index} out of range for {n} channel(s)"
    return None


def _voxel_stats(path: str, is_label: bool) -> dict[str, Any]:
    st = os.stat(path)
    cache_key = (os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns))
    if cache_key in _VOXEL_CACHE and (not is_label or "values" in _VOXEL_CACHE[cache_key]):
        return _VOXEL_CACHE[cache_key]
    try:
        data = np.asarray(nib.load(path).dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as e:
        raise ValueError(f"truncated or corrupt image data ({type(e).__name__}: {e})") from e
    finite = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else None
    stats: dict[str, Any] = {"n_nonfinite": 0 if finite is None else int(data.size - np.count_nonzero(finite))}
    # the range of the finite voxels; without NaN/inf (the usual case) no masked copy: a third of the check's time
    values = data if stats["n_nonfinite"] == 0 else data[finite]
    stats["min"] = float(values.min()) if values.size else float("nan")
    stats["max"] = float(values.max()) if values.size else float("nan")
    # the content hash of the leak check: a copied, renamed or re-compressed file has the same voxels
    content = hashlib.blake2b(f"{data.shape}{data.dtype}".encode(), digest_size=16)
    content.update(np.ascontiguousarray(data))  # the array's buffer: the same bytes as tobytes(), not copied
    stats["content"] = content.hexdigest()
    if is_label and stats["n_nonfinite"] == 0:
        stats["values"] = sorted(int(v) for v in np.unique(data)) if np.all(data == np.round(data)) else None
    _VOXEL_CACHE[cache_key] = stats
    return stats


def validate_records(
    records: Sequence[Mapping[str, Any]],
    image_keys: Sequence[str],
    label_key: str | None = None,
    label_map: Mapping[Any, Any] | None = None,
    check_voxels: bool = True,
    check_geometry: bool = True,
    min_subjects: int = 1,
    what: str = "records",
    resampled_keys: Sequence[str] = (),
) -> DatasetSummary:
    """
    Check every record a workflow will use and report all problems at once.

    Checks: a record is a dict with every key of ``image_keys`` (and ``label_key`` when given); each file exists,
    is not empty and is a readable image; the images and label of a subject share shape and affine (when
    ``check_geometry``); no NaN/inf voxels and no truncated data (when ``check_voxels``); label values are integers
    in ``label_map`` (0 always allowed); at least ``min_subjects`` records. A multi-channel (4-D) file needs its
    channel index in the record's ``channels`` map (``{"flair": 0}``), within range. An image must be 3-D and (when
    ``check_voxels``) not blank (one value everywhere: nothing to sample or normalise). Keys in ``resampled_keys``
    (resampled onto another key's grid by the transforms, ``resample_to``) are exempt from the geometry check.

    Returns:
        a summary (subjects, shapes, spacings, intensity ranges per key, label values).

    Raises:
        DataProblems: a ``ValueError`` listing every problem, each naming the subject, the key and the file.
    """
    keys = [*image_keys, *([label_key] if label_key else [])]
    allowed = None if label_map is None else {0, *(int(float(k)) for k in dict(label_map))}
    problems: list[str] = []
    summary = DatasetSummary()
    if not isinstance(records, Sequence) or isinstance(records, (str, Mapping)):
        raise DataProblems([f"{what}: expected a list of records, got {type(records).__name__}"])
    if len(records) < min_subjects:
        problems.append(f"{what}: {len(records)} record(s), at least {min_subjects} needed")
    headers: dict[tuple[int, str], _Header] = {}
    for i, record in enumerate(records):  # pass 1: keys, files, headers, geometry
        if not isinstance(record, Mapping):
            problems.append(f"{what}[{i}]: not a dict but {type(record).__name__}")
            continue
        subject = _subject(record, keys, i)
        for key in keys:
            if key not in record:
                problems.append(f"subject {subject}: missing key '{key}' (has {sorted(record)})")
                continue
            path = str(record[key])
            if not os.path.isfile(path):
                problems.append(f"subject {subject}, key '{key}', file {path}: file not found")
                continue
            try:
                headers[(i, key)] = _read_header(path)
            except ValueError as e:
                problems.append(f"subject {subject}, key '{key}', file {path}: {e}")
                continue
            problem = _channel_problem(headers[(i, key)].shape, record.get("channels"), key)
            if problem:
                problems.append(f"subject {subject}, key '{key}', file {path}: {problem}")
        present = [k for k in keys if (i, k) in headers and k not in resampled_keys]
        if check_geometry and len(present) > 1:
            ref = headers[(i, present[0])]
            for key in present[1:]:
                h = headers[(i, key)]
                if h.shape[:3] != ref.shape[:3]:
                    problems.append(
                        f"subject {subject}, key '{key}', file {record[key]}: shape {h.shape} differs from "
                        f"'{present[0]}' {ref.shape}"
                    )
                elif not np.allclose(h.affine, ref.affine, atol=1e-3):
                    problems.append(
                        f"subject {subject}, key '{key}', file {record[key]}: affine differs from '{present[0]}' "
                        f"(max difference {np.abs(h.affine - ref.affine).max():.3g}); co-register or resample first"
                    )
        summary.n_subjects += 1
        for key in (k for k in keys if (i, k) in headers):
            summary.shapes.add(headers[(i, key)].shape)
            summary.spacings.add(tuple(round(z, 4) for z in headers[(i, key)].spacing))
    if check_voxels:  # pass 2: voxels of the files whose header is fine, read by threads (zlib releases the GIL)
        # one read per file: the modalities of a 4-D MSD file share it
        files = {(str(records[i][key]), key == label_key) for i, key in headers}
        with ThreadPoolExecutor(max_workers=VOXEL_CHECK_THREADS) as pool:
            futures = {file: pool.submit(_voxel_stats, *file) for file in sorted(files)}
        for i, key in headers:  # in record order: the report does not depend on the threads
            record, subject = records[i], _subject(records[i], keys, i)
            path, is_label = str(record[key]), key == label_key
            try:
                stats = futures[(path, is_label)].result()
            except ValueError as e:
                problems.append(f"subject {subject}, key '{key}', file {path}: {e}")
                continue
            if stats["n_nonfinite"]:
                problems.append(f"subject {subject}, key '{key}', file {path}: {stats['n_nonfinite']} NaN/inf voxel(s)")
                continue
            if not is_label and stats["min"] == stats["max"]:
                problems.append(
                    f"subject {subject}, key '{key}', file {path}: a blank image (every voxel is {stats['min']:.6g}): "
                    "no foreground to sample or normalise; remove the subject from the datalist or fix the file"
                )
                continue
            low, high = summary.ranges.get(key, (stats["min"], stats["max"]))
            summary.ranges[key] = (min(low, stats["min"]), max(high, stats["max"]))
            if is_label:
                values = stats.get("values")
                if values is None:
                    problems.append(f"subject {subject}, key '{key}', file {path}: non-integer label values")
                    continue
                summary.label_values.update(values)
                unknown = sorted(set(values) - allowed) if allowed is not None else []
                if unknown:
                    problems.append(
                        f"subject {subject}, key '{key}', file {path}: label values {unknown} not in label_map "
                        f"{dict(label_map or {})}"
                    )
    if problems:
        raise DataProblems(problems)
    logger.info(summary_text(summary, what))
    return summary


def check_overlaps(
    sections: Mapping[str, Sequence[Mapping[str, Any]]],
    image_keys: Sequence[str],
    check_content: bool = True,
    allow_overlap: bool = False,
    label_key: str | None = "label",
    validation_labels: bool = True,
) -> list[str]:
    """
    Leaks and duplicates among the sections a workflow uses (``training``, ``validation``, ``testing``): a subject id
    in two sections, a subject listed twice or two records with one subject id, a file used by two subjects, and
    (``check_content``) two subjects whose images have the same voxels (a copied or renamed record). A benchmark
    would otherwise report metrics on subjects it trained on. With ``check_content`` and ``validation_labels``, a
    ``validation`` section whose labels are all empty is refused too (``check_validation_labels``).

    Args:
        sections: the records of each section (absolute paths; already checked by ``validate_records``).
        image_keys: the image keys compared by content (labels are not: empty labels are alike).
        check_content: compare the voxel content of ``image_keys`` (read once per file and process).
        allow_overlap: a deliberate overlap: the problems are logged as a warning instead of raised.
        label_key: a file key compared by path only.
        validation_labels: check the ``validation`` labels (a workflow that selects its model by a validation Dice).

    Returns:
        the problems found (empty when none).

    Raises:
        ValueError: listing every problem, naming the subjects, sections and files, unless ``allow_overlap``; and
            from ``check_validation_labels``.
    """
    keys = [*image_keys, *([label_key] if label_key else [])]
    problems: list[str] = []
    first_use: dict[str, tuple[str, int, list[str]]] = {}  # subject -> (section, record index, files)
    file_owner: dict[str, tuple[str, str]] = {}  # file -> (section, subject)
    flagged: set[tuple[str, int]] = set()
    for section, records in sections.items():
        for i, record in enumerate(records):
            subject = subject_id(dict(record), list(image_keys))
            files = [os.path.abspath(str(record[k])) for k in keys if isinstance(record.get(k), str)]
            if subject in first_use:
                where, j, earlier = first_use[subject]
                if where != section:
                    problems.append(f"subject {subject} is in both '{where}' and '{section}'")
                elif earlier == files:
                    problems.append(f"'{section}': subject {subject} is listed twice (records {j} and {i})")
                else:
                    problems.append(f"'{section}': subject id {subject} is used by two records ({j} and {i})")
                flagged.add((section, i))
                continue
            first_use[subject] = (section, i, files)
            for path in files:
                owner = file_owner.setdefault(path, (section, subject))
                if owner != (section, subject) and (section, i) not in flagged:
                    problems.append(
                        f"file {path} is used by subject {owner[1]} ('{owner[0]}') and subject {subject} ('{section}')"
                    )
                    flagged.add((section, i))
    if check_content:
        problems += _content_overlaps(sections, image_keys, flagged)
    if problems and not allow_overlap:
        raise ValueError(
            f"{len(problems)} leak(s) or duplicate(s) in the records of {', '.join(sections)}:\n  "
            + "\n  ".join(problems)
            + "\nFix the datalist (each subject once, in one section), or pass --allow_overlap True for a deliberate "
            "overlap."
        )
    if problems:
        logger.warning("--allow_overlap True: the records overlap:\n  " + "\n  ".join(problems))
    if check_content and validation_labels and label_key and sections.get("validation"):
        check_validation_labels(sections["validation"], label_key, list(image_keys))
    return problems


def check_validation_labels(
    records: Sequence[Mapping[str, Any]], label_key: str = "label", image_keys: Sequence[str] = ("image",)
) -> None:
    """
    Check that at least one validation record's label holds a structure (a value other than 0): with every label
    empty, the validation Dice cannot tell models apart and the best-metric ``model.pt`` would stay the weights of the
    first validation, with no other sign. Records without a readable label file are the data check's report.

    Raises:
        ValueError: naming the validation subjects, when all their labels are empty.
    """
    labels = {
        subject_id(dict(r), list(image_keys)): str(r[label_key])
        for r in records
        if isinstance(r.get(label_key), str) and os.path.isfile(str(r[label_key]))
    }
    if not labels:
        return
    try:
        empty = [subject for subject, path in labels.items() if _voxel_stats(path, True).get("values") == [0]]
    except ValueError:
        return
    if len(empty) == len(labels):
        listed = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise ValueError(
            f"the labels of all {len(empty)} validation subject(s) are empty ({listed}): the validation Dice cannot "
            "choose between models, so model.pt would keep the weights of the first validation. Validate on at least "
            "one subject with a labelled structure (the datalist's 'validation' list, or another --seed or "
            "--val_fraction)."
        )


def _content_overlaps(
    sections: Mapping[str, Sequence[Mapping[str, Any]]], image_keys: Sequence[str], flagged: set[tuple[str, int]]
) -> list[str]:
    """Pairs of subjects whose ``image_keys`` files have the same voxel content (records already flagged skipped)."""
    entries = [
        (section, i, subject_id(dict(record), list(image_keys)), key, str(record[key]))
        for section, records in sections.items()
        for i, record in enumerate(records)
        if (section, i) not in flagged
        for key in image_keys
        if isinstance(record.get(key), str) and os.path.isfile(str(record[key]))
    ]
    with ThreadPoolExecutor(max_workers=VOXEL_CHECK_THREADS) as pool:
        futures = {path: pool.submit(_voxel_stats, path, False) for path in sorted({e[4] for e in entries})}
    problems: list[str] = []
    seen: dict[str, tuple[str, str, str]] = {}  # content -> (section, subject, file)
    reported: set[tuple[str, int]] = set()
    for section, i, subject, key, path in entries:
        try:
            content = futures[path].result()["content"]
        except ValueError:  # an unreadable file is the data check's report, not a leak
            continue
        other = seen.setdefault(content, (section, subject, path))
        if other[1] != subject and (section, i) not in reported:
            problems.append(
                f"subjects {other[1]} ('{other[0]}') and {subject} ('{section}') have the same '{key}' image "
                f"content ({other[2]} and {path}): a copied or renamed record"
            )
            reported.add((section, i))
    return problems


def summary_text(summary: DatasetSummary, what: str = "records") -> str:
    """A printable dataset summary."""
    lines = [f"{what}: {summary.n_subjects} subject(s) checked, no problem found"]
    lines.append(f"  shapes: {sorted(summary.shapes)}")
    lines.append(f"  spacings: {sorted(summary.spacings)}")
    for key, (low, high) in sorted(summary.ranges.items()):
        lines.append(f"  intensity range '{key}': [{low:.4g}, {high:.4g}]")
    if summary.label_values:
        lines.append(f"  label values: {sorted(summary.label_values)}")
    return "\n".join(lines)
