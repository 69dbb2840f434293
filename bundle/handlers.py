# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Handlers MONAI lacks for the training state: export of ``generators.pt``, full-state checkpoints with their run
record, resume, the divergence guard and translation preview PNGs (a run's histories, summary and output record:
``bundle.run_history``)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver
from PIL import Image

from .finite import check_finite_state
from .networks import MultiConDoSGenerators
from .records import (
    fingerprint,
    save_generators,
    write_record,
)

__all__ = [
    "DivergenceGuard",
    "EngineCheckpointSaver",
    "GeneratorExportHandler",
    "RNGState",
    "ResumeFromCheckpoint",
    "RunRecord",
    "TranslationPreviewHandler",
    "check_finite",
    "raise_divergence",
    "checkpoint_run_record",
    "engine_state_objects",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)


class GeneratorExportHandler:
    """
    Write ``generators.pt`` (the ``BasicUNet`` state dicts of G_AB and G_BA) and its record ``generators.json``
    (``bundle.records``: constructor arguments, shared blocks, the preprocessing, the training settings and epoch)
    every ``save_interval`` epochs and when training completes. Fine-tuning and translation read both.

    Args:
        generators: the generator pair (possibly DDP-wrapped).
        filepath: where to write (atomically).
        preprocessing: the preprocessing record (``bundle.records.preprocessing_record``).
        settings: the run's settings (their fingerprint is recorded too).
        save_interval: epochs between exports; 0 exports only at the end.
    """

    def __init__(
        self,
        generators: MultiConDoSGenerators,
        filepath: str,
        preprocessing: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        save_interval: int = 0,
    ) -> None:
        self.generators = generators
        self.filepath = filepath
        self.preprocessing = dict(preprocessing)
        self.settings = dict(settings or {})
        self.save_interval = int(save_interval)

    def attach(self, engine: Engine) -> None:
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        generators = getattr(self.generators, "module", self.generators)  # unwrap DDP
        record = {
            "network": generators.network_record(),
            "preprocessing": self.preprocessing,
            "training": {
                "workflow": "pretrain",
                "settings": self.settings,
                "fingerprint": fingerprint(self.settings),
                "epoch": int(engine.state.epoch),
                "iteration": int(engine.state.iteration),
            },
        }
        state = generators.export_state()
        check_finite_state(state, self.filepath)  # no NaN/inf reaches generators.pt
        save_generators(state, self.filepath, record)
        logger.info(f"saved generators (epoch {engine.state.epoch}) to {self.filepath} and its record")


class _RecordingSaver(BaseSaveHandler):
    """An ignite save handler that writes the weights through ``saver`` and then their record (``on_saved``)."""

    def __init__(self, saver: BaseSaveHandler, on_saved: Any) -> None:
        self.saver = saver
        self.on_saved = on_saved

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        self.saver(checkpoint, filename, metadata)
        fixed = getattr(self.saver, "filename", None)  # MONAI's saver of key_metric_filename ignores ``filename``
        self.on_saved(os.path.join(self.saver.dirname, fixed or filename))

    def remove(self, filename: str) -> None:
        self.saver.remove(filename)


