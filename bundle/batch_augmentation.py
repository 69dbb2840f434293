# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
A config's list of MONAI dictionary augmentations applied to a whole batch at once on its device, each sample with its
own draw (the device samplers of ``bundle.device_data``: the per-sample chain would run on the CPU, one sample at a
time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers import AffineTransform
from monai.transforms import RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd

__all__ = ["BatchAugmentation"]


class BatchAugmentation:
    """
    A list of MONAI dictionary transforms applied to a batch ``{key: [B, C, H, W]}`` at once, each sample with its
    own random draw, as each transform would draw it per sample: ``RandFlipd``, 2-D ``RandRotated`` (``keep_size``;
    MONAI's ``AffineTransform`` with ``Rotate``'s matrix, each key with its mode, padding mode and
    ``align_corners``), ``RandScaleIntensityd`` and ``RandShiftIntensityd`` (not channel-wise). The parameters are
    read from the transforms, so the config declares the augmentation once for both paths.

    Args:
        transforms: the transforms, in order.

    Raises:
        ValueError: a transform (or an option of one) that has no batched form here, naming it.
    """

    def __init__(self, transforms: Sequence[Any] = ()) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            self._check(t)

    @staticmethod
    def _check(t: Any) -> None:
        name = type(t).__name__
        if isinstance(t, RandRotated):
            rot = t.rand_rotate
            if any(float(v) != 0.0 for v in (*rot.range_y, *rot.range_z)) or not rot.keep_size:
                raise ValueError(f"{name}: only 2-D rotations (range_x) with keep_size have a batched form.")
        elif isinstance(t, RandScaleIntensityd):
            if t.scaler.channel_wise:
                raise ValueError(f"{name}: channel_wise has no batched form.")
        elif isinstance(t, RandShiftIntensityd):
            if t.shifter.channel_wise or any(k is not None for k in t.factor_key):
                raise ValueError(f"{name}: channel_wise and factor_key have no batched form.")
        elif not isinstance(t, RandFlipd):
            raise ValueError(
                f"{name} has no batched form in bundle.batch_augmentation.BatchAugmentation (RandFlipd, RandRotated, "
                "RandScaleIntensityd, RandShiftIntensityd): use --device_cache False."
            )

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = dict(batch)
        for t in self.transforms:
            first = batch[next(iter(t.keys))]
            n, device = first.shape[0], first.device
            apply = torch.rand(n, generator=generator, device=device) < float(t.prob)
            keys = [k for k in t.keys if k in batch]
            if isinstance(t, RandFlipd):
                axes = t.flipper.spatial_axis
                axes = [axes] if isinstance(axes, int) else list(axes) if axes is not None else None
                for k in keys:
                    x = batch[k]
                    dims = [a % (x.ndim - 2) + 2 for a in axes] if axes is not None else list(range(2, x.ndim))
                    batch[k] = torch.where(apply.view(-1, *[1] * (x.ndim - 1)), x.flip(dims), x)
            elif isinstance(t, RandRotated):
                low, high = (float(v) for v in t.rand_rotate.range_x)
                angle = low + (high - low) * torch.rand(n, generator=generator, device=device)
                for i, k in enumerate(t.keys):
                    if k in batch:
                        batch[k] = _rotate(batch[k], angle, apply, t.mode[i], t.padding_mode[i], t.align_corners[i])
            else:
                if isinstance(t, RandScaleIntensityd):
                    low, high = (float(v) for v in t.scaler.factors)
                else:
                    low, high = (float(v) for v in t.shifter.offsets)
                value = low + (high - low) * torch.rand(n, generator=generator, device=device)
                for k in keys:
                    x = batch[k]
                    v = value.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
                    changed = x * (1 + v) if isinstance(t, RandScaleIntensityd) else x + v
                    batch[k] = torch.where(apply.view(-1, *[1] * (x.ndim - 1)), changed, x)
        return batch


def _rotate(
    x: torch.Tensor, angle: torch.Tensor, apply: torch.Tensor, mode: str, padding_mode: str, align_corners: bool
) -> torch.Tensor:
    """``monai.transforms.Rotate(angle, keep_size=True)`` of each 2-D sample of ``x`` [B, C, H, W] where ``apply``."""
    h, w = x.shape[-2:]
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).view(-1, 3, 3)
    centre = torch.tensor([[1.0, 0.0, (h - 1) / 2], [0.0, 1.0, (w - 1) / 2], [0.0, 0.0, 1.0]], device=x.device)
    back = torch.tensor([[1.0, 0.0, -(h - 1) / 2], [0.0, 1.0, -(w - 1) / 2], [0.0, 0.0, 1.0]], device=x.device)
    matrix = centre @ rotation @ back
    xform = AffineTransform(
        normalized=False, mode=str(mode), padding_mode=str(padding_mode), align_corners=bool(align_corners),
        reverse_indexing=True,
    )
    rotated = xform(x.float(), matrix, spatial_size=(h, w)).to(x.dtype)
    return torch.where(apply.view(-1, 1, 1, 1), rotated, x)
