# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Everything the benchmark reads from what a run wrote: the recorded ``init:`` line, pre-training's last
validation and losses, the test metrics, the generator's topology, the test subjects of the datalist."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from .plan import VARIANTS, BenchmarkError
from .stats import finite_float

__all__ = [
    "check_init_line",
    "generator_features",
    "last_losses",
    "last_validation",
    "read_json",
    "read_metrics_summary",
    "testing_subject_ids",
]


def check_init_line(line: str, variant: str, generators_file: str | None, run_dir: str = "") -> str:
    """
    The ``init:`` line a fine-tuning recorded must match its method: ``init: scratch`` for ``scratch``,
    ``init: pretrained (N/M tensors from <generators_file>...`` with N > 0 for a pre-trained variant.

    Raises:
        BenchmarkError: otherwise (the benchmark must not report a mislabeled run).
    """
    line = (line or "").strip()
    where = f" ({run_dir})" if run_dir else ""
    if VARIANTS[variant][1] is None:
        if line != "init: scratch":
            raise BenchmarkError(f"the scratch run{where} recorded {line!r} instead of 'init: scratch'.")
        return line
    prefix = "init: pretrained ("
    if not line.startswith(prefix):
        raise BenchmarkError(f"the {variant} run{where} did not load pre-trained weights: it recorded {line!r}.")
    body = line[len(prefix) :]
    try:
        counts, rest = body.split(" tensors from ", 1)
        loaded, total = (int(x) for x in counts.split("/"))
    except ValueError as e:
        raise BenchmarkError(f"the {variant} run{where} recorded an unreadable init line {line!r}.") from e
    if loaded <= 0 or loaded > total:
        raise BenchmarkError(f"the {variant} run{where} loaded {loaded}/{total} tensors: {line!r}.")
    if generators_file is not None and not rest.startswith(os.path.abspath(generators_file)):
        raise BenchmarkError(
            f"the {variant} run{where} loaded another file than its pre-training {generators_file}: {line!r}."
        )
    return line


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def last_validation(output_dir: str) -> dict[str, float]:
    """The last row of pre-training's ``validation_metrics.csv`` (``{}`` if there is none)."""
    path = os.path.join(output_dir, "validation_metrics.csv")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: v for k, v in ((k, finite_float(x)) for k, x in rows[-1].items()) if v is not None} if rows else {}


def last_losses(output_dir: str) -> dict[str, float]:
    """The loss terms of the last logged iteration of ``pretrain_log.txt`` (raw values, before the weights)."""
    path = os.path.join(output_dir, "pretrain_log.txt")
    if not os.path.isfile(path):
        return {}
    last = ""
    with open(path, errors="replace") as f:
        for line in f:
            if " -- " in line and "g_total:" in line:
                last = line
    if not last:
        return {}
    tokens = last.split(" -- ", 1)[1].split()
    out = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        v = finite_float(value)
        if name.endswith(":") and v is not None:
            out[name[:-1]] = v
    return out


def read_metrics_summary(eval_dir: str) -> dict[str, Any]:
    summary = read_json(os.path.join(eval_dir, "metrics_summary.json"))
    out: dict[str, Any] = {"n_test_subjects": summary.get("n_subjects")}
    for name in ("dice", "iou", "hd95", "sensitivity", "precision"):
        s = summary.get(name) or {}
        out[f"test_{name}"] = s.get("mean")
        if name == "dice":
            out["test_dice_subject_std"] = s.get("std")
        if name == "hd95":
            out["test_hd95_n_excluded"] = s.get("n_excluded")
    return out


def generator_features(generators_file: str) -> list[int]:
    import torch

    content = torch.load(generators_file, map_location="cpu", weights_only=True)
    return [int(f) for f in content["network_args"]["features"]]


def testing_subject_ids(data_list_file_path: str, dataset_dir: str, modalities: Sequence[str]) -> list[str]:
    """Subject ids of the datalist's ``testing`` records (the evaluation set)."""
    from bundle.data import load_datalist

    datalist = load_datalist(data_list_file_path, dataset_dir, [modalities[0], "label"], ["testing"])
    return sorted(r["subject"] for r in datalist["testing"])
