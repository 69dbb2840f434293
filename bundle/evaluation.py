# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Per-subject segmentation report (Dice, IoU, HD95, sensitivity, precision in 3-D) computed with MONAI metric
functions. MONAI's ``MetricsSaver`` cannot give HD95 in millimetres (the handlers pass no voxel spacing) nor
report empty masks separately, hence this handler."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)

__all__ = ["DATA_SECTIONS", "METRIC_NAMES", "SegmentationReportHandler", "check_data_section", "summarise"]

logger = logging.getLogger("multi_condos")

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95", "sensitivity", "precision")
#: the subjects ``configs/evaluate.yaml`` can evaluate: the datalist's testing ones, or the fine-tuning's validation
#: ones (where choices are made)
DATA_SECTIONS: tuple[str, ...] = ("testing", "validation")


def check_data_section(section: str) -> str:
    """
    Raises:
        ValueError: ``section`` not one of ``DATA_SECTIONS``.
    """
    if section not in DATA_SECTIONS:
        raise ValueError(f"data_section must be one of {list(DATA_SECTIONS)}, got {section!r}.")
    return section


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def summarise(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean ± std (population) of each metric over the subjects where it is finite; the rest are counted."""
    summary: dict[str, Any] = {"n_subjects": len(rows)}
    for name in names:
        values = [float(r[name]) for r in rows]
        finite = _finite(values)
        summary[name] = {
            "mean": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite)) if finite else None,
            "n": len(finite),
            "n_excluded": len(values) - len(finite),
        }
    return summary


class SegmentationReportHandler:
    """
    Attached to a ``SupervisedEvaluator`` whose (decollated) output holds one-hot ``pred`` and ``label`` of whole
    3-D volumes: computes per-subject Dice, IoU, HD95 (in mm, from the label's voxel spacing), sensitivity and
    precision over the foreground classes, writes ``output_dir/metrics.csv`` (one row per subject) and
    ``output_dir/metrics_summary.json`` (mean ± std per metric). Undefined values (empty prediction or ground truth:
    NaN/inf) are written as such, counted in ``n_excluded`` and left out of the means.

    Args:
        output_dir: where to write.
        subject_key: batch key with the subject id (falls back to the label's file name).
        settings: what produced the masks (e.g. the subjects' section and the post-processing), written into the
            summary under ``settings``.
    """

    def __init__(self, output_dir: str, subject_key: str = "subject", settings: dict[str, Any] | None = None) -> None:
        self.output_dir = output_dir
        self.subject_key = subject_key
        self.settings = None if settings is None else dict(settings)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def subject_metrics(self, pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        """Metrics of one subject (channel-first one-hot ``pred``/``label``, background in channel 0)."""
        p, y = pred.unsqueeze(0).float(), label.unsqueeze(0).float()
        spacing = getattr(label, "pixdim", None)
        spacing = [float(s) for s in spacing[: p.ndim - 2]] if spacing is not None else None
        per_class = {
            "dice": compute_dice(p, y, include_background=False, ignore_empty=True)[0],
            "iou": compute_iou(p, y, include_background=False, ignore_empty=True)[0],
            "hd95": compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=spacing)[0],
        }
        confusion = get_confusion_matrix(p, y, include_background=False)
        per_class["sensitivity"] = compute_confusion_matrix_metric("sensitivity", confusion)[0]
        per_class["precision"] = compute_confusion_matrix_metric("precision", confusion)[0]
        out: dict[str, float] = {}
        for name, values in per_class.items():
            values = values.flatten().double()
            out[name] = float(values[0]) if values.numel() == 1 else float(torch.nanmean(values))
            if values.numel() > 1:
                out.update({f"{name}_{c + 1}": float(v) for c, v in enumerate(values)})
        out["pred_voxels"] = int(p[:, 1:].sum())
        out["label_voxels"] = int(y[:, 1:].sum())
        return out

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for out, batch in zip(outputs, batches):
            label = out["label"]
            subject = batch.get(self.subject_key) if isinstance(batch, dict) else None
            if subject is None:
                meta = getattr(label, "meta", {}) or {}
                subject = os.path.basename(str(meta.get("filename_or_obj", f"case_{len(self.rows)}")))
            self.rows.append({"subject": str(subject), **self.subject_metrics(out["pred"], label)})

    def _write(self, engine: Engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        fields = ["subject"] + sorted({k for r in self.rows for k in r} - {"subject"}, key=_field_order)
        with open(os.path.join(self.output_dir, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        summary = summarise(self.rows, METRIC_NAMES)
        if self.settings is not None:
            summary["settings"] = self.settings
        with open(os.path.join(self.output_dir, "metrics_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)  # no NaN/inf in it: undefined values are counted, not averaged
        for name in METRIC_NAMES:
            s = summary[name]
            if s["mean"] is not None:
                engine.state.metrics[f"test_{name}"] = s["mean"]
            logger.info(
                f"test {name}: "
                + (f"{s['mean']:.4f} ± {s['std']:.4f}" if s["mean"] is not None else "undefined")
                + f" over {s['n']} subject(s)"
                + (f", {s['n_excluded']} excluded (empty prediction or ground truth)" if s["n_excluded"] else "")
            )


def _field_order(name: str) -> tuple[int, str]:
    base = name.split("_")[0]
    return (METRIC_NAMES.index(base) if base in METRIC_NAMES else len(METRIC_NAMES), name)
