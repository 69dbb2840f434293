# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The fine-tuning recipe's schedule (``configs/train.yaml``): the learning-rate decay per iteration (nnU-Net's
polynomial decay, cosine, or constant) for ``torch.optim.lr_scheduler.LambdaLR`` stepped by MONAI's
``LrScheduleHandler(epoch_level=False)``, and the checks of the recipe's ids (schedule, early-stopping patience and
minimum improvement, crop ratio) before anything is read or written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["LR_SCHEDULES", "check_recipe", "lr_lambda"]

#: ``lr_schedule`` values: the factor of the initial learning rate at iteration ``t`` of ``T``
LR_SCHEDULES: tuple[str, ...] = ("poly", "cosine", "constant")


def lr_lambda(schedule: str, total_iterations: int, power: float = 0.9) -> Callable[[int], float]:
    """
    The learning-rate factor per iteration for ``LambdaLR``, reaching its end value at ``total_iterations``:

    - ``poly``: ``(1 - t / T) ** power`` (nnU-Net: power 0.9);
    - ``cosine``: ``0.5 * (1 + cos(pi * t / T))``;
    - ``constant``: 1 (the spec's section 5 recipe).

    Iterations past ``T`` (a resumed run with fewer epochs) keep the end value. The factor is a closure, so
    ``LambdaLR.state_dict`` stores only the step count: a resumed run recomputes it from its own ``epochs`` (a
    resumable id). Why not ``torch.optim.lr_scheduler.PolynomialLR`` / ``CosineAnnealingLR``: their ``state_dict``
    holds ``total_iters`` / ``T_max`` and they step recursively, so a run resumed with more epochs would keep
    decaying over the old budget (checked with torch 2.13: ``PolynomialLR(total_iters=20).load_state_dict(...)`` of
    a ``total_iters=10`` scheduler keeps 10).

    Raises:
        ValueError: an unknown schedule, ``total_iterations`` below 1 or ``power`` not positive.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {schedule!r}.")
    total = int(total_iterations)
    if total < 1:
        raise ValueError(f"the schedule needs at least one iteration (epochs x epoch_length), got {total_iterations}.")
    if not float(power) > 0:
        raise ValueError(f"lr_poly_power must be > 0, got {power!r}.")

    def _factor(iteration: int) -> float:
        progress = min(max(int(iteration), 0), total) / total
        if schedule == "poly":
            return (1.0 - progress) ** float(power)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return _factor


def check_recipe(values: Mapping[str, Any]) -> None:
    """
    Check the recipe's ids: ``lr_schedule`` one of ``LR_SCHEDULES``, ``patience`` an integer >= 0 (validations
    without improvement before stopping; 0: never stop early), ``min_delta`` a number >= 0, ``crop_pos`` and
    ``crop_neg`` numbers >= 0 with a positive sum, ``lr_poly_power`` > 0. Missing ids are not checked.

    Raises:
        ValueError: naming every id that is wrong.
    """
    problems = []
    schedule = values.get("lr_schedule", LR_SCHEDULES[0])
    if schedule not in LR_SCHEDULES:
        problems.append(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {schedule!r}")
    patience = values.get("patience", 0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        problems.append(f"patience must be an integer >= 0 (0: no early stopping), got {patience!r}")
    for name, strictly in (("min_delta", False), ("crop_pos", False), ("crop_neg", False), ("lr_poly_power", True)):
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name} must be a number, got {value!r}")
        elif value < 0 or (strictly and value == 0):
            problems.append(f"{name} must be {'>' if strictly else '>='} 0, got {value!r}")
    pos, neg = values.get("crop_pos", 1), values.get("crop_neg", 1)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (pos, neg)) and pos + neg <= 0:
        problems.append(f"crop_pos + crop_neg must be > 0, got {pos} and {neg}")
    if problems:
        raise ValueError("; ".join(problems) + ".")
