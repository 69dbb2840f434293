# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Where the time of one training step goes: the bare step (``trainer._iteration`` on batches already on the device, as
in ``scripts/benchmark_speed.py``) and the workflow's iteration (batch, step and handlers), timed at several batch
sizes and profiled with ``torch.profiler``.

    python scripts/profile_step.py --config pretrain.yaml --batch_sizes "[16, 64]" --image_size 160 --amp True

Printed per batch size, for the bare step and for the workflow iteration: seconds per step; the device's busy time
per step (the sum of the kernels' times, which overlap little on one stream) and its fraction of the step
(``busy_fraction``: near 1 the step is bound by the device's work, far below 1 by the host: Python, dispatch, kernel
launches or waits); kernel launches and host-device synchronisations (``cudaStreamSynchronize``,
``cudaDeviceSynchronize``, device-to-host copies) per step; then the ops with the most device time and with the most
host time. If the step's time barely grows with the batch, the host bounds it; what the workflow iteration adds to
the bare step (launches, syncs, ops) is its overhead. On a CPU only the host columns are filled.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import fire
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.workflow_harness import (  # noqa: E402
    RUN_IDS,
    bare_steps,
    bundle_workflow,
    demo_dataset,
    device_batches,
    sync,
)

#: host-side CUDA runtime calls that wait for the device
SYNC_CALLS: tuple[str, ...] = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _device_time_us(event: Any) -> float:
    """An averaged profiler event's own device time in microseconds (the attribute's name differs by torch release)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def summarise_profile(prof: Any, steps: int) -> dict[str, Any]:
    """Per-step device busy time, kernel launches, host syncs, device-to-host copies and the top ops of ``prof``."""
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type is not None and "cuda" in str(e.device_type).lower()]
    busy_us = sum(_device_time_us(e) for e in kernels)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = sum(e.count for e in events if e.key in SYNC_CALLS)
    copies_to_host = sum(e.count for e in events if "DtoH" in e.key or "Device -> Pageable" in e.key)
    by_device = sorted(events, key=_device_time_us, reverse=True)[:12]
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "busy_s_per_step": busy_us / 1e6 / steps,
        "launches_per_step": launches / steps,
        "syncs_per_step": syncs / steps,
        "copies_to_host_per_step": copies_to_host / steps,
        "top_device": [(e.key, _device_time_us(e) / 1e3 / steps, e.count / steps) for e in by_device],
        "top_host": [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in by_host],
    }


def step_profiler(device: torch.device) -> Any:
    """A ``torch.profiler.profile`` of the host and, on CUDA, the device."""
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else []))


def profile_config(config: str, overrides: dict[str, Any], batch_size: int, steps: int, warmup: int) -> dict[str, Any]:
    """
    Time and profile ``config``'s bare step and its workflow iteration at ``batch_size`` (overrides: data, folders,
    sizes) inside one run of the workflow, as ``scripts/benchmark_speed.py`` does, so that what ``run()`` sets up is
    in place (MONAI's ``SupervisedTrainer`` creates its amp ``GradScaler`` there, without which its step runs without
    autocast): after ``warmup`` workflow iterations, ``warmup`` untimed and ``steps`` timed bare steps, ``steps``
    profiled ones, then ``steps`` profiled workflow iterations (data, step and every handler); the run is then
    stopped.

    Returns
    -------
    dict
        ``batch_size``, and ``bare`` and ``workflow``: each ``step_s``, ``busy_fraction`` and ``summarise_profile``'s
        numbers.
    """
    from ignite.engine import Events

    run = {**overrides, "batch_size": int(batch_size), "epochs": 1, "epoch_length": int(warmup) + int(steps) + 1}
    wf = bundle_workflow(config, run, RUN_IDS[config])
    trainer = wf.parser.get_parsed_content("train#trainer")
    device = torch.device(trainer.state.device)
    batches = device_batches(wf.parser.get_parsed_content("train#dataloader"), 2, device)
    out: dict[str, Any] = {"batch_size": int(batch_size)}
    running: dict[str, Any] = {}

    def bare(engine: Any) -> None:
        bare_steps(engine, batches, warmup)
        sync(device)
        start = time.perf_counter()
        bare_steps(engine, batches, steps)
        sync(device)
        step_s = (time.perf_counter() - start) / steps
        with step_profiler(device) as prof:
            bare_steps(engine, batches, steps)
            sync(device)
        out["bare"] = {"step_s": step_s, **summarise_profile(prof, steps)}
        running["profiler"] = step_profiler(device).__enter__()  # the next ``steps`` workflow iterations
        running["start"] = time.perf_counter()

    def workflow(engine: Any) -> None:
        sync(device)
        step_s = (time.perf_counter() - running["start"]) / steps
        prof = running.pop("profiler")
        prof.__exit__(None, None, None)
        out["workflow"] = {"step_s": step_s, **summarise_profile(prof, steps)}
        engine.terminate()

    # after the workflow's own handlers: a profiled iteration includes all of them
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=int(warmup)), bare)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=int(warmup) + int(steps)), workflow)
    try:
        wf.run()
    finally:
        if "profiler" in running:
            running.pop("profiler").__exit__(None, None, None)
    wf.finalize()
    for part in ("bare", "workflow"):
        out[part]["busy_fraction"] = out[part]["busy_s_per_step"] / out[part]["step_s"]
    return out


def _print(config: str, r: dict[str, Any], device: str) -> None:
    """The printed lines of one batch size (the device columns on CUDA only)."""
    for part, name in (("bare", "bare step"), ("workflow", "workflow iteration")):
        p = r[part]
        line = f"{config}, batch {r['batch_size']}, {name}: {p['step_s']:.4f} s/step"
        if p["busy_s_per_step"]:
            line += (
                f", device busy {p['busy_s_per_step']:.4f} s/step (busy_fraction {p['busy_fraction']:.2f}), "
                f"{p['launches_per_step']:.0f} kernel launches/step, {p['syncs_per_step']:.1f} syncs/step, "
                f"{p['copies_to_host_per_step']:.1f} device-to-host copies/step"
            )
        print(f"{line} ({device})")
        for title, rows in (("device ms/step", p["top_device"]), ("host ms/step", p["top_host"])):
            if title.startswith("device") and not p["busy_s_per_step"]:
                continue  # no device activity profiled (CPU)
            print(f"  top ops by {title}: " + "; ".join(f"{k} {ms:.2f} (x{n:.0f})" for k, ms, n in rows))


def main(
    config: str = "pretrain.yaml",
    batch_sizes: Sequence[int] = (16, 64),
    image_size: int = 160,
    amp: bool = False,
    steps: int = 5,
    warmup: int = 3,
    overrides: dict | None = None,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
) -> list[dict[str, Any]]:
    """
    Profile the bare step of ``config`` at each of ``batch_sizes``.

    Parameters
    ----------
    config
        ``pretrain.yaml`` or ``train.yaml``.
    batch_sizes
        slices per step to compare.
    image_size
        slice side.
    amp
        mixed precision (the configs' ``amp``).
    steps, warmup
        timed and profiled steps and workflow iterations, after ``warmup`` untimed workflow iterations and bare
        steps.
    overrides
        further config ids, e.g. ``{'compile': True}``.
    dataset_dir, data_list_file_path
        an existing dataset (default: a demo dataset in a temporary folder, large enough for the biggest batch).
    """
    if config not in RUN_IDS:
        raise ValueError(f"config must be one of {sorted(RUN_IDS)}, got {config!r}.")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if dataset_dir is None:
            dataset_dir, data_list_file_path = demo_dataset(os.path.join(tmp, "data"), max(batch_sizes), image_size)
        common = {
            "bundle_root": ROOT,
            "image_size": int(image_size),
            "amp": bool(amp),
            "dataset_dir": dataset_dir,
            "data_list_file_path": data_list_file_path or os.path.join(dataset_dir, "datalist.json"),
            **(overrides or {}),
        }
        if config == "train.yaml":
            common["pretrained_ckpt"] = None
        for i, batch_size in enumerate(batch_sizes):
            folders = {"ckpt_dir": os.path.join(tmp, f"ckpt{i}"), "output_dir": os.path.join(tmp, f"out{i}")}
            r = profile_config(config, {**common, **folders}, int(batch_size), int(steps), int(warmup))
            _print(config, r, "cuda" if torch.cuda.is_available() else "cpu")
            results.append(r)
    return results


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
