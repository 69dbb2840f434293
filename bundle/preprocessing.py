# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The one volume preprocessing chain of the bundle, declared by every config (pre-training, fine-tuning, evaluation,
inference, translation): load, pick the channel of a 4-D multimodal file, reorient, resample, apply each modality's
intensity rule. Written once so that a model meets at inference exactly the input preparation it was trained with;
its settings come from the resolved ``settings`` of the config (``bundle.records.resolve_settings``), which for
consumers of a model are those of the model's record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import EnsureTyped, LoadImaged, Orientationd, ResampleToMatchd, Transform

from .transforms import ModalityIntensityd, SelectChanneld, SpacingWithExtrasd, background_value, intensity_rule

__all__ = ["backgrounds", "intensity_rules", "volume_transforms"]


def intensity_rules(image_keys: Mapping[str, str], settings: Mapping[str, Any]) -> dict[str, str]:
    """``{data key: rule}`` for data keys that hold modalities (``{"image": "flair"}`` or ``{"t1": "t1"}``)."""
    return {key: intensity_rule(settings["intensity"], modality) for key, modality in image_keys.items()}


def backgrounds(image_keys: Mapping[str, str], settings: Mapping[str, Any]) -> dict[str, float]:
    """The value of empty space of each data key after its intensity rule (what padding must use)."""
    return {key: background_value(rule) for key, rule in intensity_rules(image_keys, settings).items()}


def volume_transforms(
    image_keys: Mapping[str, str] | Sequence[str],
    settings: Mapping[str, Any],
    label_key: str | None = None,
    resample_keys: Sequence[str] = (),
    resample_dst: str | None = None,
    before_intensity: Sequence[Transform] = (),
    intensity: bool = True,
) -> list[Transform]:
    """
    The transforms from file names to channel-first 3-D volumes in the model's space and intensity range.

    Args:
        image_keys: the data keys of images, each with the modality whose intensity rule it gets (``{"image":
            "t1"}``); a list means each key is its modality.
        settings: resolved settings: ``orientation``, ``spacing``, ``intensity`` and its parameters
            (``intensity_clip``, ``ct_window``, ``pet_range``).
        label_key: a label volume loaded, reoriented and resampled (nearest) with the images.
        resample_keys: images resampled onto ``resample_dst``'s grid (e.g. PET onto CT, an image onto its label).
        resample_dst: the key whose grid ``resample_keys`` take.
        before_intensity: transforms inserted just before the intensity rule (e.g. statistics of the raw input).
        intensity: apply the intensity rules (``False`` stops after the geometry).
    """
    keys = dict(image_keys) if isinstance(image_keys, Mapping) else {str(k): str(k) for k in image_keys}
    images = list(keys)
    every = images + ([label_key] if label_key else [])
    chain: list[Transform] = [
        LoadImaged(keys=every, image_only=True, ensure_channel_first=True),
        SelectChanneld(keys=images),  # 4-D multimodal files (MSD): the record's channel per modality
        Orientationd(keys=every, axcodes=settings["orientation"], labels=None),  # labels=None: MONAI's new default
    ]
    if resample_keys:
        chain.append(ResampleToMatchd(keys=list(resample_keys), key_dst=resample_dst, dtype=torch.float32))
    if settings.get("spacing") is not None:
        modes = ["bilinear"] * len(images) + (["nearest"] if label_key else [])
        chain.append(SpacingWithExtrasd(keys=every, pixdim=settings["spacing"], mode=modes, dtype=torch.float32))
    chain.extend(before_intensity)
    if intensity:
        chain.append(
            ModalityIntensityd(
                keys=images,
                intensity=intensity_rules(keys, settings),
                mri_clip=settings["intensity_clip"],
                ct_window=settings["ct_window"],
                pet_range=settings["pet_range"],
            )
        )
    chain.append(EnsureTyped(keys=images, dtype=torch.float32))
    return chain
