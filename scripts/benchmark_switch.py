# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Does a speed switch pay? The bare training step of a config (``trainer._iteration`` on batches already on the device,
as in ``scripts/benchmark_speed.py``) with the configs' defaults against the same with ``--switch`` (config ids), in
one process: timed interleaved (A/B/A/B blocks; ``switch_over_default`` is the median of the per-round ratios, so a
shared machine's load cancels out), with the tensor operations each dispatches per step (counted with a
``TorchDispatchMode``: exact and independent of load) and, on a GPU, its kernel launches (``torch.profiler``).

    python scripts/benchmark_switch.py --config pretrain.yaml --switch "{'group_norm_kernel': False}" --threads 1
    python scripts/benchmark_switch.py --config pretrain.yaml --switch "{'channels_last': True}" \\
        --batch_size 16 --image_size 160 --amp True  # one GPU

Printed: both variants' seconds per step, their ratio (above 1: the switch is slower), tensor operations per step
and, on a GPU, kernel launches per step. Data: a demo dataset in a temporary folder unless ``--dataset_dir``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import fire
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.profile_step import step_profiler, summarise_profile  # noqa: E402
from scripts.workflow_harness import (  # noqa: E402
    RUN_IDS,
    OpCounter,
    bare_steps,
    bundle_workflow,
    demo_dataset,
    device_batches,
    sync,
)

#: config ids that set process-wide torch flags (``bundle.speed.set_speed_switches``): not comparable in one process
PROCESS_WIDE_IDS: tuple[str, ...] = ("tf32", "cudnn_benchmark")


def _bare_trainer(config: str, overrides: Mapping[str, Any]) -> tuple[Any, list[Any]]:
    """``config``'s initialised trainer, set up for bare steps, and two batches from its own loader on its device."""
    wf = bundle_workflow(config, overrides, RUN_IDS[config])
    trainer = wf.parser.get_parsed_content("train#trainer")
    # what MONAI's Trainer.run() sets up before the first iteration (SupervisedTrainer autocasts only with it)
    trainer.scaler = torch.cuda.amp.GradScaler() if trainer.amp else None
    batches = device_batches(wf.parser.get_parsed_content("train#dataloader"), 2, torch.device(trainer.state.device))
    return trainer, batches


def _counts(trainer: Any, batches: list[Any], device: torch.device) -> dict[str, float]:
    """Tensor operations of one step and, on a GPU, kernel launches per step (over 2 profiled steps)."""
    with OpCounter() as counter:
        bare_steps(trainer, batches, 1)
    out: dict[str, float] = {"ops_per_step": float(counter.count)}
    if device.type == "cuda":
        with step_profiler(device) as prof:
            bare_steps(trainer, batches, 2)
            sync(device)
        out["launches_per_step"] = summarise_profile(prof, 2)["launches_per_step"]
    return out


def compare_switch(
    config: str,
    overrides: Mapping[str, Any],
    switch: Mapping[str, Any],
    folder: str,
    rounds: int,
    iterations: int,
    warmup: int,
) -> dict[str, Any]:
    """
    The bare step of ``config`` with ``overrides`` (``default``) against ``overrides`` plus ``switch`` (``switched``),
    interleaved; each variant's run folders under ``folder``.

    Returns
    -------
    dict
        ``default`` and ``switched`` (``step_s``: median seconds per step; ``ops_per_step``; on a GPU
        ``launches_per_step``), ``switch_over_default`` (median of the per-round ratios), ``rounds`` and ``device``.
    """
    trainers = {}
    for name, ids in (("default", {}), ("switched", switch)):
        folders = {"ckpt_dir": os.path.join(folder, name, "ckpt"), "output_dir": os.path.join(folder, name, "out")}
        trainers[name] = _bare_trainer(config, {**overrides, **ids, **folders})
    device = torch.device(trainers["default"][0].state.device)
    out: dict[str, Any] = {}
    for name, (trainer, batches) in trainers.items():
        bare_steps(trainer, batches, warmup)
        out[name] = _counts(trainer, batches, device)
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(int(rounds)):
        for name, (trainer, batches) in trainers.items():
            sync(device)
            start = time.perf_counter()
            bare_steps(trainer, batches, iterations)
            sync(device)
            seconds[name].append((time.perf_counter() - start) / iterations)
    for name in trainers:
        out[name]["step_s"] = statistics.median(seconds[name])
    ratios = [s / d for s, d in zip(seconds["switched"], seconds["default"])]
    out.update({"switch_over_default": statistics.median(ratios), "rounds": int(rounds), "device": str(device)})
    return out


