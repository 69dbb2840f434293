# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Fine-tuning helpers: choosing the pre-trained generator (or scratch), transferring its weights into the
segmentation ``BasicUNet``, and the seeded, nested, subject-level label-fraction selection."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.networks.utils import copy_model_state
from torch import nn

from .data import channel_of, train_val_split
from .records import PREPROCESSING_IDS, SEGMENTATION_KIND, ModelSource, load_generators, read_record

__all__ = [
    "ENCODER_BLOCKS",
    "GENERATOR_STRICT_IDS",
    "SCRATCH_VALUES",
    "check_schedule",
    "continued_model",
    "generator_source",
    "init_summary",
    "initialise_network",
    "input_key",
    "load_pretrained",
    "resolve_pretrained",
    "segmentation_records",
    "select_finetune_records",
    "select_source",
    "write_selection",
]

logger = logging.getLogger("multi_condos")

#: ``pretrained_ckpt`` values meaning "train from scratch" (besides null): the CLI cannot pass a bare None
SCRATCH_VALUES = frozenset({"", "none", "null", "scratch"})
#: ``BasicUNet`` blocks transferred with ``transfer: encoder``
ENCODER_BLOCKS: tuple[str, ...] = ("conv_0", "down_1", "down_2", "down_3", "down_4")
_SOURCES = ("g_ab", "g_ba")

#: the ids that must agree between a generator's record and the fine-tuning that starts from it (the method's point is
#: that there is no domain shift between the two stages); the rest (image size, crop) is only inherited
GENERATOR_STRICT_IDS: tuple[str, ...] = tuple(
    k for k in PREPROCESSING_IDS if k not in ("source", "image_size", "crop_foreground")
) + ("features",)


def resolve_pretrained(pretrained_ckpt: str | None, default_ckpt: str | None = None) -> str | None:
    """
    The generator file to initialise from, or ``None`` for training from scratch.

    ``None`` and the strings ``none``/``null``/``scratch`` mean scratch. A missing *default* file (a fresh bundle
    in MONAI Label or the Model Zoo tests) gives scratch with a loud warning; a missing file that was asked for is
    an error.

    Raises:
        FileNotFoundError: ``pretrained_ckpt`` was given explicitly and does not exist.
    """
    if pretrained_ckpt is None or str(pretrained_ckpt).strip().lower() in SCRATCH_VALUES:
        return None
    path = os.path.abspath(os.fspath(pretrained_ckpt))
    if os.path.isfile(path):
        return path
    if default_ckpt is not None and path == os.path.abspath(os.fspath(default_ckpt)):
        logger.warning(
            f"\n{'!' * 100}\nWARNING: the default pre-trained generators file {path} does not exist: fine-tuning "
            f"starts FROM SCRATCH.\nRun pre-training first (configs/pretrain.yaml), or pass --pretrained_ckpt '$None' "
            f"to train from scratch on purpose.\n{'!' * 100}"
        )
        return None
    raise FileNotFoundError(
        f"pretrained_ckpt not found: {path}. Give an existing generators.pt, or --pretrained_ckpt '$None' for "
        "training from scratch."
    )


def load_pretrained(pretrained_ckpt: str | None, default_ckpt: str | None = None) -> dict[str, Any] | None:
    """
    Read a ``generators.pt`` and its record (``bundle.records.load_generators``).

    Returns:
        ``None`` for scratch, else ``{"path", "state": {"g_ab", "g_ba"}, "record"}``.

    Raises:
        ValueError: a file that is not a generators file, or whose record does not describe it.
        FileNotFoundError: see ``resolve_pretrained``.
    """
    path = resolve_pretrained(pretrained_ckpt, default_ckpt)
    if path is None:
        return None
    state, record = load_generators(path)
    return {"path": path, "state": state, "record": record}


