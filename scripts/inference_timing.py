# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The inference part of ``scripts/benchmark_speed.py``: ``configs/inference.yaml`` end to end on one volume against the
bare forward of its evaluator, interleaved, with every transform of the config timed alone and the voxel check that
runs before the workflow.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from bundle.inference import ForegroundSliceInferer
from scripts.speed_numbers import count_flops, peak_memory, reset_peak_memory, summarise
from scripts.workflow_harness import bundle_workflow, device_batches, sync


def bare_forward(evaluator: Any, batch: Any) -> torch.Tensor:
    """
    The forward of a MONAI ``SupervisedEvaluator`` iteration on ``batch``, as its ``_iteration`` runs it (its
    ``prepare_batch``, ``mode``, amp and ``inferer`` over its ``network``), without the post-processing and handlers
    that ``_iteration`` triggers (``MODEL_COMPLETED``).
    """
    inputs = evaluator.prepare_batch(batch, evaluator.state.device, evaluator.non_blocking, **evaluator.to_kwargs)[0]
    autocast = torch.autocast("cuda", **evaluator.amp_kwargs) if evaluator.amp else nullcontext()
    with evaluator.mode(evaluator.network), autocast:
        return evaluator.inferer(inputs, evaluator.network)


def _write_volume(path: str, shape: Sequence[int]) -> str:
    """One synthetic head (``bundle.demo_phantom``, modality ``t1``) of ``shape`` as NIfTI at ``path``."""
    import nibabel as nib
    import numpy as np

    from bundle.demo_phantom import synthesize_subject

    image = synthesize_subject(0, 0, tuple(int(s) for s in shape)).images["t1"]
    nib.save(nib.Nifti1Image(image, np.eye(4)), path)
    return path


def measure_inference(
    overrides: Mapping[str, Any],
    folder: str,
    shape: Sequence[int],
    rounds: int,
    amp: bool,
    volume_path: str | None = None,
) -> dict[str, Any]:
    """
    Time ``configs/inference.yaml`` end to end on one synthetic volume against the bare forward, interleaved: per
    round a fresh workflow (initialised untimed) is run, then its evaluator's forward (``bare_forward``) on the
    workflow's preprocessed volume already on the device. The warm-up is one bare forward of the whole volume under
    ``FlopCounterMode`` (with ``foreground_only`` the inferer runs only the foreground's box, so slices differ).
    ``preprocess_s_per_volume`` is the median time of the workflow's loader alone (reading the volume, the
    preprocessing chain, the copy to the device): the part of the workflow's time outside the network that comes
    before it. Each round also times the bare forward over every window of every slice (the inferer's ``crop``
    off) when the configured inferer crops to the foreground (``bundle.inference.ForegroundSliceInferer``):
    ``crop_speedup`` is the median of the per-round ratios plain / cropped.

    Parameters
    ----------
    overrides
        config overrides (``image_size``, ``amp``, ``device``, ...); data, model and output folders are set here.
    folder
        an empty folder for the volume, ``models/model.pt`` and the masks.
    shape
        the volume's shape.
    rounds
        A/B rounds.
    amp
        the ``amp`` override (which nominal peak applies).
    volume_path
        a volume to segment instead of the synthetic one (e.g. a BraTS FLAIR; ``shape`` is then unused).
    """
    image = volume_path or _write_volume(os.path.join(folder, "volume_t1.nii.gz"), shape)
    models = os.path.join(folder, "models")
    os.makedirs(models, exist_ok=True)
    common = {**overrides, "ckpt_dir": models, "dataset#data": [{"image": image}]}
    # a freshly initialised network as the model file (no record: the config's settings)
    network = bundle_workflow(
        "inference.yaml", {**common, "output_dir": os.path.join(folder, "init")}, initialize=False
    )
    torch.save(network.parser.get_parsed_content("network").state_dict(), os.path.join(models, "model.pt"))
    workflow_s: list[float] = []
    bare_s: list[float] = []
    plain_s: list[float] = []
    preprocess_s: list[float] = []
    stage_s: dict[str, list[float]] = {}
    check_s: list[float] = []
    flops = 0
    for r in range(max(1, int(rounds))):
        wf = bundle_workflow("inference.yaml", {**common, "output_dir": os.path.join(folder, f"masks_{r}")})
        evaluator = wf.parser.get_parsed_content("evaluator")
        device = torch.device(evaluator.state.device)
        start = time.perf_counter()
        batch = device_batches(wf.parser.get_parsed_content("dataloader"), 1, device)[0]
        sync(device)
        preprocess_s.append(time.perf_counter() - start)
        depth = int(batch["image"].shape[-1])
        if r == 0:
            reset_peak_memory(device)
            flops = count_flops(lambda e=evaluator: bare_forward(e, batch))
        sync(device)
        start = time.perf_counter()
        wf.run()
        sync(device)
        workflow_s.append(time.perf_counter() - start)
        wf.finalize()
        start = time.perf_counter()
        output = bare_forward(evaluator, batch)
        sync(device)
        bare_s.append(time.perf_counter() - start)
        for name, seconds in inference_stages(wf, image, batch, output, device).items():
            stage_s.setdefault(name, []).append(seconds)
        check_s.append(voxel_check_seconds(image, os.path.join(folder, f"check_{r}.nii.gz")))
        if isinstance(evaluator.inferer, ForegroundSliceInferer):
            evaluator.inferer.crop = False  # the same inferer over every window
            start = time.perf_counter()
            bare_forward(evaluator, batch)
            sync(device)
            plain_s.append(time.perf_counter() - start)
            evaluator.inferer.crop = True
    out = summarise(workflow_s, bare_s, depth, flops, device, amp, "volume")
    out["preprocess_s_per_volume"] = round(statistics.median(preprocess_s), 5)
    stages = {name: statistics.median(seconds) for name, seconds in stage_s.items()}
    out["stage_s_per_volume"] = {name: round(seconds, 5) for name, seconds in stages.items()}
    out["voxel_check_s_per_volume"] = round(statistics.median(check_s), 5)
    # what the workflow spends outside its transforms and the forward: engine, handlers, collation, the record
    outside = statistics.median(workflow_s) - statistics.median(bare_s) - sum(stages.values())
    out["outside_stages_s_per_volume"] = round(outside, 5)
    if plain_s:
        out["plain_bare_s_per_volume"] = round(statistics.median(plain_s), 5)
        out["crop_speedup"] = round(statistics.median(p / b for p, b in zip(plain_s, bare_s)), 4)
    shape = [int(s) for s in batch["image"].shape[-3:]] if volume_path else [int(s) for s in shape]
    return {**out, "volume_shape": shape, **peak_memory(device)}


