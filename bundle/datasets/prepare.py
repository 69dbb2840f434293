# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Writing a datalist (scan, split, label convention, one atomic JSON write), its summary and the next commands."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from ..files import atomic_write_json
from .arguments import read_exclude
from .conventions import LABEL_CONVENTIONS, as_labels, custom_convention, stored_convention
from .layouts import LAYOUT_MODALITIES
from .scan import MAX_LISTED, scan_layout
from .split import SECTIONS, split_records

__all__ = ["next_commands", "prepare_datalist", "summary_text"]


def _write_json(data: Mapping[str, Any], path: str, overwrite: bool) -> None:
    """Write ``data`` to ``path`` atomically; an existing ``path`` is only replaced when ``overwrite``."""
    if not atomic_write_json(path, data, overwrite=overwrite):
        raise FileExistsError(f"{os.path.abspath(path)} already exists; set --overwrite True to replace it.")


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike,
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    modalities: Sequence[str] | str | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    exclude: Sequence[str] | str | os.PathLike | None = None,
    require_label: bool = True,
    labels: Mapping[Any, str] | str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """
    Scan ``dataset_dir`` (:py:func:`scan_dataset`), split it (:py:func:`split_records`) and write the datalist JSON
    to ``output`` (atomically, indent 2).

    The datalist has ``name`` (the folder's name), ``layout``, ``modalities`` (image keys), ``label_convention``
    (``{"name", "labels": {"1": ...}, "regions": {...}}``), ``seed``, ``test_fraction``, ``val_fraction``,
    ``excluded`` (the excluded subject ids found in the dataset), ``skipped`` (``{id: [missing keys]}``) and the
    ``training``, ``validation`` and ``testing`` records (paths relative to ``dataset_dir``).

    Args:
        labels: for ``layout="pattern"`` only: ``{value: name}`` of the label values (convention ``custom`` with
            the region ``foreground`` and one region per label name); without it the convention has no labels.
        overwrite: replace an existing ``output`` (never done otherwise).
        others: see :py:func:`scan_dataset` and :py:func:`split_records`.

    Returns:
        the datalist written.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        FileNotFoundError: ``dataset_dir`` or an exclude file is missing.
        ValueError: see :py:func:`scan_dataset` and :py:func:`split_records`; ``labels`` with a fixed layout.
    """
    output = os.fspath(output)
    if os.path.isdir(output):
        raise ValueError(f"output {os.path.abspath(output)} is a folder; give the datalist file path.")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(output)} already exists; set --overwrite True to replace it.")
    layout, image_keys, records, skipped = scan_layout(dataset_dir, layout, patterns, modalities, bool(require_label))
    if layout == "pattern":
        convention = custom_convention(as_labels(labels) if labels is not None else None)
    elif labels is not None:
        raise ValueError(f"--labels is only used with --layout pattern; layout {layout} has a fixed label convention.")
    else:
        spec = LABEL_CONVENTIONS[layout]
        convention = stored_convention(layout, spec["labels"], spec["regions"])
    # excluded subjects that were skipped as incomplete are excluded too (not warned about as unknown ids)
    exclude_ids = read_exclude(exclude)
    excluded = sorted(set(exclude_ids) & ({r["subject"] for r in records} | set(skipped)))
    splits = split_records(
        records, val_fraction, test_fraction, int(seed), exclude=[i for i in exclude_ids if i not in skipped]
    )
    skipped = {sid: keys for sid, keys in skipped.items() if sid not in excluded}
    if not splits["training"]:
        raise ValueError("no training subject left after the exclusions.")
    datalist = {
        "name": os.path.basename(os.path.normpath(os.path.abspath(os.fspath(dataset_dir)))),
        "layout": layout,
        "modalities": image_keys,
        "label_convention": convention,
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "val_fraction": float(val_fraction),
        "require_label": bool(require_label),
        "excluded": excluded,
        "skipped": skipped,
        **splits,
    }
    _write_json(datalist, output, overwrite=bool(overwrite))
    return datalist


