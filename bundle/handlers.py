# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Handlers MONAI lacks for pre-training: export of ``generators.pt``, translation preview PNGs and a validation
metrics history (MONAI's ``MetricsSaver`` keeps only the last run)."""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from PIL import Image

from .networks import MultiConDoSGenerators

__all__ = [
    "EngineCheckpointSaver",
    "GeneratorExportHandler",
    "TranslationPreviewHandler",
    "ValidationHistoryHandler",
    "atomic_torch_save",
]

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never a truncated ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class GeneratorExportHandler:
    """
    Write ``generators.pt`` (the ``BasicUNet`` state dicts of G_AB and G_BA, their constructor arguments, the
    shared blocks, the modality pair and the epoch) every ``save_interval`` epochs and when training completes.
    Fine-tuning builds its segmentation network from the stored constructor arguments.

    Args:
        generators: the generator pair.
        filepath: where to write (atomically).
        modalities: the modality keys [A, B], stored for fine-tuning and translation.
        save_interval: epochs between exports; 0 exports only at the end.
        extra: more entries to store (e.g. the preprocessing settings).
    """

    def __init__(
        self,
        generators: MultiConDoSGenerators,
        filepath: str,
        modalities: list[str] | tuple[str, ...] = (),
        save_interval: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.generators = generators
        self.filepath = filepath
        self.modalities = list(modalities)
        self.save_interval = int(save_interval)
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        generators = getattr(self.generators, "module", self.generators)  # unwrap DDP
        state = generators.export_state()
        state.update({"modalities": self.modalities, "epoch": int(engine.state.epoch), **self.extra})
        atomic_torch_save(state, self.filepath)
        logger.info(f"saved generators (epoch {engine.state.epoch}) to {self.filepath}")


class EngineCheckpointSaver(CheckpointSaver):
    """
    MONAI ``CheckpointSaver`` that also stores the engine it is attached to under ``engine_key`` (epoch and
    iteration, for resuming). A config cannot list the trainer in the ``save_dict`` of one of the trainer's own
    handlers (circular reference), so the engine is added when the handler is attached.
    """

    def __init__(self, *args: Any, engine_key: str = "trainer", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        # the ignite ``Checkpoint`` objects hold this very dict, so the engine is saved from now on
        self.save_dict[self.engine_key] = engine
        super().attach(engine)


def _to_uint8(image: np.ndarray, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return (np.clip((image - low) / (high - low), 0.0, 1.0) * 255.0).round().astype(np.uint8)


class TranslationPreviewHandler:
    """
    Attached to the translation evaluator: writes ``output_dir/preview_epoch<NNNN>.png``, a grid with one row per
    sample of the first (fixed) validation batch and the columns A, G_AB(A), B, G_BA(B), images in [-1, 1].

    Args:
        output_dir: folder of the PNG files.
        max_rows: samples shown.
    """

    def __init__(self, output_dir: str, max_rows: int = 4) -> None:
        self.output_dir = output_dir
        self.max_rows = int(max_rows)
        self._pending = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._arm)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _arm(self, engine: Engine) -> None:
        self._pending = True

    def __call__(self, engine: Engine) -> None:
        if not self._pending:
            return  # only the first batch of each validation run
        self._pending = False
        out = engine.state.output
        columns = [out["a"], out["fake_b"], out["b"], out["fake_a"]]
        rows = []
        for i in range(min(self.max_rows, columns[0].shape[0])):
            tiles = [_to_uint8(c[i, 0].detach().float().cpu().numpy()) for c in columns]
            rows.append(np.concatenate(tiles, axis=1))
        grid = np.concatenate(rows, axis=0)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"preview_epoch{int(engine.state.epoch):04d}.png")
        Image.fromarray(grid).save(path)
        logger.info(f"translation preview (A | G_AB(A) | B | G_BA(B)) written to {path}")


class ValidationHistoryHandler:
    """
    Attached to an evaluator: after each run, append ``epoch`` and every ``engine.state.metrics`` value as a row
    of ``output_dir/<filename>.csv`` and write the latest values to ``output_dir/<filename>_latest.json``.
    """

    def __init__(self, output_dir: str, filename: str = "validation_metrics") -> None:
        self.output_dir = output_dir
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        row = {"epoch": int(engine.state.epoch)}
        row.update({k: float(v) for k, v in sorted(engine.state.metrics.items()) if np.isscalar(v)})
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{self.filename}.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(os.path.join(self.output_dir, f"{self.filename}_latest.json"), "w") as f:
            json.dump(row, f, indent=2)
