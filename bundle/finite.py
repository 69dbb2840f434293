# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Optimizer steps without a host synchronisation: a step whose loss or gradients are not finite is skipped on the
device, as ``torch.amp.GradScaler`` skips one with an optimizer that supports it (``found_inf``, e.g. Adam with
``fused=True`` on CPU and CUDA), so that no step waits for the device to decide. The losses are read, and a divergence
reported, every ``log_interval`` iterations (``bundle.handlers.DivergenceGuard``); ``check_finite_state`` keeps a
non-finite value out of every file written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Optimizer

__all__ = [
    "all_finite",
    "check_finite_state",
    "device_skip_supported",
    "finite_step",
    "gradient_norm",
    "mark_step",
    "unmark_step",
]


def _gradients(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def gradient_norm(optimizer: Optimizer) -> torch.Tensor | None:
    """The 2-norm of all gradients of ``optimizer`` (a device tensor, NaN/inf when one is), None without any."""
    grads = _gradients(optimizer)
    return torch.nn.utils.get_total_norm(grads) if grads else None


def all_finite(values: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """
    A 0-d bool device tensor: every value is finite, on every rank of a distributed run (an all-reduce, so that the
    replicas of a DDP model skip the same steps). ``None`` values are left out.
    """
    values = [v.detach().float().reshape(()) for v in values if v is not None]
    finite = torch.stack(values).isfinite().all()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = finite.to(torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag > 0
    return finite


def device_skip_supported(optimizer: Optimizer) -> bool:
    """Whether ``optimizer.step`` honours ``found_inf`` (``torch.optim`` optimizers with ``fused=True``)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def mark_step(optimizer: Optimizer, finite: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> bool:
    """
    Prepare the next ``optimizer.step()`` (or ``scaler.step(optimizer)``) to be skipped on the device unless
    ``finite``: with an enabled ``scaler`` the gradients become NaN (the scaler's own check skips the step and lowers
    its scale), else ``optimizer.found_inf`` is set (``unmark_step`` removes it after the step).

    Returns:
        False when the optimizer cannot skip a step on the device (not fused and no scaler): the caller decides on the
        host (a synchronisation).
    """
    if scaler is not None and scaler.is_enabled():
        grads = _gradients(optimizer)
        if grads:
            torch._foreach_mul_(grads, torch.where(finite, 1.0, float("nan")).to(grads[0].dtype))
        return True
    if not device_skip_supported(optimizer):
        return False
    optimizer.grad_scale = None  # type: ignore[attr-defined]
    optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]  # 1.0: skip (fused kernels)
    return True


def unmark_step(optimizer: Optimizer) -> None:
    """Remove what ``mark_step`` set (a no-op when nothing is set)."""
    for name in ("grad_scale", "found_inf"):
        if hasattr(optimizer, name):
            delattr(optimizer, name)


def finite_step(
    optimizer: Optimizer, losses: Iterable[torch.Tensor], scaler: torch.amp.GradScaler | None = None
) -> torch.Tensor | None:
    """
    After the backward: one step of ``optimizer`` (through ``scaler`` when enabled) unless a loss or gradient is not
    finite, decided on the device. An optimizer that cannot skip on the device (not fused) is stepped only after
    a host synchronisation on the decision.

    Returns:
        the gradient norm (a device tensor, for ``DivergenceGuard``), or None when an enabled ``scaler`` scales the
        gradients (their overflows are then the scaler's business, not a divergence).
    """
    scaling = scaler is not None and scaler.is_enabled()
    norm = None if scaling else gradient_norm(optimizer)
    finite = all_finite([*losses, norm])
    if not mark_step(optimizer, finite, scaler):
        if bool(finite):  # host synchronisation: this optimizer cannot skip a step on the device
            optimizer.step()
        return norm
    try:
        if scaling:
            scaler.step(optimizer)  # type: ignore[union-attr]
            scaler.update()  # type: ignore[union-attr]
        else:
            optimizer.step()
    finally:
        unmark_step(optimizer)
    return norm


def _floating_tensors(obj: Any, prefix: str) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _floating_tensors(value, f"{prefix}[{i}]")


def check_finite_state(state: Any, what: str) -> None:
    """
    Check every floating-point tensor of ``state`` (nested state dicts) before it is written: one host
    synchronisation.

    Raises:
        FloatingPointError: naming ``what`` and the first entries holding NaN/inf.
    """
    named = list(_floating_tensors(state, ""))
    if not named:
        return
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    ok = [True] * len(named)
    for indices in by_device.values():  # one read per device
        flags = torch.stack([named[i][1].detach().isfinite().all() for i in indices]).tolist()
        for i, flag in zip(indices, flags):
            ok[i] = bool(flag)
    bad = [name for (name, _), flag in zip(named, ok) if not flag]
    if not bad:
        return
    raise FloatingPointError(
        f"refusing to write {what}: NaN/inf in {bad[:5]}{' ...' if len(bad) > 5 else ''} ({len(bad)} tensor(s)). "
        "The last complete checkpoint is kept; resume from it (--resume True) with a lower learning_rate, "
        "or check the data."
    )
