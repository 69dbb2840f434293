# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Wall-time estimates of the planned runs from measured per-iteration times: a run costs ``fixed_s + iterations x
s_per_iteration`` of its kind (pre-training, or fine-tuning + evaluation), measured on finished runs (each records
its wall time, the time of its training loop from the trainer's log, and its iterations) or on short timing runs
with the grid's settings (``--measure``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .plan import VARIANTS, Grid, Job
from .results import train_loop_seconds

__all__ = [
    "Timing",
    "estimate_text",
    "estimate_wall_s",
    "fmt_duration",
    "measure_timings",
    "run_iterations",
    "run_timing",
    "timings_of",
]

#: what a run records of its own timing (see ``Timing.from_runs``)
_TIMING_KEYS = ("wall_s", "train_s", "n_iterations")
#: the trainer's log in the output folder of each kind of run
_TRAINER_LOGS = {"pretrain": "pretrain_log.txt", "finetune": "train_log.txt"}
#: the timing runs of --measure: this many iterations per epoch, at most this many epochs
MEASURE_EPOCH_LENGTH = 2
MEASURE_MAX_EPOCHS = 10


@dataclass(frozen=True)
class Timing:
    """
    Measured wall time of one kind of run (pre-training, or fine-tuning + evaluation): ``s_per_iteration`` of the
    training loop and ``fixed_s`` for the rest of a run (set-up, caching, validations, evaluation), from ``n_runs``.
    """

    s_per_iteration: float
    fixed_s: float
    n_runs: int

    def run_s(self, iterations: int) -> float:
        return self.fixed_s + iterations * self.s_per_iteration

    @classmethod
    def from_runs(cls, runs: Iterable[Mapping[str, Any]]) -> Timing | None:
        """
        The timing of finished runs, each ``{"wall_s", "train_s", "n_iterations"}`` (the run's wall time, the time
        of its training loop, its iterations; runs without all three are left out); ``None`` without any.
        """
        known = [r for r in runs if all(r.get(k) is not None for k in _TIMING_KEYS) and int(r["n_iterations"]) > 0]
        if not known:
            return None
        train_s = sum(float(r["train_s"]) for r in known)
        fixed_s = sum(max(0.0, float(r["wall_s"]) - float(r["train_s"])) for r in known) / len(known)
        return cls(train_s / sum(int(r["n_iterations"]) for r in known), fixed_s, len(known))


def fmt_duration(seconds: float) -> str:
    """``1 h 05 min``, ``12 min`` or ``40 s``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def run_iterations(runner: Any, kind: str, overrides: Mapping[str, Any]) -> tuple[str, int | None]:
    """``("epochs x epoch_length", iterations)`` of a ``pretrain`` or ``finetune`` run (``None`` if unresolved)."""
    epochs, length = runner.schedule(kind, overrides)
    return f"{epochs} x {length}", (epochs * length if epochs and length else None)


def run_timing(kind: str, output_dir: str, wall_s: float, n_iterations: int | None) -> dict[str, Any]:
    """What a finished run records of its timing: its wall time, its training loop's seconds and iterations."""
    train_s = train_loop_seconds(os.path.join(output_dir, _TRAINER_LOGS[kind]))
    return {"wall_s": wall_s, "train_s": train_s, "n_iterations": n_iterations}


def timings_of(records: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, Timing]:
    """``{kind: Timing}`` from the ``timing`` of finished runs of each kind (kinds without any are left out)."""
    timings = {kind: Timing.from_runs(r.get("timing") or {} for r in runs) for kind, runs in records.items()}
    return {kind: t for kind, t in timings.items() if t is not None}


def estimate_wall_s(
    jobs: Sequence[Job], iterations: Mapping[str, int | None], timings: Mapping[str, Timing]
) -> float | None:
    """
    Estimated wall time of ``jobs``: per run, ``timings[kind].run_s(iterations[kind])``; ``None`` when a kind among
    ``jobs`` has no timing or no resolved schedule. The fixed part is measured on runs with their own number of
    validations, so it is rough when the schedules differ.
    """
    total = 0.0
    for job in jobs:
        if job.kind not in timings or iterations.get(job.kind) is None:
            return None
        total += timings[job.kind].run_s(int(iterations[job.kind]))
    return total


def estimate_text(
    jobs: Sequence[Job], iterations: Mapping[str, int | None], timings: Mapping[str, Timing], source: str
) -> str | None:
    """``~1 h 05 min for 12 run(s) (timing from <source>)``; ``None`` without jobs or an estimate."""
    seconds = estimate_wall_s(jobs, iterations, timings) if jobs else None
    return None if seconds is None else f"~{fmt_duration(seconds)} for {len(jobs)} run(s) (timing from {source})"


def _short_schedule(runner: Any, kind: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with the --measure schedule: the run's epochs (capped), ``MEASURE_EPOCH_LENGTH`` each."""
    epochs, _ = runner.schedule(kind, overrides)
    epochs = min(int(epochs or 1), MEASURE_MAX_EPOCHS)
    short = {**overrides, "epochs": epochs, "epoch_length": MEASURE_EPOCH_LENGTH}
    if "val_interval" in short:
        short["val_interval"] = min(int(short["val_interval"]), epochs)
    return short


def measure_timings(
    runner: Any, pre_common: Mapping[str, Any], ft_common: Mapping[str, Any], grid: Grid, work_dir: str
) -> dict[str, Timing]:
    """
    One short pre-training (when the grid has a pre-trained method) and one fine-tuning + evaluation from scratch
    (the largest fraction) with the grid's settings and epochs (at most ``MEASURE_MAX_EPOCHS``), each epoch of
    ``MEASURE_EPOCH_LENGTH`` iterations, in ``work_dir`` (deleted afterwards): their timings, validations included.
    """
    shutil.rmtree(work_dir, ignore_errors=True)
    records: dict[str, list[dict[str, Any]]] = {"pretrain": [], "finetune": []}
    try:
        if any(VARIANTS[v][1] is not None for v in grid.variants):
            out = os.path.join(work_dir, "pre", "out")
            overrides = {**_short_schedule(runner, "pretrain", pre_common), "output_dir": out}
            overrides["ckpt_dir"] = os.path.join(work_dir, "pre", "ckpt")
            start = time.perf_counter()
            runner.pretrain(overrides, os.path.join(work_dir, "pre.log"))
            wall = time.perf_counter() - start
            records["pretrain"].append(
                {"timing": run_timing("pretrain", out, wall, run_iterations(runner, "pretrain", overrides)[1])}
            )
        out = os.path.join(work_dir, "ft", "train")
        overrides = {**_short_schedule(runner, "finetune", ft_common), "pretrained_ckpt": None, "seed": 0}
        overrides.update({"label_fraction": max(grid.fractions), "output_dir": out})
        overrides["ckpt_dir"] = os.path.join(work_dir, "ft", "models")
        log = os.path.join(work_dir, "ft.log")
        start = time.perf_counter()
        runner.finetune(overrides, log)
        runner.evaluate({**overrides, "output_dir": os.path.join(work_dir, "ft", "eval")}, log)
        wall = time.perf_counter() - start
        records["finetune"].append(
            {"timing": run_timing("finetune", out, wall, run_iterations(runner, "finetune", overrides)[1])}
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return timings_of(records)
