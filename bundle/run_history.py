# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""What a run writes about itself beside its weights: the validation and loss histories (CSV; a resumed run does not
repeat rows), the training summary (best and last epoch, the validation curve) and its output folder's
``run_record.json``."""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from .files import atomic_write, atomic_write_json
from .records import (
    OUTPUT_RECORD,
    read_record,
    record_path,
    write_output_record,
    write_record,
)

__all__ = ["LossHistoryHandler", "OutputRecordHandler", "TrainingSummaryHandler", "ValidationHistoryHandler"]

logger = logging.getLogger(__name__)


class ValidationHistoryHandler:
    """
    Attached to an evaluator: after each run, append ``epoch`` and every ``engine.state.metrics`` value as a row
    of ``output_dir/<filename>.csv`` and write the latest values to ``output_dir/<filename>_latest.json``.

    Before its first row, the rows of the file from that ``epoch`` on are dropped: a resumed run writes again the
    epochs after its checkpoint (which the stopped run may have written), so no epoch is listed twice.
    """

    #: the column that orders the rows (the first row of a run drops those from its value on)
    order_key = "epoch"

    def __init__(self, output_dir: str, filename: str = "validation_metrics") -> None:
        self.output_dir = output_dir
        self.filename = filename
        self._started = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def row(self, engine: Engine) -> dict[str, Any]:
        """The values of one row."""
        row: dict[str, Any] = {"epoch": int(engine.state.epoch)}
        row.update({k: float(v) for k, v in sorted(engine.state.metrics.items()) if np.isscalar(v)})
        return row

    def _drop_rows_from(self, path: str, start: float) -> None:
        """Remove the rows of ``path`` whose ``order_key`` is ``start`` or later (the file, when none is left)."""
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        kept = [r for r in rows if _number(r.get(self.order_key)) < start]
        if len(kept) == len(rows):
            return
        if not kept:
            os.remove(path)
        else:

            def _write(tmp: str) -> None:
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(fields or []))
                    writer.writeheader()
                    writer.writerows(kept)

            atomic_write(path, _write)
        dropped = len(rows) - len(kept)
        logger.info(f"{path}: dropped {dropped} row(s) from {self.order_key} {start:g} on (written again by this run)")

    def __call__(self, engine: Engine) -> None:
        row = self.row(engine)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{self.filename}.csv")
        if not self._started:
            self._started = True
            self._drop_rows_from(path, row[self.order_key])
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        atomic_write_json(os.path.join(self.output_dir, f"{self.filename}_latest.json"), row)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")  # an unreadable row is dropped with the later ones


class LossHistoryHandler(ValidationHistoryHandler):
    """
    Attached to a trainer: every ``interval`` iterations, append ``epoch``, ``iteration`` and every loss term by name
    (``output_transform`` of the engine output, e.g. ``lambda x: x["losses"]``) to ``output_dir/<filename>.csv``:
    the losses as data, for scripts (the benchmark) that would otherwise parse log lines. Reading the terms is the
    step's host synchronisation, so it happens only every ``interval`` iterations. A resumed run drops the rows from
    its first iteration on (see ``ValidationHistoryHandler``).
    """

    order_key = "iteration"

    def __init__(
        self, output_dir: str, interval: int = 1, output_transform: Any = lambda x: x["losses"], filename: str = "losses"
    ) -> None:
        super().__init__(output_dir, filename)
        self.interval = int(interval)
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def row(self, engine: Engine) -> dict[str, Any]:
        losses = self.output_transform(engine.state.output)
        row: dict[str, Any] = {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)}
        row.update({name: float(_detached(value)) for name, value in losses.items()})
        return row


def _detached(value: Any) -> Any:
    """A loss as read for the record: a tensor without its graph (reading one that requires grad warns)."""
    return value.detach() if isinstance(value, torch.Tensor) else value


#: entries ``write_record`` adds itself (left out when a record is rewritten)
_RECORD_OWN_KEYS = ("schema", "weights", "bundle_version", "written")


class TrainingSummaryHandler:
    """
    Attached to a trainer whose ``validator`` keeps the best weights by its key metric: records every validation's
    key metric and, when training ends (all epochs, or stopped early by MONAI's ``EarlyStopHandler``), writes
    ``output_dir/<filename>`` with the best epoch and value, the last epoch and value, the planned and trained epochs,
    whether the run stopped early and the validation curve (``[[epoch, value], ...]``). With ``model_file``, the same
    entries (the curve aside) go into the ``training`` part of its record (``model.json``), which then says which
    epoch of how many its weights are. A resumed run's curve starts at the resume.

    Args:
        validator: the evaluator run by the trainer's ``ValidationHandler``.
        output_dir: where the summary goes.
        model_file: the best-metric weights (``model.pt``) whose record gets the summary; ``None``: no record.
        filename: the summary's file name.
    """

    def __init__(
        self, validator: Engine, output_dir: str, model_file: str | None = None, filename: str = "training_summary.json"
    ) -> None:
        self.validator = validator
        self.output_dir = output_dir
        self.model_file = model_file
        self.filename = filename
        self.curve: list[list[float]] = []

    def attach(self, engine: Engine) -> None:
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation)
        engine.add_event_handler(Events.COMPLETED, self)

    def _record_validation(self, validator: Engine) -> None:
        name = getattr(validator.state, "key_metric_name", None)
        value = validator.state.metrics.get(name) if name else None
        if value is not None:
            self.curve.append([int(validator.state.epoch), float(value)])

    def summary(self, engine: Engine) -> dict[str, Any]:
        """The summary of a finished run (``engine``: the trainer)."""
        state = self.validator.state
        best_epoch = int(getattr(state, "best_metric_epoch", -1))
        last = self.curve[-1] if self.curve else [None, None]
        return {
            "key_metric": getattr(state, "key_metric_name", None),
            "best_epoch": best_epoch if best_epoch >= 0 else None,
            "best_metric": float(state.best_metric) if best_epoch >= 0 else None,
            "last_epoch": int(engine.state.epoch),
            "last_validation_epoch": last[0],
            "last_metric": last[1],
            "max_epochs": int(engine.state.max_epochs),
            "iterations": int(engine.state.iteration),
            "stopped_early": int(engine.state.epoch) < int(engine.state.max_epochs),
            "validations": len(self.curve),
        }

    def __call__(self, engine: Engine) -> None:
        summary = self.summary(engine)
        atomic_write_json(os.path.join(self.output_dir, self.filename), {**summary, "validation_curve": self.curve})
        if self.model_file and os.path.isfile(self.model_file) and os.path.isfile(record_path(self.model_file)):
            record = {k: v for k, v in read_record(self.model_file).items() if k not in _RECORD_OWN_KEYS}
            record["training"] = {**(record.get("training") or {}), **summary}
            write_record(self.model_file, record)
        logger.info(
            f"training ended at epoch {summary['last_epoch']} of {summary['max_epochs']}"
            + (" (stopped early)" if summary["stopped_early"] else "")
            + f"; best {summary['key_metric']} {summary['best_metric']} at epoch {summary['best_epoch']}"
        )


class OutputRecordHandler:
    """
    Write ``output_dir/run_record.json`` (``bundle.records.write_output_record``: the workflow, its settings and
    their fingerprint, the model files it read with their SHA-256, the data fingerprint, the files it wrote, the
    bundle version) when the engine completes, and only then: a failed run leaves an earlier record as it was. An
    engine stopped early (``EarlyStopHandler``) completes too.

    Its ``COMPLETED`` handler is added when the engine starts, after every handler attached when the workflow was
    built: the record follows the last files (``generators.pt``, ``checkpoint_final.pt``, ``training_summary.json``,
    ``metrics.csv``) and ``DivergenceGuard``'s last check (a run that diverged fails, with no record). Put it before
    ``bundle.locks.ReleaseLockHandler``, which defers its release the same way: the record is written under the lock.

    Args:
        output_dir: the folder the record describes (and where it goes).
        workflow: what runs (``pre-training``, ``fine-tuning``, ``evaluation``, ``translation``).
        settings: the run's settings (those of ``run_config.json`` where the workflow writes one).
        models: the model files the run reads (none for pre-training and fine-tuning from scratch).
        inputs: the records of the data it reads (their files' fingerprint is recorded).
        outputs: the files it writes, as paths or ``glob`` patterns: those that exist when it completes are named.
    """

    def __init__(
        self,
        output_dir: str,
        workflow: str,
        settings: Mapping[str, Any],
        models: Sequence[str] = (),
        inputs: Sequence[Mapping[str, Any]] = (),
        outputs: Sequence[str] = (),
    ) -> None:
        self.output_dir = output_dir
        self.workflow = workflow
        self.settings = dict(settings)
        self.models = list(models)
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._write_last)

    def _write_last(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.COMPLETED):  # an engine run twice adds it once
            engine.add_event_handler(Events.COMPLETED, self)

    def written(self) -> list[str]:
        """The files of ``outputs`` that exist now (this record itself aside)."""
        found = {p for pattern in self.outputs for p in glob.glob(os.fspath(pattern)) if os.path.isfile(p)}
        return sorted(p for p in found if os.path.basename(p) != OUTPUT_RECORD)

    def __call__(self, engine: Engine) -> None:
        path = write_output_record(
            self.output_dir, self.workflow, self.settings, self.models, self.inputs, self.written()
        )
        logger.info(f"{self.workflow} completed: what produced its files is recorded in {path}")
