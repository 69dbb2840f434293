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
from monai.transforms import RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd

__all__ = ["BatchAugmentation"]


class BatchAugmentation:
    """
    A list of MONAI dictionary transforms applied to a batch ``{key: [B, C, H, W]}`` at once, each sample with its
    own random draw, as each transform would draw it per sample: ``RandFlipd``, 2-D ``RandRotated`` (``keep_size``;
    ``Rotate``'s rotation about the centre through ``affine_grid`` and ``grid_sample``, each key with its mode,
    padding mode and ``align_corners``), ``RandScaleIntensityd`` and ``RandShiftIntensityd`` (not channel-wise). The
    parameters are read from the transforms, so the config declares the augmentation once for both paths.

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
    """
    ``monai.transforms.Rotate(angle, keep_size=True)`` of each 2-D sample of ``x`` [B, C, H, W] where ``apply``.

    The rotation about the image centre, in the normalised coordinates of ``torch.nn.functional.affine_grid``, is
    linear, so its matrix is written directly and sampled with ``grid_sample`` (what MONAI's ``AffineTransform`` ends
    in). Measured reason: with MONAI's ``AffineTransform`` (pixel matrix, validation, normalisation, 20 tensors made
    from host values) a fine-tuning batch dispatched 270 tensor operations, with this 118 (``python
    scripts/benchmark_sampler.py --batch_size 16 --image_size 64 --threads 1 --parts "['finetuning']"``; 4.93 and
    4.02 ms per batch on a CPU); on a GPU, where the step is launch-bound, each is a kernel launch or a host copy.
    """
    h, w = x.shape[-2:]
    # the normalised extent of a pixel step along each axis (align_corners: the outer pixels' centres at +-1)
    sh, sw = (h - 1, w - 1) if align_corners else (h, w)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    # x (width) first, as affine_grid orders the axes
    theta = torch.stack([cos, sin * (sh / sw), zero, -sin * (sw / sh), cos, zero], 1).view(-1, 2, 3)
    grid = torch.nn.functional.affine_grid(theta.float(), [x.shape[0], x.shape[1], h, w], align_corners=align_corners)
    rotated = torch.nn.functional.grid_sample(
        x.float(), grid, mode=str(mode), padding_mode=str(padding_mode), align_corners=bool(align_corners)
    ).to(x.dtype)
    return torch.where(apply.view(-1, 1, 1, 1), rotated, x)
