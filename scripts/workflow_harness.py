# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The bundle's workflows as the speed scripts drive them (``benchmark_speed``, ``benchmark_switch``,
``benchmark_sampler``, ``profile_step``): a config as an initialised ``ConfigWorkflow``, batches drawn from its own
training loader onto the device, the trainer's own iteration function run on them ("the bare step"), a count of the
tensor operations a step dispatches, and a demo dataset sized for a batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.utils import convert_tensor
from torch.utils._python_dispatch import TorchDispatchMode

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

#: the run expression of each training config (``ConfigWorkflow``'s ``run_id``)
RUN_IDS: dict[str, str] = {"pretrain.yaml": "training", "train.yaml": "run"}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings end after it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bundle_workflow(
    config: str | Sequence[str], overrides: Mapping[str, Any], run_id: str = "run", initialize: bool = True
) -> Any:
    """
    ``configs/<config>`` (a list: merged in order) as a ``ConfigWorkflow`` with ``overrides`` (initialised unless
    ``initialize`` is False).
    """
    from monai.bundle import ConfigWorkflow

    files = [config] if isinstance(config, str) else list(config)
    wf = ConfigWorkflow(
        config_file=[os.path.join(CONFIGS, f) for f in files],
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        logging_file=os.path.join(CONFIGS, "logging.conf"),
        workflow_type=None,
        run_id=run_id,
        **overrides,
    )
    if initialize:
        wf.initialize()
    return wf


def device_batches(loader: Iterable, count: int, device: torch.device) -> list[Any]:
    """
    ``count`` batches drawn from the workflow's own training loader (the per-sample ``DataLoader`` or the on-device
    sampler), on ``device``: the bare step's input.
    """
    batches: list[Any] = []
    while len(batches) < count:
        before = len(batches)
        batches += [convert_tensor(b, device) for b in loader][: count - len(batches)]
        if len(batches) == before:
            raise ValueError("the training loader yields no batch.")
    sync(device)
    return batches


def bare_steps(trainer: Any, batches: Sequence[Any], count: int) -> None:
    """``count`` iterations of ``trainer``'s own iteration function on ``batches`` (cycled), already on the device."""
    for i in range(count):
        trainer._iteration(trainer, batches[i % len(batches)])


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (views included: on a CPU each costs dispatch time)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def demo_dataset(folder: str, batch_size: int, image_size: int) -> tuple[str, str]:
    """A demo dataset (``bundle.demo_data``) with enough training subjects for two batches: its folder and datalist."""
    from bundle.demo_data import ensure_demo_dataset

    side = max(64, int(image_size))
    subjects = max(24, 2 * int(batch_size) + 8)
    datalist = ensure_demo_dataset(
        folder, os.path.join(folder, "datalist.json"), num_subjects=subjects, shape=(side, side, 32)
    )
    return folder, datalist