def voxel_check_seconds(image: str, copy_path: str) -> float:
    """
    Seconds of the check of an input's voxels that ``configs/inference.yaml`` runs before the workflow
    (``validate_voxels``, default True: ``bundle.validation.validate_records``) on a fresh copy of ``image`` at
    ``copy_path`` (the check's results are cached per file within a process).
    """
    import shutil

    from bundle.validation import validate_records

    shutil.copyfile(image, copy_path)
    start = time.perf_counter()
    validate_records([{"image": copy_path}], ["image"], None, None, True, False, 1, "inference inputs")
    return time.perf_counter() - start


def inference_stages(
    workflow: Any, image: str, batch: Mapping[str, Any], output: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """
    Seconds of each transform of ``configs/inference.yaml`` on one volume, each timed alone between device
    synchronisations: its ``preprocessing`` from the file ``image``, then its ``postprocessing`` (``Invertd`` and
    ``SaveImaged`` included) on what the evaluator's engine hands it, the decollated ``batch`` with the bare
    forward's ``output`` as ``pred`` (the forward is timed by the caller). ``SaveImaged`` rewrites the mask that
    the workflow's run has just written (the same mask). A transform that occurs twice is named ``<name> (2)``.

    Returns
    -------
    dict
        transform name -> seconds, in the order they run.
    """
    from monai.data import decollate_batch

    def run(transforms: Sequence[Any], data: Any, seconds: dict[str, float]) -> Any:
        for transform in transforms:
            name = type(transform).__name__
            name = name if name not in seconds else f"{name} ({sum(k.split(' ')[0] == name for k in seconds) + 1})"
            sync(device)
            start = time.perf_counter()
            data = transform(data)
            sync(device)
            seconds[name] = time.perf_counter() - start
        return data

    seconds: dict[str, float] = {}
    run(workflow.parser.get_parsed_content("preprocessing").transforms, {"image": image}, seconds)
    item = decollate_batch({**batch, "pred": output})[0]
    run(workflow.parser.get_parsed_content("postprocessing").transforms, item, seconds)
    return seconds
