# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The training cache held on the training device and batched samplers that draw each batch with tensor ops there
(``device_cache`` in ``configs/pretrain.yaml`` / ``configs/train.yaml``).

Why a hand-written batched sampler (measured per batch through the configs, ``scripts/benchmark_sampler.py``, one
thread of a loaded 2-core CPU, median of 10-20 interleaved rounds):

- demo data, batch 8 at 64x64 (``--batch_size 8 --image_size 64``): pre-training's per-sample MONAI chain
  (``RandWeightedCropd`` one slice, ``SqueezeDimd``, ``DeleteItemsd``, ``EnsureTyped``, two ``RandFlipd``) through
  ``DataLoader`` takes 33.0 ms against 0.61 ms for ``PairedSliceSampler`` (54x); fine-tuning's
  (``RandCropByPosNegLabeld``, flips, ``RandRotated``, intensity scale/shift, 4 windows per subject) 54.2 ms against
  6.9 ms for ``LabelSliceSampler`` (7.9x);
- real BraTS 2018 at the preset's 160x160 (``--preset brats``, 5 training subjects): fine-tuning, batch 16, 226 ms
  against 23 ms (9.8x); pre-training, batch 4, 42.8 ms against 1.1 ms (40x);
- on a GPU the per-sample chain also runs on the CPU (``num_workers`` 0) and copies every batch to the device; it
  cost about half of a pre-training iteration on an H200 (0.131 s workflow against 0.071 s for the bare step, issue
  13), more than the step itself. MONAI has no batched equivalent of these per-sample crops (``ThreadDataLoader`` and
  ``EnsureTyped(device=...)`` only move the per-sample chain; they do not batch it).

The samplers reproduce the distribution of the configs' chains (tests/test_device_data.py compares them):

- ``RandWeightedCropd`` with an in-plane ``spatial_size`` equal to the cached volumes' (``ResizeWithBackgroundd``
  already padded them with each modality's background) weighs a slice by the foreground mask at its in-plane centre
  voxel (MONAI's "valid" region of a window as large as the slice is its centre), never draws a volume's last slice
  (the valid range of a 1-slice window ends one slice early in ``monai.transforms.utils.weighted_patch_samples``) and
  draws uniformly when no weight is positive; ``PairedSliceSampler`` does the same (``centre_slice_weights``).
- ``RandCropByPosNegLabeld`` picks a positive sample with probability ``pos / (pos + neg)`` (0 without label voxels,
  1 without background voxels), then a centre voxel uniformly among the label (background) voxels, which is a slice
  with probability proportional to its label (background) voxel count and then a voxel of that slice, and moves the
  centre so that the window lies inside the volume; ``LabelSliceSampler`` does the same, on volumes of any in-plane
  size of at least the window (held padded to the largest).
- the augmentation is the config's own list of MONAI transforms, applied per batch (``BatchAugmentation``: each
  sample draws its own flips, rotation angle and intensity factors; rotations use MONAI's ``AffineTransform`` with
  the matrix of ``monai.transforms.Rotate``; ``bundle.batch_augmentation``).

Each batch is drawn without a host synchronisation: subjects are shuffled once per pass (``torch.randperm``), slices
chosen by ``torch.searchsorted`` in the per-slice cumulative weights, all with the sampler's own ``torch.Generator``
on the device, whose state (with the pass in progress) ``state_dict`` / ``load_state_dict`` save and restore.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait, Transform

from .batch_augmentation import BatchAugmentation

__all__ = [
    "DEVICE_MEMORY_FRACTION",
    "LabelSliceSampler",
    "PairedSliceSampler",
    "centre_slice_weights",
    "check_device_cache",
    "compact_volumes",
    "device_volumes",
    "sampler_state",
]

logger = logging.getLogger("multi_condos")

#: the device cache is used (``device_cache: auto``) when its tensors take at most this fraction of the device's free
#: memory when the cache is built (the networks are already there; the rest is left to the step's activations)
DEVICE_MEMORY_FRACTION = 0.5


def _available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, the host's available memory on a CPU (None where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
            return None
    return None


