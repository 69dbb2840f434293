# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Dictionary transforms MONAI lacks: per-modality intensity rules (MRI, CT, PET), channel selection from 4-D
multimodal files, a fast channel argmax, a multimodal foreground mask, padding with each modality's background, a
cast that stays out of the cache, a deterministic choice of foreground slices (the fixed validation slices), a
strict label-value mapping, and a NIfTI writer that keeps every spatial dimension of the input."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import NibabelWriter
from monai.transforms import (
    MapTransform,
    NormalizeIntensity,
    ResizeWithPadOrCrop,
    ScaleIntensityRange,
    Spacingd,
    SpatialPad,
)
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_dst_type

__all__ = [
    "INTENSITY_RULES",
    "ChannelArgmaxd",
    "ForegroundMaskd",
    "ForegroundOnlyd",
    "ForegroundSlicesd",
    "MapLabelsd",
    "ModalityIntensityd",
    "ResizeWithBackgroundd",
    "SelectChanneld",
    "SpacingWithExtrasd",
    "UncachedCastd",
    "VolumeWriter",
    "background_value",
    "check_preprocessing",
    "intensity_rule",
]

#: intensity rules: the value range each maps to is [-1, 1] (the generators end in tanh); the background value
#: is 0 for ``mri`` (z-scored non-zero voxels, zeros kept) and -1 for ``ct``/``pet`` (the window's lower end)
INTENSITY_RULES: dict[str, float] = {"mri": 0.0, "ct": -1.0, "pet": -1.0}


def intensity_rule(intensity: str | Mapping[str, str], key: str) -> str:
    """
    The intensity rule of ``key``: ``intensity`` is one rule for every modality or a ``{modality: rule}`` map.

    Raises:
        ValueError: an unknown rule, or a map without ``key``.
    """
    if isinstance(intensity, Mapping):
        if key not in intensity:
            raise ValueError(f"intensity {dict(intensity)} names no rule for modality '{key}'.")
        rule = intensity[key]
    else:
        rule = intensity
    if rule not in INTENSITY_RULES:
        raise ValueError(f"unknown intensity rule {rule!r} for '{key}': choose one of {sorted(INTENSITY_RULES)}.")
    return str(rule)


def background_value(intensity: str | Mapping[str, str], key: str = "image") -> float:
    """The value of empty space after ``key``'s intensity rule (what padding must use)."""
    return INTENSITY_RULES[intensity_rule(intensity, key)]


def check_preprocessing(
    keys: Sequence[str],
    intensity: str | Mapping[str, str],
    resample_to: str | None = None,
    spacing: Sequence[float] | None = None,
) -> None:
    """
    Check the preprocessing settings of a config before anything is built.

    Raises:
        ValueError: an unknown intensity rule, ``resample_to`` not one of ``keys`` or ``spacing`` not three numbers.
    """
    for key in keys:
        intensity_rule(intensity, key)
    if resample_to is not None and resample_to not in keys:
        raise ValueError(f"resample_to must be one of the modalities {list(keys)} or null, got {resample_to!r}.")
    if spacing is not None and (
        isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence) or len(spacing) != 3
    ):
        raise ValueError(f"spacing must be null or three numbers in mm (<= 0 keeps an axis), got {spacing!r}.")


