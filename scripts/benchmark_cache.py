# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
RAM taken by the in-memory cache of the pre-training and fine-tuning datasets at the BraTS preset, measured
through the bundle configs themselves (``configs/pretrain.yaml`` / ``configs/train.yaml`` + ``configs/brats.yaml``).

    python scripts/benchmark_cache.py --subjects 10

Writes ``--subjects`` synthetic BraTS-2021-layout subjects of real size (240x240x155 int16, 1 mm, LPS, a
skull-stripped-brain-sized ellipsoid of 140x172x130 mm as foreground) into ``--work_dir`` (a temporary folder by
default, deleted afterwards), prepares the datalist with ``scripts/prepare_datalist.py``'s code, builds each
workflow's training ``CacheDataset`` in a fresh process and prints, per setting, the bytes the cache holds (the
tensors' sizes, exact) and the growth of that process's resident memory, per subject and per 100 subjects:

- ``compact`` (the bundle's default): cropped to the foreground, float16 images, uint8 masks/labels;
- ``float32`` (for comparison): no crop, float32, padded or cropped to 160x160 in-plane;
- ``as loaded`` (for comparison): whole 240x240x155 float32 volumes.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

import fire
import nibabel as nib
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bundle.datasets import prepare_datalist  # noqa: E402

#: BraTS volume shape and the semi-axes (voxels = mm) of the brain-sized foreground ellipsoid
SHAPE = (240, 240, 155)
BRAIN_SEMI_AXES = (70.0, 86.0, 65.0)
SETTINGS = {
    "compact": {},
    "float32": {"cache_dtype": "float32", "crop_foreground": False},
    "as loaded": {"cache_dtype": "float32", "crop_foreground": False, "image_size": 240},
}


def _rss_mb() -> float:
    """Current resident set size of this process (Linux ``/proc``), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_subjects(root: str, n: int, seed: int = 0) -> str:
    """``n`` BraTS-2021-layout subjects of real size under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in SHAPE)]
    centre = [(s - 1) / 2 for s in SHAPE]
    brain = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, BRAIN_SEMI_AXES)) <= 1.0
    lesion = sum(((g - c - 15) / 15.0) ** 2 for g, c in zip(grids, centre)) <= 1.0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for i in range(n):
        sid = f"BraTS2021_{i:05d}"
        folder = os.path.join(root, sid)
        os.makedirs(folder, exist_ok=True)
        for modality in ("t1", "t1ce", "t2", "flair"):
            image = np.where(brain, rng.integers(200, 1200, SHAPE), 0).astype(np.int16)
            nib.save(nib.Nifti1Image(image, affine), os.path.join(folder, f"{sid}_{modality}.nii.gz"))
        label = np.where(lesion & brain, 2, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, affine), os.path.join(folder, f"{sid}_seg.nii.gz"))
    return root


def _tensor_bytes(items: Iterable[Any]) -> int:
    total = 0
    for item in items:
        for value in (item or {}).values() if isinstance(item, dict) else []:
            if isinstance(value, torch.Tensor):
                total += value.element_size() * value.nelement()
    return total


def measure(config: str, dataset_dir: str, datalist: str, overrides: dict[str, Any]) -> dict[str, float]:
    """Build ``train#dataset`` of ``config`` + the BraTS preset; cache bytes and RSS growth, MiB."""
    from monai.bundle import ConfigWorkflow

    work = tempfile.mkdtemp(prefix="cache_bench_run_")
    try:
        wf = ConfigWorkflow(
            config_file=[os.path.join(ROOT, "configs", config), os.path.join(ROOT, "configs", "brats.yaml")],
            workflow_type=None,
            bundle_root=ROOT,
            dataset_dir=dataset_dir,
            data_list_file_path=datalist,
            ckpt_dir=os.path.join(work, "models"),
            output_dir=os.path.join(work, "out"),
            pretrained_ckpt="$None",
            label_fraction=1.0,
            validate_voxels=False,
            batch_size=2,  # the check wants batch_size subjects; the cache does not depend on it
            **overrides,
        )
        wf.initialize()
        gc.collect()
        before = _rss_mb()
        dataset = wf.parser.get_parsed_content("train#dataset")
        gc.collect()
        after = _rss_mb()
        n = len(dataset._cache)
        return {"subjects": n, "cache_mb": _tensor_bytes(dataset._cache) / 2**20, "rss_mb": after - before}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def benchmark(subjects: int = 10, work_dir: str | None = None, keep: bool = False) -> list[dict[str, Any]]:
    """Print the cache RAM per subject and per 100 subjects for each setting and workflow."""
    root = work_dir or tempfile.mkdtemp(prefix="cache_bench_")
    rows = []
    try:
        data = os.path.join(root, "BraTS2021")
        write_subjects(data, int(subjects))
        datalist = os.path.join(root, "datalist.json")
        prepare_datalist(data, datalist, test_fraction=0.0, val_fraction=0.0, overwrite=True)
        for config, what in (
            ("pretrain.yaml", "pre-training (flair + t2 + mask)"),
            ("train.yaml", "fine-tuning (flair + label)"),
        ):
            for name, overrides in SETTINGS.items():
                # a fresh process per measurement: memory freed by an earlier one would hide this one's growth
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    result = pool.apply(measure, (config, data, datalist, overrides))
                row = {"workflow": config, "setting": name, **result}
                n = row["subjects"]
                print(
                    f"{what}, {name}: cache {row['cache_mb'] / n:.1f} MiB/subject = {row['cache_mb'] / n * 100 / 1024:.2f}"
                    f" GiB per 100 subjects (RSS growth {row['rss_mb'] / n:.1f} MiB/subject over {n} subjects)",
                    flush=True,
                )
                rows.append(row)
    finally:
        if not keep and work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    fire.Fire(benchmark)
