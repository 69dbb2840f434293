# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Checks and input records of segmentation inference (``configs/inference.yaml``): the fine-tuned ``model.pt``,
the output label values and the volumes to segment."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import (
    Activationsd,
    KeepLargestConnectedComponentd,
    RemoveSmallObjectsd,
    Transform,
)
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_dst_type
from torch import nn

from .data import file_stem, read_json, read_torch_file
from .records import SEGMENTATION_KIND, ModelSource, read_record, write_output_record
from .transforms import ChannelArgmaxd, ForegroundMaskd, ForegroundOnlyd

__all__ = [
    "MASK_POSTFIX",
    "OUTSIDE_LOGIT",
    "ForegroundSliceInferer",
    "check_label_names",
    "check_model_file",
    "mask_paths",
    "model_source",
    "output_label_values",
    "postprocessing_record",
    "segmentation_postprocessing",
    "slice_inferer",
    "write_inference_record",
]

#: ``SaveImaged``'s ``output_postfix``: ``<input name>_seg.nii.gz``
MASK_POSTFIX = "seg"

#: ``SaveImaged`` writes the masks as uint8
_MAX_LABEL_VALUE = 255


def check_model_file(path: str | os.PathLike, network: nn.Module | None = None) -> str:
    """
    Check the fine-tuned segmentation weights (a state_dict written by ``configs/train.yaml``, or a dict holding one
    under ``"model"``) before anything is read or written, and that they fit ``network`` (strict) when given.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read, or its tensors do not fit ``network``.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: fine-tune first (configs/train.yaml).")
    if network is None:
        return path
    content = read_torch_file(path, "a model state_dict")
    state = content.get("model", content) if isinstance(content, Mapping) else content
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: not a model state_dict (got {type(content).__name__}).")  # noqa: TRY004 (a data error)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()
        raise ValueError(
            f"{path} does not fit network_def ({'; '.join(line.strip() for line in detail[1:4])} ...). Pass the "
            "--features and --num_classes of the fine-tuned network (with a pre-trained generator, its features)."
        ) from None
    return path


def model_source(model_file: str | os.PathLike) -> ModelSource:
    """
    The record of a segmentation ``model.pt`` as the source of a consumer's settings: every id it holds must agree
    with an explicit value. A 0.2.0 file without a record gives an empty source (a warning; the configs' values),
    and so does a missing file: the Model Zoo's ``verify_net_in_out`` builds ``network_def`` without weights (a
    workflow's ``initialize`` requires the file first, ``check_model_file``).

    Raises:
        ValueError: see ``bundle.records.read_record``.
    """
    path = os.path.abspath(os.fspath(model_file))
    return ModelSource(path, read_record(path, SEGMENTATION_KIND) if os.path.isfile(path) else None)


def check_label_names(source: ModelSource, metadata_file: str | os.PathLike) -> None:
    """
    Check that ``configs/metadata.json``'s output ``channel_def`` (MONAI Label's label names) says what the model's
    record says.

    Raises:
        ValueError: naming both, when they differ.
    """
    if source.record is None:
        return
    names = dict((source.record.get("labels") or {}).get("names") or {})
    outputs = read_json(metadata_file).get("network_data_format", {}).get("outputs", {})
    channel_def = dict(next(iter(outputs.values()), {}).get("channel_def") or {})
    if names and names != channel_def:
        raise ValueError(
            f"{source.name} names the classes {names} but {metadata_file} declares channel_def {channel_def} "
            "(MONAI Label shows those names): make them agree."
        )


def output_label_values(values: Sequence[int] | None, num_classes: int) -> list[int]:
    """
    The value written for each class index ``0 .. num_classes - 1``: ``values`` (e.g. ``[0, 4]``), or the class
    indices themselves when ``values`` is ``None``.

    Raises:
        ValueError: ``num_classes`` below 2, or ``values`` not ``num_classes`` integers in ``[0, 255]`` (the masks
            are written as uint8).
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    n = int(num_classes)
    if values is None:
        return list(range(n))
    if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence):
        raise ValueError(  # noqa: TRY004 (a settings error, reported by check_or_exit)
            f"output_label_values must be a list of {n} integers (one per class), got {values!r}."
        )
    if len(values) != n:
        raise ValueError(
            f"output_label_values {list(values)} has {len(values)} value(s) but num_classes is {n}: give one value "
            f"per class index 0..{n - 1}, e.g. {list(range(n))}."
        )
    out = []
    for v in values:
        if isinstance(v, bool) or not float(v).is_integer() or not 0 <= float(v) <= _MAX_LABEL_VALUE:
            raise ValueError(f"output_label_values must be integers in [0, {_MAX_LABEL_VALUE}], got {list(values)}.")
        out.append(int(v))
    return out


