# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Tiny fake public-dataset folders (BraTS 2018-2021, BraTS 2023, MSD Task01_BrainTumour, HECKTOR, a custom naming)
for the tests: the file names and folder structure of the real datasets, small deterministic random volumes.

Every ``make_*`` function writes under ``root`` (created if needed) and returns ``root`` as a string. The volumes
only depend on the layout and the subject index (seeded ``numpy`` generators).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np

__all__ = ["make_brats2021", "make_brats2023", "make_hecktor", "make_msd", "make_pattern"]

#: BraTS volumes are stored LPS (negative x and y axes)
BRATS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])

_BRATS2021_SUFFIXES = ("t1", "t1ce", "t2", "flair", "seg")
_BRATS2023_SUFFIXES = ("t1n", "t1c", "t2w", "t2f", "seg")


def _rng(layout: int, index: int) -> np.random.Generator:
    return np.random.default_rng([layout, index])


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Broadcastable voxel coordinates, normalised to [-1, 1] along every axis."""
    return [
        np.linspace(-1.0, 1.0, n).reshape([-1 if a == i else 1 for a in range(len(shape))]) for i, n in enumerate(shape)
    ]


def _head(shape: Sequence[int]) -> np.ndarray:
    x, y, z = _grid(shape)
    return (x / 0.85) ** 2 + (y / 0.8) ** 2 + (z / 0.95) ** 2 <= 1.0


def _brain_label(rng: np.random.Generator, shape: Sequence[int], values: tuple[int, int, int]) -> np.ndarray:
    """A lesion inside the head: ``values`` = (necrosis, edema, enhancing) as nested shells (core, ring, rim)."""
    x, y, z = _grid(shape)
    cx, cy = rng.uniform(-0.2, 0.2, size=2)
    d = np.sqrt(((x - cx) / 0.35) ** 2 + ((y - cy) / 0.35) ** 2 + (z / 0.6) ** 2)
    necrosis, edema, enhancing = values
    label = np.zeros(tuple(shape), dtype=np.uint8)
    label[d <= 1.0] = edema
    label[d <= 0.6] = enhancing
    label[d <= 0.3] = necrosis
    return label


def _mr(rng: np.random.Generator, head: np.ndarray, label: np.ndarray, dtype: type) -> np.ndarray:
    """An MR-like volume: exactly 0 outside the head, 100-1000 inside, brighter in the lesion."""
    image = rng.uniform(100.0, 700.0, size=head.shape) + 150.0 * (label > 0)
    return np.where(head, np.clip(image, 100.0, 1000.0), 0.0).astype(dtype)


def _save(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _brats(
    root: str | os.PathLike,
    n_subjects: int,
    shape: Sequence[int],
    missing: Mapping[int, Sequence[str]] | None,
    suffixes: Sequence[str],
    values: tuple[int, int, int],
    code: int,
    folder_and_name,
) -> str:
    root = os.fspath(root)
    missing = missing or {}
    for i in range(n_subjects):
        rng = _rng(code, i)
        head = _head(shape)
        label = _brain_label(rng, shape, values) * head
        folder, name = folder_and_name(i)
        for suffix in suffixes:
            if suffix in missing.get(i, ()):
                continue
            array = label.astype(np.uint8) if suffix == "seg" else _mr(rng, head, label, np.int16)
            _save(array, BRATS_AFFINE, os.path.join(root, folder, f"{name}{suffix}.nii.gz"))
    return root


def make_brats2021(
    root: str | os.PathLike,
    n_subjects: int = 6,
    shape: Sequence[int] = (40, 40, 12),
    nested: bool = True,
    missing: Mapping[int, Sequence[str]] | None = None,
) -> str:
    """
    BraTS 2018-2021 style: ``[HGG|LGG/]BraTS20_Training_NNN/BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii.gz``
    (int16 images, 0 outside the head; labels 0, 1 NCR/NET, 2 edema, 4 enhancing; LPS affine).

    Args:
        nested: put the subjects under ``HGG/`` (2 of every 3) and ``LGG/`` (BraTS 2018/2019 style).
        missing: ``{subject index: [suffixes not written]}``, e.g. ``{1: ["t2"], 3: ["seg"]}``.
    """

    def folder_and_name(i: int) -> tuple[str, str]:
        sid = f"BraTS20_Training_{i + 1:03d}"
        folder = (("LGG" if i % 3 == 2 else "HGG") + "/" + sid) if nested else sid
        return folder, sid + "_"

    return _brats(root, n_subjects, shape, missing, _BRATS2021_SUFFIXES, (1, 2, 4), 2021, folder_and_name)


def make_brats2023(
    root: str | os.PathLike,
    n_subjects: int = 6,
    shape: Sequence[int] = (40, 40, 12),
    missing: Mapping[int, Sequence[str]] | None = None,
) -> str:
    """
    BraTS 2023 style: ``BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (labels 0, 1 NETC,
    2 SNFH, 3 ET); ``missing`` as for :py:func:`make_brats2021` with these suffixes.
    """

    def folder_and_name(i: int) -> tuple[str, str]:
        sid = f"BraTS-GLI-{i:05d}-000"
        return sid, sid + "-"

    return _brats(root, n_subjects, shape, missing, _BRATS2023_SUFFIXES, (1, 2, 3), 2023, folder_and_name)


def make_msd(root: str | os.PathLike, n_subjects: int = 6, shape: Sequence[int] = (40, 40, 12)) -> str:
    """
    MSD Task01_BrainTumour style: ``imagesTr/BRATS_NNN.nii.gz`` float32 (X, Y, Z, 4) with the channels FLAIR, T1w,
    T1gd, T2w; ``labelsTr/BRATS_NNN.nii.gz`` uint8 (1 edema, 2 non-enhancing tumour, 3 enhancing); ``dataset.json``;
    a macOS junk file ``imagesTr/._BRATS_001.nii.gz`` and an unlabeled ``imagesTs/BRATS_900.nii.gz``.
    """
    root = os.fspath(root)
    affine = np.eye(4)
    head = _head(shape)
    training = []
    for i in range(n_subjects):
        rng = _rng(1, i)
        sid = f"BRATS_{i + 1:03d}"
        label = _brain_label(rng, shape, (2, 1, 3)) * head
        image = np.stack([_mr(rng, head, label, np.float32) for _ in range(4)], axis=-1)
        _save(image, affine, os.path.join(root, "imagesTr", f"{sid}.nii.gz"))
        _save(label.astype(np.uint8), affine, os.path.join(root, "labelsTr", f"{sid}.nii.gz"))
        training.append({"image": f"./imagesTr/{sid}.nii.gz", "label": f"./labelsTr/{sid}.nii.gz"})
    test_image = np.stack([_mr(_rng(1, 900), head, np.zeros(tuple(shape)), np.float32) for _ in range(4)], axis=-1)
    _save(test_image, affine, os.path.join(root, "imagesTs", "BRATS_900.nii.gz"))
    with open(os.path.join(root, "imagesTr", "._BRATS_001.nii.gz"), "wb") as f:
        f.write(b"\x00\x05\x16\x07junk")
    dataset = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n_subjects,
        "numTest": 1,
        "training": training,
        "test": ["./imagesTs/BRATS_900.nii.gz"],
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(dataset, f, indent=4)
    return root


def make_hecktor(
    root: str | os.PathLike,
    n_subjects: int = 6,
    ct_shape: Sequence[int] = (48, 48, 16),
    pet_shape: Sequence[int] = (24, 24, 8),
) -> str:
    """
    HECKTOR style: ``imagesTr/CHUM-NNN__CT.nii.gz`` (int16 HU: air -1000 outside a body cylinder, soft tissue
    0-60, bone 700), ``imagesTr/CHUM-NNN__PT.nii.gz`` (float32 SUV: 0 outside, 0.5-2 in the body, 8-15 in the
    tumours) on a coarser grid covering the same physical extent from the same origin (CT 1x1x3 mm, PET 2x2x6 mm
    for the default shapes), and ``labelsTr/CHUM-NNN.nii.gz`` on the CT grid (1 GTVp, 2 GTVn).
    """
    root = os.fspath(root)
    ct_spacing = np.array([1.0, 1.0, 3.0])
    extent = ct_spacing * np.asarray(ct_shape)
    pet_spacing = extent / np.asarray(pet_shape)
    origin = -extent / 2.0
    ct_affine, pet_affine = np.diag([*ct_spacing, 1.0]), np.diag([*pet_spacing, 1.0])
    ct_affine[:3, 3] = pet_affine[:3, 3] = origin

    def world(shape: Sequence[int], spacing: np.ndarray) -> list[np.ndarray]:
        """Physical coordinates (mm) of the voxel centres, broadcastable."""
        return [
            (origin[a] + spacing[a] * np.arange(n)).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(shape)
        ]

    for i in range(n_subjects):
        rng = _rng(7, i)
        sid = f"CHUM-{i + 1:03d}"
        body_r = 0.4 * extent[0]
        primary = np.array([rng.uniform(-6, 6), rng.uniform(-8, -2), 0.0])
        node = np.array([rng.uniform(8, 12), rng.uniform(4, 8), rng.uniform(-6, 6)])

        def masks(shape: Sequence[int], spacing: np.ndarray) -> tuple[np.ndarray, ...]:
            x, y, z = world(shape, spacing)
            full = tuple(shape)
            body = np.broadcast_to(x**2 + y**2 <= body_r**2, full)
            gtvp = ((x - primary[0]) ** 2 + (y - primary[1]) ** 2) / 36.0 + ((z - primary[2]) / 9.0) ** 2 <= 1.0
            gtvn = ((x - node[0]) ** 2 + (y - node[1]) ** 2) / 9.0 + ((z - node[2]) / 6.0) ** 2 <= 1.0
            bone = np.broadcast_to(x**2 + (y - 0.6 * body_r) ** 2 <= 9.0, full)
            return body, gtvp & body, gtvn & body & ~gtvp, bone & body

        body, gtvp, gtvn, bone = masks(ct_shape, ct_spacing)
        ct = np.where(body, rng.uniform(0.0, 60.0, size=tuple(ct_shape)), -1000.0)
        ct[bone] = 700.0
        label = np.zeros(tuple(ct_shape), dtype=np.uint8)
        label[gtvp] = 1
        label[gtvn] = 2
        body_p, gtvp_p, gtvn_p, _ = masks(pet_shape, pet_spacing)
        pet = np.where(body_p, rng.uniform(0.5, 2.0, size=tuple(pet_shape)), 0.0)
        hot = gtvp_p | gtvn_p
        pet[hot] = rng.uniform(8.0, 15.0, size=int(hot.sum()))
        _save(ct.astype(np.int16), ct_affine, os.path.join(root, "imagesTr", f"{sid}__CT.nii.gz"))
        _save(pet.astype(np.float32), pet_affine, os.path.join(root, "imagesTr", f"{sid}__PT.nii.gz"))
        _save(label, ct_affine, os.path.join(root, "labelsTr", f"{sid}.nii.gz"))
    return root


def make_pattern(root: str | os.PathLike, n_subjects: int = 4, shape: Sequence[int] = (40, 40, 12)) -> str:
    """A custom naming: ``caseNN/caseNN_T1.nii.gz``, ``caseNN/caseNN_T2.nii.gz`` and ``labels/caseNN.nii.gz``."""
    root = os.fspath(root)
    affine = np.eye(4)
    head = _head(shape)
    for i in range(n_subjects):
        rng = _rng(99, i)
        sid = f"case{i:02d}"
        label = (_brain_label(rng, shape, (1, 1, 1)) * head).astype(np.uint8)
        for modality in ("T1", "T2"):
            _save(_mr(rng, head, label, np.float32), affine, os.path.join(root, sid, f"{sid}_{modality}.nii.gz"))
        _save(label, affine, os.path.join(root, "labels", f"{sid}.nii.gz"))
    return root
