# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Scanning a dataset folder: the complete subjects of its layout as datalist records, and the skipped ones."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .arguments import as_str_list
from .layouts import (
    LAYOUT_MODALITIES,
    LAYOUTS,
    MSD_CHANNELS,
    check_dir,
    detect_in_files,
    list_files,
    match_layout,
    parse_patterns,
)

__all__ = ["MAX_LISTED", "scan_dataset", "scan_layout"]

#: how many skipped subjects a warning or a summary lists by name
MAX_LISTED = 20

#: other names accepted in ``modalities`` for the normalised keys
_MODALITY_ALIASES: dict[str, str] = {
    "t1n": "t1",
    "t1w": "t1",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2w": "t2",
    "t2f": "flair",
    "pt": "pet",
}


def _select_modalities(layout: str, modalities: Any, available: Sequence[str]) -> list[str]:
    """The requested image keys (normalised, in the given order), default all of ``available``."""
    if modalities is None:
        return list(available)
    keys = [
        m if m in available else _MODALITY_ALIASES.get(m.lower(), m.lower())
        for m in as_str_list(modalities, "modalities")
    ]
    unknown = [k for k in keys if k not in available]
    if unknown or not keys:
        raise ValueError(f"modalities {keys} are not image keys of layout {layout}; choose among {list(available)}.")
    if len(set(keys)) != len(keys):
        raise ValueError(f"modalities {keys} contain duplicates.")
    return keys


def scan_layout(
    dataset_dir: str | os.PathLike,
    layout: str,
    patterns: Any,
    modalities: Any,
    require_label: bool,
) -> tuple[str, list[str], list[dict[str, Any]], dict[str, list[str]]]:
    """``(layout, image keys, records, skipped)``; see :py:func:`scan_dataset`."""
    root = check_dir(dataset_dir)
    layout = str(layout).strip().lower()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}.")
    if patterns is not None and layout != "pattern":
        raise ValueError(f"--patterns is only used with --layout pattern (got --layout {layout}).")
    files = list_files(root)
    if layout == "auto":
        layout = detect_in_files(root, files)
    parsed = parse_patterns(patterns) if layout == "pattern" else None
    if parsed is not None and require_label and "label" not in parsed:
        raise ValueError("the patterns have no 'label' entry: add one, or set --require_label False.")
    available = [k for k in parsed if k != "label"] if parsed is not None else LAYOUT_MODALITIES[layout]
    image_keys = _select_modalities(layout, modalities, available)
    matches = match_layout(layout, files, parsed, test_images=not require_label)

    relevant = [*image_keys, "label"]
    duplicates = [
        f"subject {sid}, key '{key}': {' and '.join(paths)}"
        for key in relevant
        for sid, paths in sorted(matches.get(key, {}).items())
        if len(paths) > 1
    ]
    if duplicates:
        raise ValueError(
            f"{os.path.abspath(root)}: the same subject id was found more than once for a key (keep one copy, or "
            "scan a narrower folder):\n  " + "\n  ".join(duplicates)
        )

    required = relevant if require_label else image_keys
    subjects = sorted({sid for key in relevant for sid in matches.get(key, {})})
    records, skipped = [], {}
    for sid in subjects:
        missing = [key for key in required if sid not in matches.get(key, {})]
        if missing:
            skipped[sid] = missing
            continue
        record: dict[str, Any] = {"subject": sid}
        for key in relevant:
            if sid in matches.get(key, {}):
                record[key] = matches[key][sid][0]
        if layout == "msd":
            record["channels"] = {key: MSD_CHANNELS[key] for key in image_keys}
        records.append(record)
    if skipped:
        listed = [f"{sid} (missing {', '.join(keys)})" for sid, keys in list(skipped.items())[:MAX_LISTED]]
        more = f", and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
        warnings.warn(
            f"{os.path.abspath(root)}: skipped {len(skipped)} incomplete subject(s) of layout {layout}: "
            + "; ".join(listed)
            + more,
            stacklevel=3,
        )
    if not records:
        hint = " (or set --require_label False to keep subjects without a label)" if require_label else ""
        raise ValueError(
            f"{os.path.abspath(root)}: no complete subject of layout {layout} with {required}{hint}; "
            f"{len(skipped)} incomplete subject(s)."
        )
    return layout, image_keys, records, skipped


def scan_dataset(
    dataset_dir: str | os.PathLike,
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    modalities: Sequence[str] | str | None = None,
    require_label: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """
    Scan ``dataset_dir`` recursively for the subjects of ``layout``.

    Args:
        dataset_dir: the dataset folder.
        layout: ``auto`` (detected, see :py:func:`detect_layout`), ``brats2021``, ``brats2023``, ``msd``,
            ``hecktor`` or ``pattern``.
        patterns: for ``pattern`` only: ``{key: glob}`` relative to ``dataset_dir``, each glob with ``{subject}``
            (one path component part; every occurrence the same id) and optionally ``*``, ``?``, ``[...]``, ``**/``.
            The key ``label`` is the segmentation; the others are image keys.
        modalities: the image keys to require and write (normalised names; ``t1n``, ``t1c``, ``t2w``, ``t2f`` are
            accepted too), default all of the layout's.
        require_label: skip subjects without a label (default); when False they are kept without ``label`` key
            (and the MSD ``imagesTs`` volumes are included).

    Returns:
        the records sorted by subject (``{"subject": id, key: path relative to dataset_dir, ...}``, MSD records
        with ``"channels": {key: channel}``) and the skipped subjects ``{id: [missing keys]}`` (also warned about).

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        ValueError: an unknown or undetectable layout, bad patterns or modalities, the same subject id twice for one
            key, or no complete subject.
    """
    _, _, records, skipped = scan_layout(dataset_dir, layout, patterns, modalities, require_label)
    return records, skipped
