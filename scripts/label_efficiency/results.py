# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Everything the benchmark reads from what a run wrote, in one place: a fine-tuning's initialisation from its model
record (``models/model.json``) and its label subjects, its validation history (best and last epoch), the test
metrics (summary and per subject), pre-training's last validation and losses (``validation_metrics.csv``,
``losses.csv``), the time of the training loops, and the test subjects of the datalist.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from bundle.files import sha256_file
from bundle.records import SEGMENTATION_KIND, read_record

from .plan import VARIANTS, BenchmarkError
from .stats import SUBJECT_KEYS, finite_float

__all__ = [
    "check_init",
    "finetune_validation",
    "last_losses",
    "last_validation",
    "read_init",
    "read_json",
    "read_selection",
    "read_test_metrics",
    "recorded_settings",
    "testing_subject_ids",
    "train_loop_seconds",
    "validation_history",
]

#: the validation metric of fine-tuning (configs/train.yaml ``validate#key_metric``), written by its TensorBoard handler
VALIDATION_TAG = "val_mean_dice"
#: a trainer's epoch line in its log file (ignite: "Epoch[3] Complete. Time taken: 00:01:02.345")
_EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):(\d+(?:\.\d+)?)")


def read_init(ckpt_dir: str, run_dir: str = "") -> dict[str, Any]:
    """
    How a fine-tuning initialised its network, as its model record says (``ckpt_dir/model.json``, ``training.init``:
    ``{"kind": "scratch"}`` or ``{"kind": "pretrained", "file", "sha256", "transfer"}``).

    Raises:
        BenchmarkError: no model, no record, or a record that does not describe the weights.
    """
    try:
        record = read_record(os.path.join(ckpt_dir, "model.pt"), SEGMENTATION_KIND, required=True)
    except (FileNotFoundError, ValueError) as e:
        raise BenchmarkError(f"{run_dir or ckpt_dir}: the fine-tuning's initialisation is unknown ({e})") from None
    return dict((record.get("training") or {}).get("init") or {})


def check_init(init: dict[str, Any], variant: str, generators_file: str | None, run_dir: str = "") -> str:
    """
    The recorded initialisation must match the run's method: scratch for ``scratch``; for a pre-trained variant,
    the weights of exactly its pre-training's ``generators_file`` (path and SHA-256). Returns a one-line description.

    Raises:
        BenchmarkError: otherwise (the benchmark must not report a mislabeled run).
    """
    where = f" ({run_dir})" if run_dir else ""
    kind = init.get("kind")
    if VARIANTS[variant][1] is None:
        if kind != "scratch":
            raise BenchmarkError(f"the scratch run{where} recorded the initialisation {init} instead of scratch.")
        return "scratch"
    if kind != "pretrained":
        raise BenchmarkError(f"the {variant} run{where} did not load pre-trained weights: it recorded {init}.")
    if generators_file is not None:
        if os.path.abspath(str(init.get("file"))) != os.path.abspath(generators_file):
            raise BenchmarkError(
                f"the {variant} run{where} loaded another file than its pre-training {generators_file}: {init}."
            )
        if init.get("sha256") != sha256_file(generators_file):
            raise BenchmarkError(f"the {variant} run{where} loaded other weights than {generators_file} now holds.")
    return f"pretrained from {init.get('file')} (sha256 {str(init.get('sha256'))[:12]}, transfer={init.get('transfer')})"


def read_selection(train_dir: str) -> dict[str, Any]:
    """The subjects a fine-tuning used (``label_subjects.json``: ``training_subjects``, ``validation_subjects``)."""
    return read_json(os.path.join(train_dir, "label_subjects.json"))


