# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Modality translation with a pre-trained Multi-ConDoS generator (``configs/translate.yaml``): the direction, the
plan, and two dictionary transforms that remember an input volume's intensity scale and map the synthetic image back
to the target modality's units.

Intensity mapping. A ``ct`` or ``pet`` target inverts its rule (window or SUV range to [-1, 1]). For an ``mri``
target, the generators were trained on volumes z-scored over their non-zero voxels and scaled from
``[-clip, clip]`` to ``[-1, 1]``. A synthetic image ``y`` in ``[-1, 1]`` is mapped back with the statistics of the
*input* volume: ``y * clip * std + mean`` (``mean``/``std`` over the input's non-zero voxels, before normalisation),
and set to 0 outside the input's non-zero foreground. The true scale of the other modality cannot be known from the
input alone (MRI intensities are arbitrary units), so the output is on the input's scale: foreground values lie in
``[mean - clip * std, mean + clip * std]`` and a synthetic voxel of the generator's z-score ``z`` gets the input's
intensity at that z-score.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from .data import as_modality_pair

__all__ = [
    "DIRECTIONS",
    "NonzeroStatsd",
    "RestoreIntensityd",
    "as_direction",
    "log_translation_plan",
    "translation_keys",
]

logger = logging.getLogger(__name__)

#: ``direction`` values and the ``generators.pt`` entry of the generator each one applies
DIRECTIONS: dict[str, str] = {"a_to_b": "g_ab", "b_to_a": "g_ba"}

def as_direction(direction: str) -> str:
    """
    Validate the translation ``direction``.

    Raises:
        ValueError: unless it is ``"a_to_b"`` (G_AB, modality A -> B) or ``"b_to_a"`` (G_BA, modality B -> A).
    """
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ValueError(
            f"direction must be 'a_to_b' (G_AB: modality A -> B) or 'b_to_a' (G_BA: modality B -> A), got {direction!r}."
        )
    return direction


def translation_keys(modalities: Sequence[str], direction: str = "a_to_b") -> dict[str, str]:
    """
    The modality pair ``[A, B]`` seen from ``direction``: ``source`` (the datalist key of the input volumes),
    ``target`` (the synthetic modality, used in the output names) and ``generator`` (``"g_ab"`` or ``"g_ba"``).

    Raises:
        ValueError: for a malformed pair or direction.
    """
    a, b = as_modality_pair(modalities)
    if as_direction(direction) == "a_to_b":
        return {"source": a, "target": b, "generator": DIRECTIONS["a_to_b"]}
    return {"source": b, "target": a, "generator": DIRECTIONS["b_to_a"]}


def log_translation_plan(
    records: Sequence[Mapping[str, Any]],
    keys: Mapping[str, str],
    generators_file: str,
    output_dir: str,
    epoch: Any = None,
) -> None:
    """Log what is translated with which generator and where the outputs go."""
    generator = "G_AB" if keys["generator"] == "g_ab" else "G_BA"
    trained = f" (epoch {epoch})" if epoch is not None else ""
    logger.info(
        f"translating {len(records)} volume(s) of modality '{keys['source']}' to '{keys['target']}' with "
        f"{generator} of {generators_file}{trained}; writing <input name>_synthetic_{keys['target']}.nii.gz to "
        f"{os.path.abspath(output_dir)} (existing files of the same name are replaced)"
    )


class NonzeroStatsd(MapTransform):
    """
    Remember each image's intensity scale before normalisation: for every key, write ``<key>_<mean_postfix>`` and
    ``<key>_<std_postfix>`` (float32 tensors of shape ``(C,)``: per-channel mean and population standard deviation
    of the non-zero voxels, computed exactly as ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` does; a
    zero std is stored as 1, an all-zero channel as mean 0, std 1) and ``<key>_<mask_postfix>`` (a bool tensor of
    shape ``(1, *spatial)``, the voxels that are non-zero in any channel).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mean_postfix: str = "nonzero_mean",
        std_postfix: str = "nonzero_std",
        mask_postfix: str = "foreground",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mean_postfix = mean_postfix
        self.std_postfix = std_postfix
        self.mask_postfix = mask_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], dtype=torch.float32, track_meta=False)
            means, stds = [], []
            for channel in img:
                values = channel[channel != 0]
                if values.numel() == 0:
                    means.append(0.0)
                    stds.append(1.0)
                    continue
                std = torch.std(values, unbiased=False).item()
                means.append(torch.mean(values).item())
                stds.append(std if std != 0.0 else 1.0)
            d[f"{key}_{self.mean_postfix}"] = torch.tensor(means, dtype=torch.float32)
            d[f"{key}_{self.std_postfix}"] = torch.tensor(stds, dtype=torch.float32)
            d[f"{key}_{self.mask_postfix}"] = img.ne(0).any(dim=0, keepdim=True)
        return d


class RestoreIntensityd(MapTransform):
    """
    Map synthetic images ``keys`` (channel-first, in ``[-1, 1]``) back to the target modality's units by inverting
    its intensity rule: ``ct``/``pet``: ``[-1, 1]`` -> the window/SUV range; ``mri``: the scale of the input
    ``ref_key`` recorded by ``NonzeroStatsd``, ``y * clip * std + mean``, then 0 outside the input's non-zero
    foreground (MRI units are arbitrary and the other modality's scale is unknown from the input alone).
    The result is float32 and keeps the metadata (affine, file name) of ``y``.

    Args:
        keys: the synthetic images.
        ref_key: the input image key used with ``NonzeroStatsd``.
        rule: the target modality's intensity rule (``mri``, ``ct`` or ``pet``).
        clip: the ``intensity_clip`` of the pre-training (``mri``).
        ct_window: the HU window of the ``ct`` rule.
        pet_range: the SUV range of the ``pet`` rule.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        rule: str = "mri",
        clip: float = 5.0,
        ct_window: Sequence[float] = (-200.0, 250.0),
        pet_range: Sequence[float] = (0.0, 10.0),
        mean_postfix: str = "nonzero_mean",
        std_postfix: str = "nonzero_std",
        mask_postfix: str = "foreground",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}.")
        if rule not in ("mri", "ct", "pet"):
            raise ValueError(f"rule must be 'mri', 'ct' or 'pet', got {rule!r}.")
        self.rule = rule
        self.clip = float(clip)
        self.value_range = [float(v) for v in (ct_window if rule == "ct" else pet_range)]
        self.mean_key = f"{ref_key}_{mean_postfix}"
        self.std_key = f"{ref_key}_{std_postfix}"
        self.mask_key = f"{ref_key}_{mask_postfix}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            y = d[key]
            out = convert_to_tensor(y, dtype=torch.float32, track_meta=False)
            if self.rule != "mri":
                low, high = self.value_range
                out = (out.clamp(-1.0, 1.0) + 1.0) * (0.5 * (high - low)) + low
                d[key] = convert_to_dst_type(out, y, dtype=torch.float32)[0] if isinstance(y, MetaTensor) else out
                continue
            shape = (-1,) + (1,) * (out.ndim - 1)
            mean = torch.as_tensor(d[self.mean_key], dtype=torch.float32, device=out.device).reshape(shape)
            std = torch.as_tensor(d[self.std_key], dtype=torch.float32, device=out.device).reshape(shape)
            mask = torch.as_tensor(d[self.mask_key], device=out.device).bool()
            if mean.shape[0] not in (1, out.shape[0]):
                raise ValueError(
                    f"RestoreIntensityd: {out.shape[0]} output channel(s) but statistics of {mean.shape[0]} input "
                    "channels; they must match or one of them must be 1."
                )
            if mask.shape[1:] != out.shape[1:]:
                raise ValueError(
                    f"RestoreIntensityd: output spatial shape {list(out.shape[1:])} differs from the input's "
                    f"{list(mask.shape[1:])}."
                )
            out = torch.where(mask, out * (self.clip * std) + mean, torch.zeros((), dtype=out.dtype, device=out.device))
            if isinstance(y, MetaTensor):
                out = convert_to_dst_type(out, y, dtype=torch.float32)[0]
            d[key] = out
        return d