class EngineCheckpointSaver(CheckpointSaver):
    """
    MONAI ``CheckpointSaver`` for full-state, resumable checkpoints:

    - unless ``engine_key`` is None (e.g. for a plain ``model.pt``), it also stores the engine it is attached to under
      ``engine_key`` (epoch and iteration), the engine attributes
      named in ``engine_attrs`` (e.g. the image pools) and the RNG states of torch, numpy and python. A config cannot
      list the trainer in the ``save_dict`` of one of the trainer's own handlers (circular reference), so they are
      added when the handler is attached;
    - it writes atomically (temporary file in the same folder, then ``os.replace``): MONAI 1.6.1 passes
      ``atomic=False`` to ignite's ``DiskSaver``, so a kill during a save could leave a truncated file;
    - it does not save when the run fails (MONAI saves the "final" checkpoint on any exception): a crashed or
      diverged state is not a complete checkpoint, and the last interval checkpoint must stay the latest;
    - with ``run_record`` (``{"settings", "data"}``: the run's settings and ``bundle.records.data_fingerprint``), each
      full-state checkpoint carries them under ``run_record``, so that a resume compares against the very checkpoint
      it continues (``checkpoint_run_record``);
    - with ``record`` (``bundle.records``), each key-metric save (``model.pt``) writes the weights' record beside
      them (``model.json``), with the epoch and the metric value of these weights: the same handler saves both.
    """

    def __init__(
        self,
        *args: Any,
        engine_key: str | None = "trainer",
        engine_attrs: Sequence[str] = (),
        record: Mapping[str, Any] | None = None,
        run_record: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key
        self.run_record = None if run_record is None else RunRecord(**run_record)
        self.engine_attrs = list(engine_attrs)
        self.record = None if record is None else dict(record)
        self._evaluator: Engine | None = None
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, name, None)
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True  # see the class docstring
        if self.record is not None and self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.save_handler = _RecordingSaver(
                self._key_metric_checkpoint.save_handler, self._write_record
            )

    def _check_finite(self) -> None:
        """No NaN/inf reaches a file: the objects to save are checked first (one host synchronisation per save)."""
        state = {key: obj.state_dict() for key, obj in self.save_dict.items() if hasattr(obj, "state_dict")}
        check_finite_state(state, f"a checkpoint in {self.save_dir}")

    def completed(self, engine: Engine) -> None:
        self._check_finite()
        super().completed(engine)

    def interval_completed(self, engine: Engine) -> None:
        self._check_finite()
        super().interval_completed(engine)

    def metrics_completed(self, engine: Engine) -> None:
        self._evaluator = engine  # the record names the epoch and metric of the weights it describes
        self._check_finite()
        super().metrics_completed(engine)

    def _write_record(self, weights_path: str) -> None:
        record = dict(self.record or {})
        training = dict(record.get("training") or {})
        if self._evaluator is not None:
            metric = getattr(self._evaluator.state, "key_metric_name", None)
            training["epoch"] = int(self._evaluator.state.epoch)
            if metric in self._evaluator.state.metrics:
                training["metric"] = {"name": metric, "value": float(self._evaluator.state.metrics[metric])}
        record["training"] = training
        write_record(weights_path, record)

    def attach(self, engine: Engine) -> None:
        # the ignite ``Checkpoint`` objects hold this very dict, so these are saved from now on
        if self.engine_key is not None:
            self.save_dict.update(engine_state_objects(engine, self.engine_key, self.engine_attrs))
            if self.run_record is not None:
                self.save_dict[RUN_RECORD_KEY] = self.run_record
        super().attach(engine)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        raise e


#: the entry of a full-state checkpoint that holds the settings and data it was trained with
RUN_RECORD_KEY = "run_record"


