# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Modality translation with a pre-trained Multi-ConDoS generator (``configs/translate.yaml``): reading
``generators.pt``, the input records, the generator network (``BasicUNet`` + tanh) and two dictionary transforms that
remember an input volume's intensity scale and map the synthetic image back to it.

Intensity mapping. The generators were trained on volumes z-scored over their non-zero voxels and scaled from
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
from monai.networks.nets import BasicUNet
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from .data import as_modality_pair, read_torch_file

__all__ = [
    "DIRECTIONS",
    "GENERATOR_KEYS",
    "NonzeroStatsd",
    "RestoreIntensityd",
    "TranslationUNet",
    "as_direction",
    "load_generators",
    "log_translation_plan",
    "translation_keys",
]

logger = logging.getLogger(__name__)

#: ``direction`` values and the ``generators.pt`` entry of the generator each one applies
DIRECTIONS: dict[str, str] = {"a_to_b": "g_ab", "b_to_a": "g_ba"}

#: entries of ``generators.pt`` (see ``bundle.handlers.GeneratorExportHandler``) that translation needs
GENERATOR_KEYS: tuple[str, ...] = ("network_args", "g_ab", "g_ba", "modalities", "image_size", "intensity_clip")


class TranslationUNet(BasicUNet):
    """
    A translation generator for inference: MONAI ``BasicUNet`` followed by tanh (output in ``[-1, 1]``).

    Its ``state_dict`` keys are those of a plain ``BasicUNet``, so ``generators.pt``'s ``g_ab`` / ``g_ba`` load
    into it unchanged. Takes the ``BasicUNet`` arguments (``generators.pt``'s ``network_args``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


def load_generators(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """
    Read ``generators.pt`` written by the pre-training (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: the file is missing (the message says to run the pre-training first).
        ValueError: the file cannot be read or lacks one of ``GENERATOR_KEYS``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"generators file not found: {path}. Run the pre-training first "
            "(python -m monai.bundle run training --config_file configs/pretrain.yaml), or point --ckpt_dir "
            "(or --generators_file) at the folder (file) it wrote."
        )
    state = read_torch_file(path, "a generators.pt file", map_location)
    missing = [k for k in GENERATOR_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(
            f"{path} is not a generators.pt written by configs/pretrain.yaml: missing entries {missing} "
            f"(expected {list(GENERATOR_KEYS)})."
        )
    rules = state.get("intensity") or {}
    other = {key: rule for key, rule in rules.items() if rule != "mri"} if isinstance(rules, dict) else {}
    if other:
        raise ValueError(
            f"{path}: the generators were pre-trained with intensity rules {other}; translation maps the output back "
            "with the MRI rule only (z-score statistics of the input), so it supports MRI-only generators."
        )
    return state


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
    Map synthetic images ``keys`` (channel-first, in ``[-1, 1]``) back to the intensity scale of the input
    ``ref_key`` recorded by ``NonzeroStatsd``: ``y * clip * std + mean``, then 0 outside the input's non-zero
    foreground. This inverts the pre-training preprocessing (non-zero z-score, then ``[-clip, clip] -> [-1, 1]``)
    with the *input's* statistics, since the true scale of the other modality is unknown from the input alone.
    The result is float32 and keeps the metadata (affine, file name) of ``y``.

    Args:
        keys: the synthetic images.
        ref_key: the input image key used with ``NonzeroStatsd``.
        clip: the ``intensity_clip`` of the pre-training.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        clip: float = 5.0,
        mean_postfix: str = "nonzero_mean",
        std_postfix: str = "nonzero_std",
        mask_postfix: str = "foreground",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}.")
        self.clip = float(clip)
        self.mean_key = f"{ref_key}_{mean_postfix}"
        self.std_key = f"{ref_key}_{std_postfix}"
        self.mask_key = f"{ref_key}_{mask_postfix}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            y = d[key]
            out = convert_to_tensor(y, dtype=torch.float32, track_meta=False)
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