def check_device_cache(device_cache: Any) -> None:
    """
    Raises:
        ValueError: ``device_cache`` is not ``auto``, ``True`` or ``False``.
    """
    if not (isinstance(device_cache, bool) or device_cache == "auto"):
        raise ValueError(f"device_cache must be auto, True or False, got {device_cache!r}.")


def compact_volumes(dataset: Any) -> list[dict[str, Any]]:
    """
    The cached part of every record of ``dataset`` (the output of its transforms up to the first random one: the
    compact volumes), from its cache where it has one (``CacheDataset``, ``PersistentDataset``), else computed.

    Args:
        dataset: a MONAI dataset whose ``transform`` is a ``Compose`` (``bundle.data.cached_dataset``).
    """
    transform = dataset.transform
    if not isinstance(transform, Compose):
        raise ValueError(f"the training dataset's transform must be a monai Compose, got {type(transform).__name__}.")
    first_random = transform.get_index_of_first(
        lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
    )
    out = []
    for i in range(len(dataset.data)):
        if isinstance(dataset, CacheDataset) and i < dataset.cache_num and dataset._cache[i] is not None:
            item = dataset._cache[i]
        elif isinstance(dataset, PersistentDataset):
            item = dataset._cachecheck(dataset.data[i])  # reads (or writes) the disk cache
        else:
            item = transform(dataset.data[i], end=first_random, threading=True)
        out.append(dict(item))
    return out


def _plain(x: Any) -> torch.Tensor:
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    return torch.as_tensor(x)


def _padded_nbytes(volumes: Sequence[Mapping[str, Any]], key: str) -> int:
    """The bytes of ``key`` stacked by ``_stack``: every volume padded in-plane to the largest."""
    tensors = [_plain(v[key]) for v in volumes]
    height, width = max(int(x.shape[-3]) for x in tensors), max(int(x.shape[-2]) for x in tensors)
    return sum(x.element_size() * int(x.shape[0]) * height * width * int(x.shape[-1]) for x in tensors)


def device_volumes(
    device_cache: bool | str,
    device: torch.device | str,
    dataset: Any,
    keys: Sequence[str],
    what: str = "training",
    in_plane: Sequence[int] | None = None,
) -> list[dict[str, Any]] | None:
    """
    Decide whether the training volumes go on ``device`` (and log the decision with the memory estimate); return
    them (the cached, compact volumes, on the host) if so, ``None`` if not.

    ``auto`` also holds on a CPU: there the per-sample chain costs 8-54x the batched sampler (module docstring) and
    made the fine-tuning workflow 1.16x its bare step (``scripts/benchmark_speed.py``, 2 threads, batch 8, 64x64),
    while the stacked volumes take no more host memory than the memory cache they are stacked from. A dataset whose
    volumes are not all in a memory cache (``cache: disk | none``, ``cache_rate`` below 1) keeps the per-sample
    loader under ``auto`` on a CPU: the user chose not to hold the volumes in memory.

    Args:
        device_cache: ``auto`` (on when the volumes take at most ``DEVICE_MEMORY_FRACTION`` of the device's free
            memory; on a CPU only for a fully filled memory cache), ``True`` (on; an error when they do not fit) or
            ``False`` (off: the per-sample loader).
        device: the training device.
        dataset: the training dataset (its cache is read, or filled).
        keys: the keys held on the device (their bytes are the estimate, with 16 bytes per slice of weights).
        what: the workflow, for the messages.
        in_plane: the in-plane size every volume must have, where the sampler draws whole cached slices
            (pre-training: its cache is padded and cropped to ``image_size``); None: any (fine-tuning's sampler
            crops its windows from volumes of any size at least ``image_size``, held padded to the largest).

    Raises:
        ValueError: a bad ``device_cache``; ``device_cache`` True and volumes whose in-plane size is not
            ``in_plane``.
        MemoryError: ``device_cache`` True and the volumes do not fit, naming the estimate and the free memory.
    """
    check_device_cache(device_cache)
    device = torch.device(device)
    in_memory = isinstance(dataset, CacheDataset) and dataset.cache_num == len(dataset.data)
    if device_cache is False or (device_cache == "auto" and (device.type != "cuda" and not in_memory)):
        logger.info(f"device_cache {device_cache}: {what} batches come from the per-sample loader (device {device}).")
        return None
    volumes = compact_volumes(dataset)
    if in_plane is not None:
        shapes = sorted({tuple(int(n) for n in _plain(v[keys[0]]).shape[-3:-1]) for v in volumes})
        if shapes != [tuple(int(n) for n in in_plane)]:
            text = (
                f"the {what} volumes are cached at {len(shapes)} in-plane size(s) {shapes[:4]}"
                f"{' ...' if len(shapes) > 4 else ''}, the batched sampler needs {tuple(in_plane)} (image_size)"
            )
            if device_cache is True:
                raise ValueError(f"device_cache True: {text}. Set --device_cache auto or False (the per-sample loader).")
            logger.info(f"device_cache auto: {text}: off, the per-sample loader.")
            return None
    slices = sum(int(_plain(v[keys[0]]).shape[-1]) for v in volumes)
    estimate = sum(_padded_nbytes(volumes, k) for k in keys) + 16 * slices
    free = _available_memory(device)
    limit = None if free is None else DEVICE_MEMORY_FRACTION * free
    fits = limit is None or estimate <= limit
    room = "" if free is None else f" (free {free / 2**20:.0f} MiB, at most {DEVICE_MEMORY_FRACTION:.0%} for data)"
    text = f"{len(volumes)} {what} volumes ({slices} slices) need {estimate / 2**20:.1f} MiB on {device}{room}"
    if device_cache is True and not fits:
        raise MemoryError(
            f"device_cache True: {text}: they do not fit. Set --device_cache auto or False (the per-sample loader), "
            "lower image_size, or free device memory."
        )
    logger.info(f"device_cache {device_cache}: {text}: {'on' if fits else 'off, the per-sample loader'}.")
    return volumes if fits else None