class RunRecord:
    """
    The settings (and their fingerprint) and the data fingerprint of a run, as a checkpointable object: stored as
    JSON strings so that ``torch.load(weights_only=True)`` reads them; loading it back changes nothing.
    """

    def __init__(self, settings: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> None:
        self.settings = json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
        self.data = None if data is None else json.loads(json.dumps(dict(data), default=str))

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": json.dumps(self.settings, sort_keys=True),
            "fingerprint": fingerprint(self.settings),
            "data": json.dumps(self.data),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: ``bundle.runs.check_run_dir`` compares the stored record before the run starts."""


def checkpoint_run_record(path: str) -> dict[str, Any] | None:
    """
    ``{"settings", "fingerprint", "data"}`` stored in a full-state checkpoint (``EngineCheckpointSaver`` with
    ``run_record``), or ``None`` for a checkpoint written without one.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    stored = state.get(RUN_RECORD_KEY) if isinstance(state, Mapping) else None
    if not stored:
        return None
    return {
        "settings": json.loads(stored["settings"]),
        "fingerprint": stored.get("fingerprint"),
        "data": json.loads(stored.get("data") or "null"),
    }


class RNGState:
    """The global RNG states of torch, numpy and python ``random`` as a checkpointable object (tensors only, so that
    ``torch.load(weights_only=True)`` reads it). The private RNGs of MONAI random transforms are not included."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        py_state = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.as_tensor(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "python": torch.as_tensor(py_state[1], dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        has_gauss, gauss = state["numpy_gauss"]
        np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), int(has_gauss), float(gauss)))
        random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))


def engine_state_objects(engine: Engine, engine_key: str, engine_attrs: Sequence[str]) -> dict[str, Any]:
    """The engine, its named attributes and the RNG states, keyed as in a full-state checkpoint."""
    objects: dict[str, Any] = {engine_key: engine, "rng_state": RNGState()}
    objects.update({name: getattr(engine, name) for name in engine_attrs})
    return objects


_CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(epoch=(\d+)|final)\.pt$")


def latest_checkpoint(checkpoint_dir: str, engine_key: str = "trainer") -> str | None:
    """
    The complete full-state checkpoint of ``checkpoint_dir`` with the highest iteration count: files named
    ``checkpoint_epoch=N.pt`` / ``checkpoint_final.pt``; a file that cannot be read (truncated by a kill) is skipped
    with a warning. ``None`` when there is none.
    """
    if not os.path.isdir(checkpoint_dir):
        return None
    best: tuple[int, str] | None = None
    for name in sorted(os.listdir(checkpoint_dir)):
        if not _CHECKPOINT_PATTERN.match(name):
            continue
        path = os.path.join(checkpoint_dir, name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            iteration = int(state[engine_key]["iteration"])
        except Exception as e:  # noqa: BLE001 (truncated or foreign files are skipped, never fatal)
            logger.warning(f"skipping unreadable checkpoint {path} ({type(e).__name__}: {e})")
            continue
        if best is None or iteration > best[0]:
            best = (iteration, path)
    return None if best is None else best[1]


class ResumeFromCheckpoint:
    """
    With ``enabled``, load the latest complete checkpoint of ``checkpoint_dir`` (see ``latest_checkpoint``) when the
    engine starts: networks, optimizers, LR schedulers, the engine's epoch/iteration, ``engine_attrs`` and the RNG
    states, with MONAI ``CheckpointLoader``. Training then continues from that epoch.

    Keys of ``optional`` (e.g. ``sampler``, the device sampler's state) are loaded only when the checkpoint holds
    them: a checkpoint written before they were saved still resumes (with a warning).

    Raises:
        FileNotFoundError: when enabled and there is no complete checkpoint.
    """

    def __init__(
        self,
        checkpoint_dir: str,
        load_dict: dict[str, Any],
        enabled: bool = True,
        engine_key: str = "trainer",
        engine_attrs: Sequence[str] = (),
        map_location: Any = None,
        optional: Sequence[str] = (),
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.load_dict = dict(load_dict)
        self.enabled = bool(enabled)
        self.engine_key = engine_key
        self.engine_attrs = list(engine_attrs)
        self.map_location = map_location
        self.optional = list(optional)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.checkpoint_dir, self.engine_key)
        if path is None:
            raise FileNotFoundError(f"--resume True, but {self.checkpoint_dir} holds no complete checkpoint.")
        load_dict = {**self.load_dict, **engine_state_objects(engine, self.engine_key, self.engine_attrs)}
        if self.optional:
            held = torch.load(path, map_location="cpu", weights_only=True).keys()
            for key in [k for k in self.optional if k in load_dict and k not in held]:
                logger.warning(f"{path} holds no '{key}' (written before it was saved): it starts afresh.")
                load_dict.pop(key)
        CheckpointLoader(load_path=path, load_dict=load_dict, map_location=self.map_location).attach(engine)
        logger.info(f"resuming from {path}")


class DivergenceGuard:
    """
    Stop training when a loss (or a gradient) becomes NaN/inf, naming the term and the epoch and iteration where it
    first did. The values are checked on the device every iteration and read every ``interval`` iterations and at
    the end of each epoch and of the run (before the checkpoint and export handlers listed after this one), so that
    no step waits for the device; the steps in between that saw a non-finite value were skipped on the device
    (``bundle.finite``), so the weights stay those of the last finite step. Checkpoints are not written on failure
    (``EngineCheckpointSaver``), so the last good one stays the latest; resume from it with a lower learning rate.

    Args:
        output_transform: engine output -> a loss value or a dict of named loss values.
        interval: iterations between reads (e.g. ``log_interval``); 1 reads every iteration.
        gradients_transform: engine output -> a dict of named gradient norms (the ``"gradients"`` of
            ``bundle.trainer.MultiConDoSTrainer``); a non-finite one is named only when every loss was finite (a
            non-finite loss makes its gradients non-finite too).
        optimizer: for an engine that fires ``IterationEvents.BACKWARD_COMPLETED`` and then steps this optimizer
            itself (MONAI ``SupervisedTrainer``, with ``decollate=False``): at that event the guard decides on the
            device whether the step is skipped (loss or gradients not finite; ``bundle.finite.mark_step``), reading
            the loss with ``output_transform`` there. An optimizer that cannot skip on the device (not ``fused``) is
            checked on the host before every step instead.
    """

    def __init__(
        self,
        output_transform: Any = lambda x: x["loss"],
        interval: int = 1,
        gradients_transform: Any = None,
        optimizer: Any = None,
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"DivergenceGuard: interval must be >= 1, got {interval}.")
        self.output_transform = output_transform
        self.interval = int(interval)
        self.gradients_transform = gradients_transform
        self.optimizer = optimizer
        self._names: list[str] = []
        self._n_losses = 0
        self._bad: torch.Tensor | None = None  # per name: non-finite since the last read
        self._first: torch.Tensor | None = None  # [epoch, iteration] of the first non-finite value (0: none)

    def attach(self, engine: Engine) -> None:
        if self.optimizer is not None:
            from monai.engines.utils import IterationEvents

            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._before_step)
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._after_step)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)
        engine.add_event_handler(Events.COMPLETED, self.check)

    @staticmethod
    def _named(values: Any) -> dict[str, Any]:
        return dict(values) if isinstance(values, Mapping) else {"loss": values}

    def __call__(self, engine: Engine) -> None:
        """Accumulate this iteration's values (device operations only)."""
        losses = self._named(self.output_transform(engine.state.output))
        gradients = {} if self.gradients_transform is None else dict(self.gradients_transform(engine.state.output))
        self.accumulate(engine, losses, gradients)

    def _before_step(self, engine: Engine) -> None:
        from .finite import all_finite, gradient_norm, mark_step

        scaler = getattr(engine, "scaler", None)
        scaling = scaler is not None and scaler.is_enabled()
        losses = self._named(self.output_transform(engine.state.output))
        norm = None if scaling else gradient_norm(self.optimizer)
        gradients = {} if norm is None else {"gradients": norm}
        self.accumulate(engine, losses, gradients)
        finite = all_finite([*losses.values(), norm])
        if not mark_step(self.optimizer, finite, scaler if scaling else None) and not bool(finite):
            self.check(engine)  # host decision, before the step changes any weight

    def _after_step(self, engine: Engine) -> None:
        from .finite import unmark_step

        unmark_step(self.optimizer)

    def accumulate(self, engine: Engine, losses: Mapping[str, Any], gradients: Mapping[str, Any]) -> None:
        """Add one iteration's named losses and gradient norms to the flags (no host synchronisation)."""
        names = [*losses, *gradients]
        if names != self._names:
            self.check(engine)  # other terms than before: report the old ones first
            self._names, self._n_losses, self._bad, self._first = names, len(losses), None, None
        values = [torch.as_tensor(v).detach().float().reshape(()) for v in [*losses.values(), *gradients.values()]]
        device = next((v.device for v in values if v.device.type != "cpu"), values[0].device)
        bad = ~torch.stack([v.to(device) for v in values]).isfinite()  # python numbers: already on the host
        if self._bad is None:
            self._bad = torch.zeros_like(bad)
            self._first = torch.zeros(2, dtype=torch.int64, device=bad.device)
        new = bad.any() & (self._first[1] == 0)
        self._first[0] = torch.where(new, engine.state.epoch, self._first[0])
        self._first[1] = torch.where(new, engine.state.iteration, self._first[1])
        self._bad = self._bad | bad

    def check(self, engine: Engine) -> None:
        """Read the flags (one host synchronisation) and raise if a value was not finite."""
        if self._bad is None:
            return
        flags = torch.cat([self._bad.to(torch.int64), self._first]).tolist()
        epoch, iteration = flags[-2:]
        bad = sorted(name for name, flag in zip(self._names, flags) if flag)
        self._bad, self._first = None, None
        if bad:
            losses = [name for name in bad if name in self._names[: self._n_losses]]
            raise_divergence(losses or bad, epoch, iteration)


def raise_divergence(names: Sequence[str], epoch: int, iteration: int) -> None:
    """
    Raises:
        FloatingPointError: naming the loss terms that became NaN/inf, the epoch and the iteration.
    """
    raise FloatingPointError(
        f"training diverged: loss term(s) {list(names)} became NaN/inf at epoch {epoch}, iteration {iteration}. "
        "The last complete checkpoint is kept; resume from it (--resume True) with a lower learning_rate, "
        "or check the data."
    )


def check_finite(losses: Any, epoch: int, iteration: int) -> None:
    """
    Raises:
        FloatingPointError: when a loss (a value, or a dict of named values) is NaN/inf, naming it.
    """
    named = losses if isinstance(losses, dict) else {"loss": losses}
    bad = [name for name, value in named.items() if not math.isfinite(float(value))]
    if bad:
        raise_divergence(bad, epoch, iteration)


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
