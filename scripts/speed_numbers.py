# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The numbers of a speed measurement (``scripts/benchmark_speed.py``): the FLOPs of a step, the device's nominal peak
they are compared with, a part's peak memory, and the summary of interleaved workflow/bare rounds.
"""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

#: nominal dense (no sparsity) peaks in TFLOP/s from the vendors' data sheets, keyed by a fragment of
#: ``torch.cuda.get_device_name`` (the longest fragment found in the name wins)
NOMINAL_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
}


def reset_peak_memory(device: torch.device) -> None:
    """Start a part's peak memory afresh: CUDA's counters, and Linux's peak RSS (``/proc/self/clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the process's peak so far (getrusage)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak RSS in MB since ``reset_peak_memory`` (Linux; else of the process), and CUDA max allocated on a GPU."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as f:
            peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    out = {"peak_rss_mb": round(peak_kb / 1024.0, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def nominal_peak(device: torch.device, amp: bool) -> tuple[str, float | None]:
    """
    The dtype the step's FLOPs mostly run in and the device's nominal dense peak for it.

    Parameters
    ----------
    device
        the device the step ran on.
    amp
        bf16 (or fp16) autocast.

    Returns
    -------
    tuple
        ``(dtype, TFLOP/s)``: ``bf16`` with ``amp``, else on CUDA ``tf32`` when cuDNN may use TF32 for convolutions
        (PyTorch's default), else ``fp32``; the peak is None off CUDA and for a device missing from
        ``NOMINAL_PEAK_TFLOPS``.
    """
    if device.type != "cuda":
        return ("bf16" if amp else "fp32"), None
    dtype = "bf16" if amp else ("tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
    name = torch.cuda.get_device_name(device)
    found = [key for key in NOMINAL_PEAK_TFLOPS if key in name]
    return dtype, (NOMINAL_PEAK_TFLOPS[max(found, key=len)][dtype] if found else None)


def count_flops(step: Callable[[], Any]) -> int:
    """The FLOPs of ``step()`` (``FlopCounterMode``: forward, backward; matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def summarise(
    workflow_s: Sequence[float],
    bare_s: Sequence[float],
    slices: int,
    flops: int,
    device: torch.device,
    amp: bool,
    unit: str = "iteration",
) -> dict[str, Any]:
    """
    The numbers of interleaved rounds: medians of the per-round seconds and of the per-round ratios.

    Parameters
    ----------
    workflow_s, bare_s
        seconds per ``unit`` of each round.
    slices
        slices per ``unit``.
    flops
        FLOPs per ``unit`` (``flops_per_iteration``).
    device
        the device they ran on.
    amp
        bf16/fp16 autocast (which nominal peak applies).
    unit
        ``iteration`` (training) or ``volume`` (inference): the names of the s/unit keys.
    """
    ratios = [w / b for w, b in zip(workflow_s, bare_s)]
    workflow, bare = statistics.median(workflow_s), statistics.median(bare_s)
    dtype, peak = nominal_peak(device, amp)
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "rounds": len(ratios),
        f"slices_per_{unit}": int(slices),
        f"workflow_s_per_{unit}": round(workflow, 5),
        f"bare_s_per_{unit}": round(bare, 5),
        "workflow_over_bare": round(statistics.median(ratios), 4),
        "workflow_over_bare_per_round": [round(r, 4) for r in ratios],
        "slices_per_s": round(slices / workflow, 3),
        "bare_slices_per_s": round(slices / bare, 3),
        "flops_per_iteration": int(flops),
        "workflow_tflops": flops / workflow / 1e12,
        "bare_tflops": flops / bare / 1e12,
        "peak_dtype": dtype,
        "nominal_peak_tflops": peak,
        "workflow_peak_fraction": None,
        "bare_peak_fraction": None,
    }
    if peak:
        out["workflow_peak_fraction"] = out["workflow_tflops"] / peak
        out["bare_peak_fraction"] = out["bare_tflops"] / peak
    return out