def recorded_settings(ckpt_dir: str) -> dict[str, Any]:
    """The settings a run recorded in ``ckpt_dir/run_config.json`` (``{}`` without that file)."""
    path = os.path.join(ckpt_dir, "run_config.json")
    return dict(read_json(path).get("settings") or {}) if os.path.isfile(path) else {}


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def validation_history(train_dir: str, tag: str = VALIDATION_TAG) -> list[tuple[int, float]]:
    """
    ``[(epoch, value)]`` of every validation of a fine-tuning, sorted by epoch, from the TensorBoard event files its
    validation handler wrote in ``train_dir`` (step = the trainer's epoch); ``[]`` without them.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    history: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(train_dir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    history[int(event.step)] = float(tensor_util.make_ndarray(value.tensor).item())
    return sorted(history.items())


def finetune_validation(train_dir: str) -> dict[str, Any]:
    """
    The validation history of a fine-tuning in brief: ``best_val_dice`` and ``best_epoch`` (the first epoch with
    the best Dice, as MONAI's checkpoint saver keeps ``model.pt`` on strict improvement), ``last_val_dice`` and
    ``last_epoch`` (the last validation); ``None`` values without a history.
    """
    history = [(epoch, value) for epoch, value in validation_history(train_dir) if finite_float(value) is not None]
    if not history:
        return {"best_val_dice": None, "best_epoch": None, "last_val_dice": None, "last_epoch": None}
    best_epoch, best = max(history, key=lambda item: (item[1], -item[0]))
    last_epoch, last = history[-1]
    return {"best_val_dice": best, "best_epoch": best_epoch, "last_val_dice": last, "last_epoch": last_epoch}


def train_loop_seconds(log_file: str) -> float | None:
    """The seconds a trainer spent in its epochs (its log's ``Epoch[N] Complete. Time taken`` lines), or ``None``."""
    if not os.path.isfile(log_file):
        return None
    with open(log_file, errors="replace") as f:
        epochs = [_EPOCH_LINE.search(line) for line in f]
    times = [int(m[2]) * 3600 + int(m[3]) * 60 + float(m[4]) for m in epochs if m]
    return sum(times) if times else None


def last_validation(output_dir: str) -> dict[str, float]:
    """The last row of pre-training's ``validation_metrics.csv`` (``{}`` if there is none)."""
    path = os.path.join(output_dir, "validation_metrics.csv")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: v for k, v in ((k, finite_float(x)) for k, x in rows[-1].items()) if v is not None} if rows else {}


def last_losses(output_dir: str) -> dict[str, float]:
    """The loss terms of the last recorded iteration of pre-training (``losses.csv``, raw values before weighting)."""
    path = os.path.join(output_dir, "losses.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out = {name: finite_float(value) for name, value in rows[-1].items() if name not in ("epoch", "iteration")}
    return {name: value for name, value in out.items() if value is not None}


def read_test_metrics(eval_dir: str) -> dict[str, Any]:
    """
    The test metrics of an evaluation: the means of ``metrics_summary.json`` (``test_dice``, ...) and the Dice and
    HD95 of every test subject from ``metrics.csv`` (``test_subject_dice``, ``test_subject_hd95``: ``{subject:
    value}``, ``None`` where undefined).
    """
    summary = read_json(os.path.join(eval_dir, "metrics_summary.json"))
    with open(os.path.join(eval_dir, "metrics.csv"), newline="") as f:
        per_subject = list(csv.DictReader(f))
    out: dict[str, Any] = {"n_test_subjects": summary.get("n_subjects")}
    for metric, key in SUBJECT_KEYS.items():
        out[key] = {r["subject"]: finite_float(r.get(metric)) for r in per_subject}
    for name in ("dice", "iou", "hd95", "sensitivity", "precision"):
        s = summary.get(name) or {}
        out[f"test_{name}"] = s.get("mean")
        if name == "dice":
            out["test_dice_subject_std"] = s.get("std")
        if name == "hd95":
            out["test_hd95_n_excluded"] = s.get("n_excluded")
    return out


def testing_subject_ids(data_list_file_path: str, dataset_dir: str, modalities: Sequence[str]) -> list[str]:
    """Subject ids of the datalist's ``testing`` records (the evaluation set)."""
    from bundle.data import load_datalist

    datalist = load_datalist(data_list_file_path, dataset_dir, [modalities[0], "label"], ["testing"])
    return sorted(r["subject"] for r in datalist["testing"])
