# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Dictionary transforms MONAI lacks: a multimodal foreground mask, a deterministic choice of foreground slices
(the fixed validation slices) and a strict label-value mapping."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ForegroundMaskd", "ForegroundSlicesd", "MapLabelsd"]


class ForegroundMaskd(MapTransform):
    """
    Write ``mask_key``: a float mask (one channel) of the voxels that are non-zero in any channel of any of
    ``keys``. Used as the weight map of slice sampling, so that mostly-empty slices are rarely drawn.
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "foreground", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        for key in self.key_iterator(d):
            nonzero = torch.as_tensor(d[key]).ne(0).any(dim=0, keepdim=True)
            mask = nonzero if mask is None else mask | nonzero
        if mask is None:
            raise KeyError(f"ForegroundMaskd: none of {list(self.keys)} in the data.")
        d[self.mask_key] = mask.float()
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