def main(
    switch: dict,
    config: str = "pretrain.yaml",
    batch_size: int = 8,
    image_size: int = 64,
    amp: bool = False,
    rounds: int = 6,
    iterations: int = 3,
    warmup: int = 2,
    threads: int | None = None,
    overrides: dict | None = None,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
) -> dict[str, Any]:
    """
    Compare ``config``'s bare step with and without ``switch``.

    Parameters
    ----------
    switch
        the config ids that make the switched variant, e.g. ``{'group_norm_kernel': False}``.
    config
        ``pretrain.yaml`` or ``train.yaml`` (fine-tuning from scratch).
    batch_size, image_size, amp
        the configs' ids of those names, for both variants.
    rounds, iterations, warmup
        A/B rounds, steps per block, untimed steps per variant first.
    threads
        CPU threads (``torch.set_num_threads``); 1 on a shared machine.
    overrides
        further config ids for both variants.
    dataset_dir, data_list_file_path
        an existing dataset (default: a demo dataset in a temporary folder).
    """
    if config not in RUN_IDS:
        raise ValueError(f"config must be one of {sorted(RUN_IDS)}, got {config!r}.")
    if not isinstance(switch, Mapping) or not switch:
        raise ValueError(f"switch must be a non-empty dict of config ids, got {switch!r}.")
    process_wide = sorted(set(switch) & set(PROCESS_WIDE_IDS))
    if process_wide:
        raise ValueError(
            f"switch: {process_wide} set process-wide torch flags, which both variants of one process would share: "
            "compare them with two runs of scripts/benchmark_speed.py (--overrides)."
        )
    if min(rounds, iterations, warmup) < 1:
        raise ValueError(f"rounds, iterations and warmup must be >= 1, got {rounds}, {iterations}, {warmup}.")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if dataset_dir is None:
                dataset_dir, data_list_file_path = demo_dataset(os.path.join(tmp, "data"), batch_size, image_size)
            common = {
                "bundle_root": ROOT,
                "dataset_dir": dataset_dir,
                "data_list_file_path": data_list_file_path or os.path.join(dataset_dir, "datalist.json"),
                "batch_size": int(batch_size),
                "image_size": int(image_size),
                "amp": bool(amp),
                **(overrides or {}),
            }
            if config == "train.yaml":
                common["pretrained_ckpt"] = None
            r = compare_switch(config, common, dict(switch), os.path.join(tmp, "runs"), rounds, iterations, warmup)
    finally:
        torch.set_num_threads(previous_threads)
    d, s = r["default"], r["switched"]
    launches = (
        f", {s['launches_per_step']:.0f} against {d['launches_per_step']:.0f} kernel launches/step"
        if "launches_per_step" in s
        else ""
    )
    print(
        f"{config}, batch {batch_size} @ {image_size}: {dict(switch)} {s['step_s']:.4f} s/step against "
        f"{d['step_s']:.4f} s/step with the defaults, switch_over_default {r['switch_over_default']:.3f} (median of "
        f"{r['rounds']} rounds); {s['ops_per_step']:.0f} against {d['ops_per_step']:.0f} tensor ops/step{launches} "
        f"({r['device']})"
    )
    return r


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