class ModalityIntensityd(MapTransform):
    """
    Map each modality to [-1, 1] with its rule (see ``INTENSITY_RULES``), built from MONAI's ``NormalizeIntensity``
    and ``ScaleIntensityRange``:

    - ``mri``: z-score over the non-zero voxels, clip to ``±mri_clip`` standard deviations, scale to [-1, 1]
      (the background stays 0);
    - ``ct``: Hounsfield window ``ct_window`` (e.g. -200..250) scaled to [-1, 1], clipped;
    - ``pet``: SUV range ``pet_range`` (e.g. 0..10) scaled to [-1, 1], clipped.

    Args:
        keys: modality keys.
        intensity: one rule for every key, or ``{key: rule}``.
        mri_clip: clip of the ``mri`` z-score, in standard deviations.
        ct_window: ``[low, high]`` HU window of the ``ct`` rule.
        pet_range: ``[low, high]`` SUV range of the ``pet`` rule.
    """

    def __init__(
        self,
        keys: KeysCollection,
        intensity: str | Mapping[str, str] = "mri",
        mri_clip: float = 5.0,
        ct_window: Sequence[float] = (-200.0, 250.0),
        pet_range: Sequence[float] = (0.0, 10.0),
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.rules = {key: intensity_rule(intensity, str(key)) for key in self.keys}
        for name, (low, high) in (("ct_window", ct_window), ("pet_range", pet_range)):
            if not float(low) < float(high):
                raise ValueError(f"{name} must be [low, high] with low < high, got [{low}, {high}].")
        if not float(mri_clip) > 0:
            raise ValueError(f"intensity_clip must be > 0, got {mri_clip}.")
        self.mri = [
            NormalizeIntensity(nonzero=True, channel_wise=True),
            ScaleIntensityRange(-float(mri_clip), float(mri_clip), -1.0, 1.0, clip=True),
        ]
        self.ct = [ScaleIntensityRange(float(ct_window[0]), float(ct_window[1]), -1.0, 1.0, clip=True)]
        self.pet = [ScaleIntensityRange(float(pet_range[0]), float(pet_range[1]), -1.0, 1.0, clip=True)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for transform in getattr(self, self.rules[key]):
                d[key] = transform(d[key])
        return d


class SpacingWithExtrasd(Spacingd):
    """
    MONAI ``Spacingd`` that tolerates non-metadata entries named ``<key>_*``: MONAI 1.6.1's ``Spacingd`` calls
    ``.update()`` on every such entry of a NIfTI input, and MONAI Label adds ``image_path`` (a string) to the data,
    which fails with ``AttributeError: 'str' object has no attribute 'update'``. Entries that are not dicts are set
    aside during the call and restored after it. Takes ``Spacingd``'s arguments.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)}
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


class SelectChanneld(MapTransform):
    """
    Keep one channel of multi-channel images (e.g. the 4-D files of MSD Task01_BrainTumour, channels FLAIR, T1w,
    T1gd, T2w): the index of ``key`` is read from the record's ``channels_key`` map (``{"flair": 0, "t2": 3}``),
    which the datalist carries and this transform removes. Single-channel images pass unchanged.

    Raises:
        ValueError: naming the file, for a multi-channel image without an index or an index out of range.
    """

    def __init__(self, keys: KeysCollection, channels_key: str = "channels", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.channels_key = channels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        channels = d.pop(self.channels_key, None) or {}
        for key in self.key_iterator(d):
            image = d[key]
            n = image.shape[0]
            index = channels.get(key)
            if index is None:
                if n > 1:
                    raise ValueError(
                        f"{_source(image, key)}: {n} channels but the record gives no channel index for '{key}' "
                        f'(add "{self.channels_key}": {{"{key}": i}} to it, as scripts/prepare_datalist.py does).'
                    )
                continue
            if not 0 <= int(index) < n:
                raise ValueError(f"{_source(image, key)}: channel index {index} for '{key}' but the image has {n}.")
            d[key] = image[int(index) : int(index) + 1]
        return d


class ResizeWithBackgroundd(MapTransform):
    """
    MONAI's ``ResizeWithPadOrCrop`` with a padding value per key (each modality's background, 0 for masks and
    labels), which ``ResizeWithPadOrCropd`` cannot do: it pads every key with one value. With ``pad_only``, MONAI's
    ``SpatialPad`` instead: dimensions already at least ``spatial_size`` are kept (random crops pick the window).

    Args:
        keys: keys to pad or crop, all to ``spatial_size`` (-1 keeps a dimension).
        spatial_size: the output spatial size (with ``pad_only``: the least one).
        backgrounds: padding value of every key, or ``{key: value}`` (keys not in it use 0).
        pad_only: pad to at least ``spatial_size``, never crop.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        backgrounds: float | Mapping[str, float] = 0.0,
        pad_only: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        values = backgrounds if isinstance(backgrounds, Mapping) else dict.fromkeys(self.keys, backgrounds)
        resizer = SpatialPad if pad_only else ResizeWithPadOrCrop
        self.resizers = {
            key: resizer(spatial_size, mode="constant", value=float(values.get(key, 0.0))) for key in self.keys
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key](d[key])
        return d


class UncachedCastd(MapTransform, RandomizableTrait):
    """
    Cast ``keys`` to ``dtype`` after the cache: marked ``RandomizableTrait`` so that ``CacheDataset`` and
    ``PersistentDataset`` stop caching before it (they cache up to the first random transform). The cache then
    keeps the compact dtype (float16 images, uint8 masks) and only the items drawn are cast, e.g. to float32.
    """

    def __init__(self, keys: KeysCollection, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key]).to(self.dtype)
        return d