#: the logit of every foreground class where ``ForegroundSliceInferer`` skipped the network (class 0 has logit 0): a
#: softmax of 1.0 for the background, finite in float16 and bfloat16
OUTSIDE_LOGIT = -1.0e4


class ForegroundSliceInferer(SliceInferer):
    """
    MONAI's ``SliceInferer`` run only over the bounding box of the input's foreground (nnU-Net's crop to the non-zero
    region): the box of the voxels that differ from ``background`` in any channel (``ForegroundMaskd``'s rule, the one
    ``ForegroundOnlyd`` applies after it), united over the batch. Outside the box the output is the background class
    (logit 0 for class 0, ``OUTSIDE_LOGIT`` for the others), which ``ForegroundOnlyd`` would set there anyway, so the
    masks outside the box are the same; inside it the windows start at the box's corner. In-plane the box is at least
    one window wide (widened around the foreground, within the volume), so a slice no larger than a window is run as
    the plain inferer runs it; slices before the first and after the last one with foreground are not run at all.

    Args:
        background: the input's background value after its intensity rule (``bundle.preprocessing.backgrounds``).
        kwargs: ``SliceInferer``'s (``roi_size``, ``spatial_dim``, ``sw_batch_size``, ``overlap``, ``mode``, ``cval``).
    """

    def __init__(self, background: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.foreground = ForegroundMaskd(keys="image", background=float(background), dtype=torch.bool)
        self.crop = True  # False: every window, as the plain SliceInferer (scripts/benchmark_speed.py compares them)

    def foreground_box(self, inputs: torch.Tensor) -> tuple[slice, ...] | None:
        """
        The slices of the foreground's bounding box in the spatial dimensions of ``inputs`` [B, C, ...]; in-plane at
        least ``roi_size`` (widened around the box, within the volume), so that no window is padded where the plain
        inferer's would not be. None when there is no foreground.
        """
        mask = torch.stack([self.foreground({"image": x})["foreground"][0] for x in inputs]).any(dim=0)
        if not bool(mask.any()):
            return None
        starts, stops = generate_spatial_bounding_box(mask[None])
        in_plane = iter(self.orig_roi_size)  # roi_size becomes 3-D once SliceInferer has run
        box = []
        for dim, (start, stop, size) in enumerate(zip(starts, stops, mask.shape)):
            if dim != self.spatial_dim:
                width = max(stop - start, min(int(next(in_plane)), size))
                start = min(max(0, start - (width - (stop - start)) // 2), size - width)
                stop = start + width
            box.append(slice(int(start), int(stop)))
        return tuple(box)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        box = self.foreground_box(inputs) if self.crop else None
        if box is None or all(b.stop - b.start == n for b, n in zip(box, inputs.shape[2:])):
            return super().__call__(inputs, network, *args, **kwargs)  # off, blank (refused before) or no crop
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        out = super().__call__(plain[(slice(None), slice(None), *box)], network, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"ForegroundSliceInferer needs a network with one tensor output, got {type(out).__name__}.")
        full = torch.full((*out.shape[:2], *inputs.shape[2:]), OUTSIDE_LOGIT, dtype=out.dtype, device=out.device)
        full[:, 0] = 0.0
        full[(slice(None), slice(None), *box)] = out
        return convert_to_dst_type(full, inputs, dtype=full.dtype)[0]


def slice_inferer(
    image_size: Sequence[int],
    sw_batch_size: int = 32,
    background: float = 0.0,
    mode: str = "constant",
    crop_to_foreground: bool = False,
) -> SliceInferer:
    """
    The bundle's 2-D sliding window over every axial slice (the last axis) of a 3-D volume: MONAI ``SliceInferer``
    with windows of ``image_size``, overlap 0.25, and slices smaller than a window padded with the input's
    ``background`` (the value of empty space after its intensity rule). With ``crop_to_foreground`` (segmentation
    with ``foreground_only``) only over the bounding box of the input's foreground (``ForegroundSliceInferer``).
    """
    options = {
        "roi_size": list(image_size),
        "spatial_dim": 2,
        "sw_batch_size": int(sw_batch_size),
        "overlap": 0.25,
        "mode": mode,
        "cval": float(background),
        "progress": False,
    }
    if crop_to_foreground:
        return ForegroundSliceInferer(background=float(background), **options)
    return SliceInferer(**options)


def segmentation_postprocessing(
    num_classes: int,
    background: float = 0.0,
    foreground_only: bool = True,
    keep_largest: bool = False,
    min_object_size: int = 0,
    pred_key: str = "pred",
    image_key: str = "image",
) -> list[Transform]:
    """
    The bundle's decision from network outputs to a class-index mask, written once for validation and evaluation
    (``configs/train.yaml``'s ``validate#postprocessing``, which ``configs/evaluate.yaml`` keeps) and inference
    (``configs/inference.yaml``): softmax; with ``foreground_only``, the background class outside the input's
    foreground (``bundle.transforms.ForegroundOnlyd``, nnU-Net's crop to the non-zero region); argmax
    (``bundle.transforms.ChannelArgmaxd``); then
    optionally MONAI's ``KeepLargestConnectedComponentd`` (the largest component of each foreground class) and
    ``RemoveSmallObjectsd`` (foreground components of fewer than ``min_object_size`` voxels become background). It works in
    the network's space: consumers add their own transforms after it (one-hot for metrics, ``Invertd`` and writers).

    Args:
        num_classes: classes, background included.
        background: the input's background value after its intensity rule (``bundle.preprocessing.backgrounds``).
        foreground_only: segment only inside the input's foreground.
        keep_largest: keep only the largest connected component of each foreground class.
        min_object_size: remove foreground components of fewer voxels (connectivity 1; 0: off).

    Raises:
        ValueError: ``min_object_size`` negative or not an integer.
    """
    if isinstance(min_object_size, bool) or int(min_object_size) != min_object_size or min_object_size < 0:
        raise ValueError(f"min_object_size must be an integer >= 0 (voxels; 0: off), got {min_object_size!r}.")
    chain: list[Transform] = [Activationsd(keys=pred_key, softmax=True)]
    if foreground_only:
        chain.append(ForegroundOnlyd(keys=pred_key, image_key=image_key, background=float(background)))
    chain.append(ChannelArgmaxd(keys=pred_key))  # MONAI's AsDiscreted(argmax=True), faster on a CPU
    if keep_largest:
        chain.append(
            KeepLargestConnectedComponentd(keys=pred_key, applied_labels=list(range(1, int(num_classes))), is_onehot=False)
        )
    if min_object_size > 1:
        # independent_channels=False: the components of the foreground (all classes together), classes kept;
        # min_size - 1: scikit-image 0.26 (pinned) removes the components of at most min_size voxels
        chain.append(RemoveSmallObjectsd(keys=pred_key, min_size=int(min_object_size) - 1, independent_channels=False))
    return chain


def postprocessing_record(foreground_only: bool, keep_largest: bool, min_object_size: int) -> dict[str, Any]:
    """The post-processing switches as recorded in a run's outputs (``run_record.json``, ``metrics_summary.json``)."""
    return {
        "foreground_only": bool(foreground_only),
        "keep_largest": bool(keep_largest),
        "min_object_size": int(min_object_size),
    }


def mask_paths(
    records: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, key: str = "image", postfix: str = MASK_POSTFIX
) -> list[str]:
    """The masks inference writes for ``records`` (``SaveImaged`` with ``separate_folder=False``); with another
    ``postfix`` (e.g. ``synthetic_t2``) the volumes translation writes."""
    return [os.path.join(os.fspath(output_dir), f"{file_stem(str(r[key]))}_{postfix}.nii.gz") for r in records]


def write_inference_record(
    output_dir: str | os.PathLike, model_file: str | os.PathLike, settings: Mapping[str, Any], records: Sequence[Any]
) -> str:
    """``output_dir/run_record.json`` after a successful inference: the model file and its SHA-256, the settings,
    the inputs' fingerprint and the masks written (``bundle.records.write_output_record``)."""
    return write_output_record(
        output_dir, "inference", settings, [model_file], records, mask_paths(records, output_dir)
    )