def summary_text(datalist: Mapping[str, Any]) -> str:
    """A readable summary of a datalist written by :py:func:`prepare_datalist` (counts, keys, labels)."""
    counts = {section: len(datalist.get(section) or []) for section in SECTIONS}
    unlabeled = sum("label" not in r for r in datalist.get("training") or [])
    conv = datalist.get("label_convention")
    lines = [
        f"dataset: {datalist.get('name', '?')} (layout {datalist.get('layout', '?')})",
        f"subjects: {sum(counts.values())} (training {counts['training']}"
        + (f" of which {unlabeled} without label" if unlabeled else "")
        + f", validation {counts['validation']}, testing {counts['testing']})",
        f"split: seed {datalist.get('seed')}, test_fraction {datalist.get('test_fraction')}, "
        f"val_fraction {datalist.get('val_fraction')}",
        f"modalities: {', '.join(datalist.get('modalities') or [])}",
    ]
    if isinstance(conv, Mapping):
        labels = ", ".join(f"{v} {n}" for v, n in (conv.get("labels") or {}).items()) or "unknown"
        regions = ", ".join(f"{r} {list(vs)}" for r, vs in (conv.get("regions") or {}).items()) or "none"
        lines += [
            f"label convention: {conv.get('name', '?')}",
            f"  labels: {labels}",
            f"  regions: {regions}",
        ]
    else:
        lines.append(f"label convention: {conv if conv else 'none'}")
    skipped = datalist.get("skipped") or {}
    listed = "; ".join(f"{s} (missing {', '.join(k)})" for s, k in list(skipped.items())[:MAX_LISTED])
    lines.append(f"skipped (incomplete): {len(skipped)}" + (f": {listed}" if listed else ""))
    if len(skipped) > MAX_LISTED:
        lines[-1] += f", and {len(skipped) - MAX_LISTED} more"
    excluded = list(datalist.get("excluded") or [])
    lines.append(f"excluded: {len(excluded)}" + (f": {', '.join(excluded)}" if excluded else ""))
    return "\n".join(lines)


def next_commands(
    datalist: Mapping[str, Any], dataset_dir: str | os.PathLike, data_list_file_path: str | os.PathLike
) -> list[str]:
    """
    The pre-training and fine-tuning commands for a datalist written by :py:func:`prepare_datalist`: with the
    preset ``configs/brats.yaml`` (BraTS, MSD) or ``configs/hecktor.yaml``, and ``--modalities`` (the first two
    image keys) when the datalist has a subset of the layout's keys or a custom layout; for a custom layout also
    ``--label_map`` (every label value to the foreground). A datalist with one modality gets a comment instead
    (the workflows need a pair).
    """
    data = f"--dataset_dir {shlex.quote(os.fspath(dataset_dir))} --data_list_file_path {shlex.quote(os.fspath(data_list_file_path))}"
    layout = datalist.get("layout")
    keys = [str(k) for k in datalist.get("modalities") or []]
    mods = ' --modalities "[' + ",".join(f"'{k}'" for k in keys[:2]) + ']"'
    if layout in LAYOUT_MODALITIES and sorted(keys) == sorted(LAYOUT_MODALITIES[layout]):
        mods = ""  # the preset's pair
    if layout in LAYOUT_MODALITIES:
        preset = "configs/hecktor.yaml" if layout == "hecktor" else "configs/brats.yaml"
        pretrain = f"\"['configs/pretrain.yaml','{preset}']\""
        train = f"\"['configs/train.yaml','{preset}']\""
        label_map = ""
    else:
        pretrain, train = "configs/pretrain.yaml", "configs/train.yaml"
        conv = datalist.get("label_convention")
        values = list(conv.get("labels") or {}) if isinstance(conv, Mapping) else []
        label_map = ' --label_map "{' + (", ".join(f"{v}: 1" for v in values) or "VALUE: 1, ...") + '}"'
    commands = [
        f"python -m monai.bundle run training --config_file {pretrain} {data}{mods}",
        f"python -m monai.bundle run --config_file {train} {data}{mods}{label_map}",
    ]
    if len(keys) < 2:
        return [f"# the bundle's workflows need a pair of image modalities; this datalist has only {', '.join(keys)}"]
    return commands