class ForegroundMaskd(MapTransform):
    """
    Write ``mask_key``: a mask (one channel) of the voxels that differ from the background in any channel of any
    of ``keys``. Used to crop to the foreground and as the weight map of slice sampling, so that mostly-empty
    slices are rarely drawn.

    Args:
        keys: images whose foreground is united.
        mask_key: where the mask goes.
        background: the background value of every key, or ``{key: value}`` (see ``background_value``).
        dtype: the mask's dtype (``torch.uint8`` keeps a cache compact).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "foreground",
        background: float | Mapping[str, float] = 0.0,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.background = background if isinstance(background, Mapping) else dict.fromkeys(self.keys, background)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        for key in self.key_iterator(d):
            nonzero = torch.as_tensor(d[key]).ne(float(self.background.get(key, 0.0))).any(dim=0, keepdim=True)
            mask = nonzero if mask is None else mask | nonzero
        if mask is None:
            raise KeyError(f"ForegroundMaskd: none of {list(self.keys)} in the data.")
        d[self.mask_key] = mask.to(self.dtype)
        return d


class ChannelArgmaxd(MapTransform):
    """
    The index of the largest channel of each of ``keys`` as a one-channel float image: what MONAI's
    ``AsDiscreted(argmax=True)`` returns (the first index on ties, the input's metadata kept), computed with
    ``torch.max(dim=0).indices`` instead of ``torch.argmax``. Measured reason: on a CPU, ``torch.argmax`` over the
    outermost dimension is several times slower: through ``scripts/benchmark_speed.py --parts "['inference']"``
    on 2 shared CPU cores (a BraTS FLAIR, tiny network), the inference workflow's time outside the network fell
    from 1.95 to 0.80 s per volume (the README's "Benchmarks").
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            plain = pred.as_tensor() if hasattr(pred, "as_tensor") else torch.as_tensor(pred)
            indices = torch.max(plain, dim=0, keepdim=True).indices
            d[key] = convert_to_dst_type(indices, pred, dtype=torch.float32)[0]
        return d


class ForegroundOnlyd(MapTransform):
    """
    Segment only inside the input's foreground (nnU-Net's crop to the non-zero region, at inference): wherever
    ``image_key`` is background in every channel (``ForegroundMaskd`` with the intensity rule's background: 0 for
    ``mri``, -1 for ``ct``/``pet``), the predictions ``keys`` become the background class. A prediction with several
    channels (probabilities or one-hot, class 0 first) gets ``[1, 0, ...]`` there, one with a single channel (class
    indices) gets 0. The image and the predictions must share their spatial shape (apply it before ``Invertd``).

    Args:
        keys: channel-first predictions.
        image_key: the network's input, in the model's intensity range.
        background: the input's background value (``bundle.preprocessing.backgrounds``).

    Raises:
        ValueError: when a prediction's spatial shape differs from the image's.
    """

    def __init__(
        self, keys: KeysCollection, image_key: str = "image", background: float = 0.0, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.mask = ForegroundMaskd(keys=image_key, mask_key="foreground", background=background, dtype=torch.bool)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        outside = ~self.mask({self.image_key: d[self.image_key]})["foreground"][0]
        for key in self.key_iterator(d):
            pred = d[key]
            if tuple(pred.shape[1:]) != tuple(outside.shape):
                raise ValueError(
                    f"ForegroundOnlyd: '{key}' has spatial shape {tuple(pred.shape[1:])} but '{self.image_key}' has "
                    f"{tuple(outside.shape)}: apply it in the network's space, before Invertd."
                )
            out = pred.clone()
            where = outside.to(out.device)
            out[:, where] = 0
            if out.shape[0] > 1:
                out[0, where] = 1
            d[key] = out
        return d


class ForegroundSlicesd(MapTransform):
    """
    Deterministically cut ``num_slices`` 2-D slices (along the last spatial axis) out of 3-D ``keys``: evenly
    spaced over the slices whose foreground area is at least ``min_fraction`` of the largest one. Returns a list
    of dicts (one per slice, ``slice_index`` recorded), which MONAI's ``list_data_collate`` flattens.

    Args:
        keys: channel-first 3-D images to slice, all the same spatial shape.
        mask_key: channel-first foreground mask (see ``ForegroundMaskd``), dropped from the output.
        num_slices: slices per volume (fewer if the volume has fewer foreground slices).
        min_fraction: minimum foreground area relative to the fullest slice.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "foreground",
        num_slices: int = 4,
        min_fraction: float = 0.5,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}.")
        self.mask_key = mask_key
        self.num_slices = int(num_slices)
        self.min_fraction = float(min_fraction)

    def slice_indices(self, mask: torch.Tensor | np.ndarray) -> list[int]:
        """The chosen slice indices for a channel-first 3-D mask."""
        area = torch.as_tensor(mask).reshape(-1, *mask.shape[-1:]).sum(dim=0).cpu().numpy()
        if area.max() <= 0:
            candidates = np.arange(area.shape[0])
        else:
            candidates = np.nonzero(area >= self.min_fraction * area.max())[0]
        picks = np.linspace(0, len(candidates) - 1, num=min(self.num_slices, len(candidates)))
        return [int(candidates[round(p)]) for p in picks]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        mask = d.pop(self.mask_key)
        out = []
        for index in self.slice_indices(mask):
            item = dict(d)
            for key in self.key_iterator(d):
                item[key] = d[key][..., index]
            item["slice_index"] = index
            out.append(item)
        return out


class MapLabelsd(MapTransform):
    """
    Map dataset label values to class indices with ``label_map`` (``{value: class}``; 0 is background unless
    mapped otherwise), failing on any value outside the map, e.g. ``{1: 1, 2: 1, 4: 1}`` (BraTS whole tumour).
    MONAI's ``MapLabelValued`` leaves unknown values unchanged, which would silently corrupt the classes.

    Args:
        keys: label keys.
        label_map: dataset value -> class index.
        num_classes: the number of classes (background included); every class index must be below it.

    Raises:
        ValueError: at construction for a class index outside ``[0, num_classes)``, and when called on a label
            holding values not in the map (the message names the file and the values).
    """

    def __init__(
        self, keys: KeysCollection, label_map: Mapping[Any, Any], num_classes: int, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.label_map = {0: 0, **{int(float(k)): int(v) for k, v in dict(label_map).items()}}
        bad = {k: v for k, v in self.label_map.items() if not 0 <= v < int(num_classes)}
        if bad:
            raise ValueError(f"label_map {dict(label_map)} maps to class indices outside [0, {num_classes}): {bad}.")
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            values = torch.unique(torch.as_tensor(label))
            if not torch.equal(values, values.round()):
                raise ValueError(f"{_source(label, key)}: label has non-integer values {values[:10].tolist()}.")
            unknown = sorted({int(v) for v in values.tolist()} - set(self.label_map))
            if unknown:
                raise ValueError(
                    f"{_source(label, key)}: label values {unknown} are not in label_map {self.label_map} "
                    "(set --label_map to cover every value)."
                )
            source = torch.as_tensor(label)
            out = torch.zeros_like(source)  # a MetaTensor keeps its metadata
            for value, cls in self.label_map.items():
                if cls:
                    out[source == value] = cls
            d[key] = out if isinstance(label, torch.Tensor) else out.cpu().numpy()
        return d


def _source(image: Any, key: Hashable) -> str:
    """The file an image came from (MONAI metadata), for error messages."""
    meta = getattr(image, "meta", None) or {}
    return str(meta.get("filename_or_obj", f"key '{key}'"))


class VolumeWriter(NibabelWriter):
    """
    MONAI ``NibabelWriter`` for ``SaveImaged(writer=...)`` that keeps every spatial dimension: a single channel is
    dropped, nothing else, so the mask of a ``32x32x1`` volume is ``32x32x1`` (MONAI's ``squeeze_end_dims`` would
    also drop the last spatial dimension of size 1 and write a 2-D image). Several channels are written last.
    """

    def set_data_array(
        self, data_array: NdarrayOrTensor, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs: Any
    ) -> None:
        """See ``NibabelWriter.set_data_array``; ``squeeze_end_dims`` is ignored (only a single channel goes)."""
        data = self.convert_to_channel_last(data_array, channel_dim, False, kwargs.pop("spatial_ndim", 3))
        self.data_obj = data[..., 0] if data.shape[-1] == 1 else data  # channel last: drop a single one
