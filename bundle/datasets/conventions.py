# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Label conventions of the known datasets (label values, regions) and of custom ones: the ``label_map`` of a
region (``region_label_map``) and the convention stored in a datalist (``datalist_label_convention``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..data import read_json
from .arguments import parse_literal

__all__ = [
    "LABEL_CONVENTIONS",
    "as_labels",
    "custom_convention",
    "datalist_label_convention",
    "region_label_map",
    "stored_convention",
]

#: label values (``{value: name}``) and regions (``{region: [values]}``) of the known datasets
LABEL_CONVENTIONS: dict[str, dict[str, dict[Any, Any]]] = {
    "brats2021": {
        "labels": {1: "NCR/NET", 2: "edema (ED)", 4: "enhancing tumour (ET)"},
        "regions": {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]},
    },
    "brats2023": {
        "labels": {1: "NETC", 2: "SNFH", 3: "ET"},
        "regions": {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]},
    },
    "msd": {
        "labels": {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        "regions": {"wt": [1, 2, 3], "tc": [2, 3], "et": [3]},
    },
    "hecktor": {
        "labels": {1: "GTVp", 2: "GTVn"},
        "regions": {"gtvp": [1], "gtvn": [2], "gtv": [1, 2], "tumour": [1]},
    },
}


def as_labels(labels: Any) -> dict[int, str]:
    """``{value: name}`` from a dict (or its literal string) with integer-like keys."""
    labels = parse_literal(labels)
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a dict {{value: name}}, e.g. \"{{1: 'lesion'}}\", got {labels!r}.")
    out = {}
    for value, name in labels.items():
        try:
            v = int(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"label value {value!r} is not an integer.") from None
        if v <= 0 or v != float(value):
            raise ValueError(f"label value {value!r} must be a positive integer (0 is background).")
        out[v] = str(name)
    return dict(sorted(out.items()))


def stored_convention(name: str, labels: Mapping[int, str], regions: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The JSON form of a convention (string label values)."""
    return {
        "name": name,
        "labels": {str(v): str(n) for v, n in sorted(labels.items())},
        "regions": {r: [int(v) for v in values] for r, values in regions.items()},
    }


def custom_convention(labels: Mapping[int, str] | None) -> dict[str, Any]:
    """A user-given convention: region ``foreground`` (every value) and one region per label name."""
    if not labels:
        return stored_convention("custom", {}, {})
    regions: dict[str, list[int]] = {"foreground": sorted(labels)}
    for value, name in labels.items():
        slug = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
        if slug and slug not in regions:
            regions[slug] = [value]
    return stored_convention("custom", labels, regions)


def _convention(label_convention: Mapping[str, Any] | str) -> tuple[str, dict[int, str], dict[str, list[int]]]:
    if isinstance(label_convention, str):
        if label_convention not in LABEL_CONVENTIONS:
            raise ValueError(
                f"unknown label convention {label_convention!r}; known: {sorted(LABEL_CONVENTIONS)} (or the "
                "label_convention dict of a datalist written by scripts/prepare_datalist.py)."
            )
        conv = LABEL_CONVENTIONS[label_convention]
        return label_convention, dict(conv["labels"]), {r: list(v) for r, v in conv["regions"].items()}
    if not isinstance(label_convention, Mapping) or not isinstance(label_convention.get("labels"), Mapping):
        raise ValueError(f"a label convention must be a name or a dict with 'labels', got {label_convention!r}.")
    labels = {int(float(v)): str(n) for v, n in label_convention["labels"].items()}
    regions = {str(r): [int(float(v)) for v in vs] for r, vs in dict(label_convention.get("regions") or {}).items()}
    return str(label_convention.get("name", "custom")), labels, regions


def region_label_map(label_convention: Mapping[str, Any] | str, region: str) -> dict[int, int]:
    """
    The ``label_map`` (``{value: class}``) of a binary segmentation of ``region``: ``1`` for the convention's label
    values in the region, ``0`` for its other values (mapped to background, never rejected).

    Args:
        label_convention: a name of ``LABEL_CONVENTIONS`` or the ``label_convention`` dict stored in a datalist.
        region: a region of the convention, e.g. ``wt``, ``tc``, ``et`` (BraTS, MSD) or ``gtvp``, ``gtvn``,
            ``gtv``, ``tumour`` (HECKTOR).

    Raises:
        ValueError: an unknown convention name (listing the known ones) or region (listing the convention's).
    """
    name, labels, regions = _convention(label_convention)
    key = str(region).strip().lower()
    if key not in regions:
        known = sorted(regions) if regions else "none (set --label_map instead)"
        raise ValueError(f"unknown region {region!r} of label convention {name!r}; its regions: {known}.")
    inside = set(regions[key])
    return {value: int(value in inside) for value in sorted(set(labels) | inside)}


def datalist_label_convention(data_list_file_path: str | os.PathLike) -> dict[str, Any]:
    """
    The ``label_convention`` dict (``name``, ``labels``, ``regions``) of a datalist written by
    :py:func:`prepare_datalist`.

    Raises:
        FileNotFoundError: the datalist does not exist.
        ValueError: malformed JSON, or a datalist without a label convention dict (e.g. the demo datalist or a
            hand-written one): then ``--label_map`` must be set instead.
    """
    path = os.fspath(data_list_file_path)
    content = read_json(path)
    conv = content.get("label_convention") if isinstance(content, dict) else None
    if isinstance(conv, str) and conv in LABEL_CONVENTIONS:
        spec = LABEL_CONVENTIONS[conv]
        return stored_convention(conv, spec["labels"], spec["regions"])
    if not isinstance(conv, Mapping) or not isinstance(conv.get("labels"), Mapping) or not conv.get("regions"):
        raise ValueError(
            f"{path} has no label convention with regions (it was not written by scripts/prepare_datalist.py, or "
            'its labels are custom): set --label_map instead, e.g. --label_map "{1: 1, 2: 1}".'
        )
    return dict(conv)