def generator_source(init_state: dict[str, Any] | None) -> ModelSource | None:
    """The generator's record as a source of fine-tuning settings (``bundle.records.resolve_settings``)."""
    if init_state is None:
        return None
    record = dict(init_state["record"])
    record["preprocessing"] = dict(record.get("preprocessing") or {})
    record["labels"] = {}
    source = ModelSource(init_state["path"], record, GENERATOR_STRICT_IDS)
    source.settings["features"] = list(record["network"]["args"]["features"])
    return source


def continued_model(model_file: str, inherit: bool = True) -> ModelSource | None:
    """
    The record of the segmentation model this run replaces or continues (MONAI Label's ``/train/`` loads
    ``models/model.pt`` into the network), as a source that supplies the ids left null; ``None`` without one.
    """
    if not inherit or not os.path.isfile(model_file):
        return None
    record = read_record(model_file, SEGMENTATION_KIND)
    if record is None:
        return None
    source = ModelSource(model_file, record, strict=())
    logger.info(f"settings not given explicitly are taken from {source.name} (--inherit_model_record False: not)")
    return source


def select_source(init_state: dict[str, Any] | None, source: str = "g_ab") -> dict[str, Any] | None:
    """The generator ``source`` of ``init_state`` as ``{"path", "source", "state_dict", "network_args"}``."""
    if init_state is None:
        return None
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {list(_SOURCES)}, got {source!r}.")
    return {
        "path": init_state["path"],
        "source": source,
        "state_dict": init_state["state"][source],
        "network_args": dict(init_state["record"]["network"]["args"]),
    }


def init_summary(init_state: dict[str, Any] | None, transfer: str = "full") -> dict[str, Any]:
    """How the segmentation network was initialised, for its record: scratch, or the generator file and its hash."""
    if init_state is None:
        return {"kind": "scratch"}
    weights = (init_state["record"].get("weights") or {}).get("sha256")
    return {"kind": "pretrained", "file": init_state["path"], "sha256": weights, "transfer": transfer}


def input_key(modalities: Sequence[str], source: str = "g_ab") -> str:
    """The datalist key the segmentation network reads: modality A for ``g_ab``, B for ``g_ba``."""
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {list(_SOURCES)}, got {source!r}.")
    return str(modalities[0] if source == "g_ab" else modalities[1])


def _expected_keys(network: nn.Module, transfer: str) -> list[str]:
    keys = list(network.state_dict())
    if transfer == "full":
        return [k for k in keys if not k.startswith("final_conv.")]
    return [k for k in keys if k.split(".", 1)[0] in ENCODER_BLOCKS]


def initialise_network(
    network: nn.Module, init_state: dict[str, Any] | None, transfer: str = "full", output_dir: str | None = None
) -> nn.Module:
    """
    Load the pre-trained generator into the segmentation ``BasicUNet`` with MONAI ``copy_model_state``: every
    tensor except the output conv (``transfer="full"``) or the encoder blocks only (``"encoder"``, an ablation);
    the rest keeps its random initialisation. Logs and writes ``output_dir/init.txt``: ``init: scratch`` or
    ``init: pretrained (N/M tensors from <file>)``.

    Raises:
        ValueError: unknown ``transfer`` or fewer tensors loaded than expected (a topology mismatch).
    """
    if transfer not in ("full", "encoder"):
        raise ValueError(f"transfer must be 'full' or 'encoder', got {transfer!r}.")
    total = len(network.state_dict())
    if init_state is None:
        line = "init: scratch"
    else:
        expected = _expected_keys(network, transfer)
        exclude = r"^final_conv\." if transfer == "full" else r"^(upcat_\d|final_conv)\."
        _, updated, _ = copy_model_state(network, init_state["state_dict"], exclude_vars=exclude, inplace=True)
        if sorted(updated) != sorted(expected):
            missing = sorted(set(expected) - set(updated))
            raise ValueError(
                f"{init_state['path']}: only {len(updated)}/{len(expected)} expected tensors of the segmentation "
                f"network could be loaded (transfer={transfer}); not loaded e.g. {missing[:5]}. The generator and "
                "the segmentation network must share the BasicUNet topology (features, in_channels)."
            )
        line = f"init: pretrained ({len(updated)}/{total} tensors from {init_state['path']}, {init_state['source']}, transfer={transfer})"
    logger.info(line)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "init.txt"), "w") as f:
            f.write(line + "\n")
    return network