def centre_slice_weights(mask: torch.Tensor) -> torch.Tensor:
    """
    ``RandWeightedCropd``'s slice weights for a channel-first ``[C, H, W, D]`` weight map when the window is
    ``[H, W, 1]``: the map's first channel at the in-plane centre voxel, and 0 for the last slice (outside MONAI's
    valid range) unless the volume has one slice. Returns ``[D]`` int64.
    """
    mask = _plain(mask)
    h, w, d = mask.shape[-3:]
    weights = (mask[0, h // 2, w // 2, :] > 0).long()
    if d > 1:
        weights[-1] = 0
    return weights


def _offsets(depths: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([0, *depths], dtype=torch.long).cumsum(0)[:-1].to(device)


def _prefix(weights: torch.Tensor) -> torch.Tensor:
    """Exclusive cumulative sum: ``prefix[i]`` = sum of ``weights[:i]`` (length ``len(weights) + 1``)."""
    return torch.cat([weights.new_zeros(1), weights.cumsum(0)])


def _weighted_slices(
    prefix: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One global slice index per entry: slice ``i`` of the range ``[offset, offset + count)`` with probability
    ``w_i / sum(w)`` (``prefix`` of the weights ``w``), drawn from uniform ``r`` in [0, 1). Also returns the ranges'
    total weights (where 0, the index is that of the range's first slice: the caller draws uniformly instead).
    """
    low, total = prefix[offsets], prefix[offsets + counts] - prefix[offsets]
    target = low + torch.minimum((r * total).long(), (total - 1).clamp(min=0))
    index = torch.searchsorted(prefix, target, right=True) - 1
    return torch.where(total > 0, index, offsets), total


def _uniform(offsets: torch.Tensor, counts: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return offsets + torch.minimum((r * counts).long(), counts - 1)


class _DeviceSampler:
    """
    Batches of subjects, shuffled once per pass (``DataLoader(shuffle=True)``), each batch drawn by ``sample``;
    iterable like a ``DataLoader`` (``len`` = batches per pass). A pass left unfinished (an epoch shorter than a
    pass) is continued by the next ``iter``, as ignite continues a loader's iterator across epochs.
    """

    def __init__(
        self, num_subjects: int, subjects_per_batch: int, drop_last: bool, device: torch.device, seed: int
    ) -> None:
        if num_subjects < 1:
            raise ValueError("the device sampler got no training volume.")
        self.num_subjects = int(num_subjects)
        self.subjects_per_batch = max(1, int(subjects_per_batch))
        self.drop_last = bool(drop_last)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._order: torch.Tensor | None = None
        self._cursor = 0

    def __len__(self) -> int:
        k = self.subjects_per_batch
        return self.num_subjects // k if self.drop_last else math.ceil(self.num_subjects / k)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if len(self) == 0:
            return
        if self._order is None or self._cursor >= len(self):
            self._order = torch.randperm(self.num_subjects, generator=self.generator, device=self.device)
            self._cursor = 0
        while self._cursor < len(self):
            k = self.subjects_per_batch
            subjects = self._order[self._cursor * k : (self._cursor + 1) * k]
            self._cursor += 1  # before the draw: a state saved after this batch starts at the next one
            yield self.sample(subjects)

    def sample(self, subjects: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The generator's state and the pass in progress (CPU tensors: checkpoints load with ``weights_only``)."""
        order = torch.empty(0, dtype=torch.long) if self._order is None else self._order.cpu()
        return {"generator": self.generator.get_state(), "order": order, "cursor": int(self._cursor)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:  # a checkpoint of the per-sample loader path: this sampler starts afresh
            logger.warning("the checkpoint holds no device sampler state: the sampler starts from its seed.")
            return
        self.generator.set_state(state["generator"].cpu())
        order = state["order"]
        if order.numel() and order.numel() != self.num_subjects:
            raise ValueError(
                f"the sampler state holds an order of {order.numel()} subjects, this run has {self.num_subjects}."
            )
        self._order = order.to(self.device) if order.numel() else None
        self._cursor = int(state["cursor"])


def _stack(
    volumes: Sequence[Mapping[str, Any]], key: str, dtype: torch.dtype | None, device: torch.device, pad: bool = False
) -> torch.Tensor:
    """
    The volumes' ``key`` [1, H, W, D] concatenated along depth as [sum(D), H, W] on ``device``. With ``pad``,
    volumes of different in-plane sizes are padded with 0 after their last row and column to the largest (the
    samplers never draw from the padding); without, they must all have one in-plane size.
    """
    parts = []
    for v in volumes:
        x = _plain(v[key])
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"the cached '{key}' must be [1, H, W, D], got {tuple(x.shape)}.")
        parts.append(x[0].permute(2, 0, 1))
    shapes = sorted({tuple(p.shape[1:]) for p in parts})
    if len(shapes) != 1 and not pad:
        raise ValueError(f"the cached '{key}' volumes differ in-plane: {shapes} (one image_size expected).")
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    parts = [torch.nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1])) for p in parts]
    out = torch.cat(parts)
    return out.to(device=device, dtype=dtype or out.dtype).contiguous()


class PairedSliceSampler(_DeviceSampler):
    """
    Pre-training batches drawn on the device: one axial slice of each of ``batch_size`` subjects (shuffled per pass,
    incomplete last batch dropped), the slice chosen as ``RandWeightedCropd(w_key=mask_key)`` chooses it
    (``centre_slice_weights``), the same slice of A and B, then ``augmentation`` (the config's flips, drawn per sample
    and shared by A and B). Yields ``{A: [B, 1, H, W], B: [B, 1, H, W]}`` float32 on ``device``.

    Args:
        volumes: the compact volumes (``device_volumes``): ``keys`` and ``mask_key``, each ``[1, H, W, D]``.
        keys: the two modality keys.
        batch_size: subjects (slices) per batch.
        device: the training device (the volumes are copied there in their cached dtype).
        mask_key: the foreground mask (only its slice weights are kept).
        augmentation: MONAI dictionary transforms (``BatchAugmentation``).
        seed: the seed of the sampler's generator (the process's rank is added in a multi-GPU run).
    """

    def __init__(
        self,
        volumes: Sequence[Mapping[str, Any]],
        keys: Sequence[str],
        batch_size: int,
        device: torch.device | str,
        mask_key: str = "foreground",
        augmentation: Sequence[Any] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(len(volumes), batch_size, True, torch.device(device), _rank_seed(seed))
        self.keys = list(keys)
        self.images = {k: _stack(volumes, k, None, self.device) for k in self.keys}
        depths = [int(_plain(v[self.keys[0]]).shape[-1]) for v in volumes]
        self.offsets = _offsets(depths, self.device)
        # slices RandWeightedCropd may draw (all but the last of each volume; see centre_slice_weights)
        self.valid = torch.tensor([max(d - 1, 1) for d in depths], dtype=torch.long, device=self.device)
        self.prefix = _prefix(torch.cat([centre_slice_weights(v[mask_key]) for v in volumes]).to(self.device))
        self.augmentation = BatchAugmentation(augmentation)

    def sample(self, subjects: torch.Tensor) -> dict[str, torch.Tensor]:
        offsets, valid = self.offsets[subjects], self.valid[subjects]
        r = torch.rand(subjects.shape[0], generator=self.generator, device=self.device, dtype=torch.float64)
        weighted, total = _weighted_slices(self.prefix, offsets, valid, r)
        index = torch.where(total > 0, weighted, _uniform(offsets, valid, r))
        batch = {k: self.images[k][index].unsqueeze(1).float() for k in self.keys}
        return self.augmentation(batch, self.generator)


class LabelSliceSampler(_DeviceSampler):
    """
    Fine-tuning batches drawn on the device: ``samples_per_subject`` axial windows of each of
    ``batch_size // samples_per_subject`` subjects (shuffled per pass, the last batch may be smaller, as the config's
    ``DataLoader``), each chosen as ``RandCropByPosNegLabeld(pos, neg, spatial_size + [1])`` chooses it: a centre
    voxel drawn uniformly among the subject's label voxels with probability ``pos / (pos + neg)`` (0 without label
    voxels, 1 without background voxels), else among its other voxels (a slice with probability proportional to its
    label or background voxel count, then a voxel of that slice), moved into the range where the window lies inside
    the volume (``monai.transforms.utils.correct_crop_centers``); then ``augmentation`` (the config's flips, rotation
    and intensity changes, drawn per sample). Yields ``{image_key, label_key}`` float32 ``[n, 1, h, w]`` on
    ``device``, subject by subject.

    The volumes may differ in-plane (a real brain cropped to its foreground, at least ``spatial_size`` after
    ``ResizeWithBackgroundd``): they are held padded to the largest, and only each volume's own voxels are drawn.

    Args:
        volumes: the compact volumes (``device_volumes``): ``image_key`` and ``label_key``, each ``[1, H, W, D]``.
        batch_size: windows per batch.
        samples_per_subject: windows per subject.
        device: the training device.
        pos: ``RandCropByPosNegLabeld``'s ``pos``.
        neg: its ``neg``.
        image_key: the image.
        label_key: the label (class indices; every class > 0 is positive).
        augmentation: MONAI dictionary transforms (``BatchAugmentation``).
        seed: the seed of the sampler's generator (the process's rank is added in a multi-GPU run).
        spatial_size: the in-plane window ``(h, w)`` (``image_size``); None: whole slices (every volume one size).

    Raises:
        ValueError: ``pos`` and ``neg`` not both >= 0 with a positive sum; a volume smaller in-plane than
            ``spatial_size`` (named by its position in ``volumes``).
    """

    def __init__(
        self,
        volumes: Sequence[Mapping[str, Any]],
        batch_size: int,
        samples_per_subject: int,
        device: torch.device | str,
        pos: float = 1.0,
        neg: float = 1.0,
        image_key: str = "image",
        label_key: str = "label",
        augmentation: Sequence[Any] = (),
        seed: int = 0,
        spatial_size: Sequence[int] | None = None,
    ) -> None:
        if float(pos) < 0 or float(neg) < 0 or float(pos) + float(neg) <= 0:
            raise ValueError(f"crop_pos and crop_neg must be >= 0 and not both 0, got {pos} and {neg}.")
        self.samples_per_subject = max(1, int(samples_per_subject))
        super().__init__(
            len(volumes), max(1, int(batch_size) // self.samples_per_subject), False, torch.device(device),
            _rank_seed(seed),
        )
        extents = [tuple(int(n) for n in _plain(v[image_key]).shape[-3:-1]) for v in volumes]
        self.window = extents[0] if spatial_size is None else tuple(int(n) for n in spatial_size)[:2]
        for i, extent in enumerate(extents):
            if extent[0] < self.window[0] or extent[1] < self.window[1]:
                raise ValueError(
                    f"fine-tuning volume {i} is {extent} in-plane, smaller than the {self.window} window (image_size)."
                )
        self.keys = [image_key, label_key]
        self.images = {k: _stack(volumes, k, None, self.device, pad=spatial_size is not None) for k in self.keys}
        depths = [int(_plain(v[image_key]).shape[-1]) for v in volumes]
        self.offsets = _offsets(depths, self.device)
        self.depths = torch.tensor(depths, dtype=torch.long, device=self.device)
        # each slice's own in-plane extent (the rest is padding)
        self.extent = torch.tensor(extents, dtype=torch.long).repeat_interleave(torch.tensor(depths), 0).to(self.device)
        self.crop = any(extent != self.window for extent in extents)
        # the window's size and its row / column offsets, made once: no host-to-device copy per batch
        self.window_size = torch.tensor(self.window, dtype=torch.long, device=self.device)
        self.window_rows = torch.arange(self.window[0], device=self.device).view(1, -1, 1)
        self.window_cols = torch.arange(self.window[1], device=self.device).view(1, 1, -1)
        positive = (self.images[label_key] > 0).flatten(1).sum(1)
        self.pos_prefix, self.neg_prefix = _prefix(positive), _prefix(self.extent.prod(1) - positive)
        self.pos_ratio = float(pos) / (float(pos) + float(neg))
        self.augmentation = BatchAugmentation(augmentation)

    def sample(self, subjects: torch.Tensor) -> dict[str, torch.Tensor]:
        subjects = subjects.repeat_interleave(self.samples_per_subject)
        offsets, depths = self.offsets[subjects], self.depths[subjects]
        n = subjects.shape[0]
        u, r, v = torch.rand(3, n, generator=self.generator, device=self.device, dtype=torch.float64)
        pos_index, pos_total = _weighted_slices(self.pos_prefix, offsets, depths, r)
        neg_index, neg_total = _weighted_slices(self.neg_prefix, offsets, depths, r)
        ratio = torch.where(pos_total == 0, 0.0, torch.where(neg_total == 0, 1.0, self.pos_ratio))
        positive = u < ratio
        index = torch.where(positive, pos_index, neg_index)
        if not self.crop:
            batch = {k: self.images[k][index].unsqueeze(1).float() for k in self.keys}
        else:
            batch = self._windows(index, positive, v)
        return self.augmentation(batch, self.generator)

    def _windows(self, index: torch.Tensor, positive: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The windows of slices ``index`` centred on a voxel drawn with uniform ``v`` among the slice's label
        (``positive``) or other voxels, the centre moved as ``correct_crop_centers`` moves it."""
        label = self.images[self.keys[1]][index]
        height, width = label.shape[-2:]
        extent = self.extent[index]
        rows = torch.arange(height, device=self.device).view(1, -1, 1)
        cols = torch.arange(width, device=self.device).view(1, 1, -1)
        inside = (rows < extent[:, 0, None, None]) & (cols < extent[:, 1, None, None])
        candidates = torch.where(positive.view(-1, 1, 1), label > 0, (label == 0) & inside).flatten(1)
        cumulative = candidates.cumsum(1)
        count = cumulative[:, -1:]
        k = torch.minimum((v.view(-1, 1) * count).long(), (count - 1).clamp(min=0)) + 1
        flat = torch.searchsorted(cumulative, k).clamp(max=height * width - 1).squeeze(1)
        centre = torch.stack([flat // width, flat % width], 1)
        low = self.window_size // 2
        start = torch.minimum(torch.maximum(centre, low), extent - self.window_size + low) - low
        ys = start[:, 0, None, None] + self.window_rows
        xs = start[:, 1, None, None] + self.window_cols
        slices = index.view(-1, 1, 1)
        return {k: self.images[k][slices, ys, xs].unsqueeze(1).float() for k in self.keys}


def _rank_seed(seed: int) -> int:
    """``seed`` plus the process's rank: each rank of a multi-GPU run draws its own flips and slices."""
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    return int(seed) + rank


class _NoSamplerState:
    """The checkpoint entry of the per-sample loader path: nothing to save (its randomness is MONAI's)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def sampler_state(sampler: _DeviceSampler | None) -> Any:
    """The object a checkpoint saves and loads as ``sampler``: the device sampler, or an empty state without one."""
    return _NoSamplerState() if sampler is None else sampler
