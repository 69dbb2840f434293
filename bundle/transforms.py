# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Dictionary transforms MONAI lacks: a multimodal foreground mask and a deterministic choice of foreground
slices (the fixed validation slices)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ForegroundMaskd", "ForegroundSlicesd"]


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