def segmentation_records(records: Sequence[dict[str, Any]], image_key: str, label_key: str = "label") -> list[dict]:
    """
    ``{"image", "label", "subject"}`` records (the form MONAI Label uses) from datalist records; the channel index
    of a multi-channel file (MSD) follows as ``{"channels": {"image": i}}``.
    """
    out = []
    for r in records:
        item = {"image": r[image_key], "subject": r["subject"]}
        if label_key in r:
            item["label"] = r[label_key]
        item.update(channel_of(r, image_key))
        out.append(item)
    return out


def select_finetune_records(
    datalist: dict[str, list[dict[str, Any]]],
    image_key: str,
    label_fraction: float = 1.0,
    val_fraction: float = 0.2,
    seed: int = 0,
    output_dir: str | None = None,
    label_key: str = "label",
) -> dict[str, list[dict[str, Any]]]:
    """
    Fine-tuning records: validation subjects (the datalist's ``validation`` list, else a seeded subject-level
    split of ``training`` that does not depend on ``label_fraction``) and a seeded subject-level subset of the
    remaining training subjects with ``ceil(label_fraction * n)`` subjects (at least 1). The subsets are nested:
    for one seed, the subjects of a smaller fraction are always inside those of a larger one. ``testing`` records
    are never used. The chosen subject ids are written to ``output_dir/label_subjects.json``.

    Raises:
        ValueError: ``label_fraction`` outside (0, 1] or records without a label.
    """
    if not 0 < float(label_fraction) <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}.")
    for section in ("training", "validation"):
        unlabeled = [r["subject"] for r in datalist.get(section, []) if label_key not in r]
        if unlabeled:
            raise ValueError(f"{len(unlabeled)} {section} record(s) have no '{label_key}': {unlabeled[:5]}")
    split = train_val_split(datalist, val_fraction, seed)
    subjects = sorted({r["subject"] for r in split["training"]})
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_labeled = max(1, math.ceil(float(label_fraction) * len(subjects) - 1e-9))
    chosen = {subjects[i] for i in order[:n_labeled]}
    training = [r for r in split["training"] if r["subject"] in chosen]
    result = {
        "training": segmentation_records(training, image_key, label_key),
        "validation": segmentation_records(split["validation"], image_key, label_key),
    }
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        summary = {
            "label_fraction": float(label_fraction),
            "seed": int(seed),
            "input_key": image_key,
            "n_available": len(subjects),
            "training_subjects": sorted(chosen),
            "validation_subjects": sorted({r["subject"] for r in split["validation"]}),
        }
        with open(os.path.join(output_dir, "label_subjects.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return result


def check_schedule(epochs: int, val_interval: int) -> None:
    """
    Raises:
        ValueError: when no validation would run (``val_interval`` > ``epochs``), so no model would be saved.
    """
    if int(val_interval) < 1 or int(val_interval) > int(epochs):
        raise ValueError(
            f"val_interval={val_interval} with epochs={epochs}: validation (which saves the best model.pt) would never "
            "run. Use 1 <= val_interval <= epochs."
        )


def write_selection(
    training: Sequence[dict[str, Any]],
    validation: Sequence[dict[str, Any]],
    output_dir: str,
    label_fraction: float | None = None,
    seed: int | None = None,
) -> str:
    """
    Write the subjects a fine-tuning run uses (from the records it actually uses, ours or MONAI Label's) to
    ``output_dir/label_subjects.json``; returns the path.
    """
    from .data import subject_id

    def ids(records: Sequence[dict[str, Any]]) -> list[str]:
        return sorted({subject_id(dict(r), ["image"]) for r in records})

    summary = {
        "label_fraction": None if label_fraction is None else float(label_fraction),
        "seed": None if seed is None else int(seed),
        "training_subjects": ids(training),
        "validation_subjects": ids(validation),
    }
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "label_subjects.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    return path
