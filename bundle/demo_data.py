# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Deterministic generator of a small synthetic multimodal (T1/T2) brain-MRI-like dataset.

The dataset is meant for smoke tests and demos of the Multi-ConDoS bundle when no real data is available.
Every subject is a random, co-registered pair of 3-D volumes (``t1`` and ``t2``) with a lesion segmentation
(``1``: lesion core, ``2``: edema), written as NIfTI files together with a MONAI/Decathlon-style datalist:

.. code-block:: text

    dataset_dir/
        datalist.json
        demo_000/demo_000_t1.nii.gz
        demo_000/demo_000_t2.nii.gz
        demo_000/demo_000_label.nii.gz
        ...

The paths in the datalist are relative to ``dataset_dir``; use e.g.
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=dataset_dir)`` to resolve them.

The last axis of every volume is the axial (slice) axis. The background (outside the head) is exactly ``0`` in
both modalities and every voxel inside the head is strictly positive, so that "non-zero" intensity
normalisation selects exactly the head.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["DEMO_LABELS", "DEMO_MODALITIES", "ensure_demo_dataset", "generate_demo_dataset"]

DEMO_MODALITIES: tuple[str, ...] = ("t1", "t2")
"""Names (and order) of the modalities of the demo dataset."""

DEMO_LABELS: dict[str, str] = {"0": "background", "1": "lesion core", "2": "edema"}
"""Label values of the demo segmentation maps."""

DEFAULT_DATALIST_NAME = "datalist.json"

# tissue classes of the internal tissue map
_BACKGROUND, _SKULL, _CSF, _GM, _WM, _CORE, _EDEMA = range(7)

# mean relative intensity of every tissue class (indexed by the constants above) for each modality
_CONTRAST: dict[str, tuple[float, ...]] = {
    #     bg   skull  csf   gm    wm    core  edema
    "t1": (0.0, 1.00, 0.15, 0.60, 0.90, 0.30, 0.50),
    "t2": (0.0, 0.30, 1.00, 0.70, 0.45, 0.95, 0.85),
}

_INTENSITY_SCALE = 1000.0
# size of the reference field of view: a lesion of a 64x64x32 volume has at least 300 voxels
_REFERENCE_VOXELS = 64 * 64 * 32
_REFERENCE_MIN_LESION_VOXELS = 300
_MIN_LESION_SLICES = 3
_MAX_LESION_ATTEMPTS = 50


def _subject_id(index: int) -> str:
    return f"demo_{index:03d}"


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def _validate_arguments(num_subjects: Any, num_test: Any, shape: Any, seed: Any) -> tuple[int, int, tuple[int, ...]]:
    num_subjects = _check_int("num_subjects", num_subjects)
    num_test = _check_int("num_test", num_test)
    _check_int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    if num_test < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}.")
    if num_subjects <= num_test:
        raise ValueError(f"num_subjects ({num_subjects}) must be greater than num_test ({num_test}).")
    if num_subjects - num_test < 4:
        raise ValueError(
            f"the training split must keep at least 4 subjects, got num_subjects={num_subjects} and "
            f"num_test={num_test} ({num_subjects - num_test} training subjects)."
        )
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise TypeError(f"shape must be a sequence of 3 integers, got {shape!r}.")
    if len(shape) != 3:
        raise ValueError(f"shape must have exactly 3 elements (spatial dims), got {len(shape)}: {tuple(shape)!r}.")
    spatial = tuple(_check_int("shape elements", s) for s in shape)
    if min(spatial) < 16:
        raise ValueError(f"every element of shape must be >= 16, got {spatial}.")
    return num_subjects, num_test, spatial


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Matrix (n_out, n_in) that smoothly interpolates n_in control points onto n_out samples (smoothstep weights)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    low = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    frac = pos - low
    frac = frac * frac * (3.0 - 2.0 * frac)
    rows = np.arange(n_out)
    mat = np.zeros((n_out, n_in))
    mat[rows, low] = 1.0 - frac
    mat[rows, low + 1] += frac
    return mat


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation (coarse gaussian grid, upsampled)."""
    coarse = rng.standard_normal(tuple(grid))
    mx, my, mz = (_interpolation_matrix(s, g) for s, g in zip(shape, grid))
    field = np.einsum("ia,jb,kc,abc->ijk", mx, my, mz, coarse, optimize=True)
    field -= field.mean()
    return field / max(float(field.std()), 1e-8)


def _ellipsoid_distance(coords: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoidal distance (1 on the surface) of every voxel, using broadcastable 1-D coordinates."""
    dist = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii))
    return np.sqrt(dist)


def _box_smooth(image: np.ndarray) -> np.ndarray:
    """Light separable [1/4, 1/2, 1/4] smoothing along every axis (mimics partial volume effects)."""
    out = image
    for axis in range(image.ndim):
        padded = np.concatenate([out.take([0], axis=axis), out, out.take([-1], axis=axis)], axis=axis)
        n = out.shape[axis]
        out = (
            0.25 * padded.take(np.arange(0, n), axis=axis)
            + 0.5 * padded.take(np.arange(1, n + 1), axis=axis)
            + 0.25 * padded.take(np.arange(2, n + 2), axis=axis)
        )
    return out


def _make_lesion(
    rng: np.random.Generator,
    coords: Sequence[np.ndarray],
    shape: tuple[int, ...],
    centre: np.ndarray,
    radii: np.ndarray,
    parenchyma: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Random irregular lesion inside the brain parenchyma; returns the (core, edema) masks."""
    n_vox = int(np.prod(shape))
    min_voxels = max(32, round(_REFERENCE_MIN_LESION_VOXELS * n_vox / _REFERENCE_VOXELS))
    min_core = max(12, min_voxels // 8)
    inplane = 0.5 * (shape[0] + shape[1])
    growth = 1.0
    for _ in range(_MAX_LESION_ATTEMPTS):
        # centre: random point of the inner part of the brain
        direction = rng.standard_normal(3)
        direction /= max(float(np.linalg.norm(direction)), 1e-8)
        offset = direction * 0.55 * rng.uniform(0.0, 1.0) ** (1.0 / 3.0)  # uniform in a ball
        lesion_centre = centre + offset * radii
        radius = rng.uniform(0.08, 0.20) * inplane * growth
        lesion_radii = radius * rng.uniform(0.8, 1.2, size=3)
        lesion_radii = np.maximum(lesion_radii, 1.5)
        core_fraction = rng.uniform(0.45, 0.65)
        dist = _ellipsoid_distance(coords, lesion_centre, lesion_radii)
        dist = dist + 0.25 * _smooth_noise(rng, shape, (6, 6, 4))
        core_dist = dist + 0.08 * _smooth_noise(rng, shape, (6, 6, 4))
        lesion = (dist <= 1.0) & parenchyma
        core = (core_dist <= core_fraction) & lesion
        edema = lesion & ~core
        slices = np.count_nonzero(lesion.any(axis=(0, 1)))
        if (
            np.count_nonzero(lesion) >= min_voxels
            and np.count_nonzero(core) >= min_core
            and np.count_nonzero(edema) >= min_core
            and slices >= _MIN_LESION_SLICES
        ):
            return core, edema
        growth *= 1.1  # make the next attempt larger (only matters for very small fields of view)
    raise RuntimeError(f"could not place a lesion in a volume of shape {shape}.")


def _polynomial_bias(rng: np.random.Generator, coords: Sequence[np.ndarray], head: np.ndarray) -> np.ndarray:
    """Smooth multiplicative bias field (2nd order polynomial), at most +-15% inside the head."""
    u = [(c - (c.size - 1) / 2.0) / max((c.size - 1) / 2.0, 1.0) for c in coords]
    terms = [u[0], u[1], u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2, u[0] * u[1], u[0] * u[2], u[1] * u[2]]
    coef = rng.standard_normal(len(terms))
    field = sum(c * t for c, t in zip(coef, terms)) * np.ones(head.shape)
    field -= field[head].mean()
    field /= max(float(np.abs(field[head]).max()), 1e-8)
    return 1.0 + rng.uniform(0.08, 0.15) * field


def _synthesize_subject(seed: int, index: int, shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """
    Generate one subject; the result only depends on ``(seed, index, shape)``.

    Returns:
        images: mapping modality -> float32 array (scaled to ~[0, 1000], background exactly 0).
        label: uint8 array with values in {0, 1, 2}.
    """
    rng = np.random.default_rng([seed, index])
    coords = [
        np.arange(shape[0], dtype=np.float64)[:, None, None],
        np.arange(shape[1], dtype=np.float64)[None, :, None],
        np.arange(shape[2], dtype=np.float64)[None, None, :],
    ]
    size = np.asarray(shape, dtype=np.float64)
    scale = min(shape[0], shape[1]) / 64.0

    # head: ellipsoid covering ~70-85% of the in-plane field of view, slightly irregular outline
    centre = (size - 1.0) / 2.0 + rng.uniform(-0.03, 0.03, size=3) * size * np.array([1.0, 1.0, 0.5])
    head_radii = size * np.array([rng.uniform(0.35, 0.425), rng.uniform(0.35, 0.425), rng.uniform(0.40, 0.45)])
    outline = 1.0 + 0.015 * _smooth_noise(rng, shape, (4, 4, 3))
    head = _ellipsoid_distance(coords, centre, head_radii) * outline <= 1.0

    # skull/scalp ring, extra-axial CSF, brain parenchyma
    skull_thickness = max(1.2, rng.uniform(2.0, 3.0) * scale)
    csf_thickness = max(0.8, rng.uniform(0.8, 1.5) * scale)
    brain_radii = head_radii - skull_thickness
    brain = (_ellipsoid_distance(coords, centre, brain_radii) * outline <= 1.0) & head
    parenchyma_radii = brain_radii - csf_thickness
    parenchyma = (_ellipsoid_distance(coords, centre, parenchyma_radii) * outline <= 1.0) & brain

    # white matter inside a gray matter cortex ribbon of varying thickness ("gyri")
    ribbon = max(1.0, rng.uniform(2.5, 4.0) * scale) * (1.0 + 0.4 * _smooth_noise(rng, shape, (8, 8, 5)))
    ribbon = np.clip(ribbon, 0.5, None)
    wm_dist = _ellipsoid_distance(coords, centre, parenchyma_radii)
    white = (wm_dist <= 1.0 - ribbon / parenchyma_radii[:2].mean()) & parenchyma

    # two ventricles, roughly symmetric about the mid-sagittal plane (first axis is left-right)
    ventricles = np.zeros(shape, dtype=bool)
    dx = rng.uniform(0.10, 0.16) * parenchyma_radii[0]
    dy = rng.uniform(-0.10, 0.05) * parenchyma_radii[1]
    dz = rng.uniform(-0.05, 0.15) * parenchyma_radii[2]
    vent_radii = parenchyma_radii * np.array([rng.uniform(0.07, 0.12), rng.uniform(0.25, 0.38), rng.uniform(0.18, 0.3)])
    for side in (-1.0, 1.0):
        v_centre = centre + np.array([side * dx, dy, dz])
        v_radii = np.maximum(vent_radii * rng.uniform(0.85, 1.15, size=3), 1.2)
        ventricles |= _ellipsoid_distance(coords, v_centre, v_radii) <= 1.0
    ventricles &= parenchyma

    core, edema = _make_lesion(rng, coords, shape, centre, parenchyma_radii, parenchyma)

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[head] = _SKULL
    tissue[brain] = _CSF
    tissue[parenchyma] = _GM
    tissue[white] = _WM
    tissue[ventricles] = _CSF
    tissue[edema] = _EDEMA
    tissue[core] = _CORE

    label = np.zeros(shape, dtype=np.uint8)
    label[edema] = 2
    label[core] = 1

    images = {}
    for modality in DEMO_MODALITIES:
        means = np.asarray(_CONTRAST[modality]) * (1.0 + np.clip(rng.normal(0.0, 0.03, size=7), -0.08, 0.08))
        means[_BACKGROUND] = 0.0
        image = means[tissue]
        image = image * (1.0 + 0.02 * _smooth_noise(rng, shape, (10, 10, 6)))  # mild tissue texture
        image = _box_smooth(image)  # partial volume at tissue boundaries
        image = image * _polynomial_bias(rng, coords, head)
        sigma = rng.uniform(0.02, 0.03) * float(image[head].max())
        image = image + sigma * rng.standard_normal(shape)
        image = np.where(head, np.clip(image, 1e-3, None), 0.0)
        images[modality] = (image * _INTENSITY_SCALE).astype(np.float32)
    return images, label


def _affine(shape: Sequence[int]) -> np.ndarray:
    """1 mm isotropic affine with the origin at the centre of the field of view (same for every subject)."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    return affine


def _temp_path(path: str) -> str:
    """Unique temporary file name in the same folder that keeps the extension of ``path`` (e.g. ``.nii.gz``)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{name}")


def _atomic_write(path: str, writer: Callable[[str], None], overwrite: bool = True) -> bool:
    """
    Write a file via ``writer(temp_path)`` and move it atomically to ``path``.

    If ``overwrite`` is False, an existing ``path`` is never replaced (also not by a concurrent writer);
    returns whether ``path`` was written by this call.
    """
    tmp = _temp_path(path)
    try:
        writer(tmp)
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic "create if absent"
            return True
        except FileExistsError:
            return False
        except OSError:  # file system without hard links
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
            return True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    def _writer(tmp: str) -> None:
        img = nib.Nifti1Image(array, affine)
        img.header.set_data_dtype(array.dtype)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, tmp)

    _atomic_write(path, _writer)


def _write_json(data: dict, path: str, overwrite: bool) -> bool:
    def _writer(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    return _atomic_write(path, _writer, overwrite=overwrite)


def _generate(
    dataset_dir: str | os.PathLike,
    num_subjects: int,
    num_test: int,
    shape: Sequence[int],
    seed: int,
    data_list_file_path: str | os.PathLike | None,
    overwrite_datalist: bool,
) -> str:
    num_subjects, num_test, spatial = _validate_arguments(num_subjects, num_test, shape, seed)
    dataset_dir = os.fspath(dataset_dir)
    if data_list_file_path is None:
        data_list_file_path = os.path.join(dataset_dir, DEFAULT_DATALIST_NAME)
    data_list_file_path = os.fspath(data_list_file_path)
    os.makedirs(dataset_dir, exist_ok=True)
    affine = _affine(spatial)

    items = []
    for index in range(num_subjects):
        subject = _subject_id(index)
        os.makedirs(os.path.join(dataset_dir, subject), exist_ok=True)
        images, label = _synthesize_subject(int(seed), index, spatial)
        item = {"subject": subject}
        for key, array in (*images.items(), ("label", label)):
            rel_path = f"{subject}/{subject}_{key}.nii.gz"
            _save_nifti(array, affine, os.path.join(dataset_dir, rel_path))
            item[key] = rel_path
        items.append(item)

    n_train = num_subjects - num_test
    datalist = {
        "name": "multi-condos demo",
        "description": (
            "Synthetic co-registered T1/T2 brain-MRI-like volumes with one lesion (core + edema) per subject, "
            f"generated by bundle/demo_data.py (seed={int(seed)}, shape={list(spatial)}). Not real patient data."
        ),
        "modalities": list(DEMO_MODALITIES),
        "labels": dict(DEMO_LABELS),
        "label_convention": "demo",
        "training": items[:n_train],
        "testing": items[n_train:],
    }
    parent = os.path.dirname(data_list_file_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    _write_json(datalist, data_list_file_path, overwrite=overwrite_datalist)
    return data_list_file_path


def generate_demo_dataset(
    dataset_dir: str | os.PathLike,
    num_subjects: int = 48,
    num_test: int = 8,
    shape: Sequence[int] = (64, 64, 32),
    seed: int = 0,
    data_list_file_path: str | os.PathLike | None = None,
) -> str:
    """
    Write a synthetic, co-registered multimodal (T1/T2) brain-MRI-like dataset and its datalist.

    Every subject ``demo_XXX`` gets ``<subject>/<subject>_t1.nii.gz``, ``<subject>/<subject>_t2.nii.gz`` and
    ``<subject>/<subject>_label.nii.gz`` under ``dataset_dir`` (float32 images scaled to roughly [0, 1000], uint8
    label with 0: background, 1: lesion core, 2: edema; 1 mm isotropic, the last axis is axial).
    Subject ``i`` only depends on ``(seed, i, shape)``, so it is identical for any ``num_subjects``.
    Existing files (including the datalist) are overwritten, each one atomically.

    Args:
        dataset_dir: folder to write the subjects into (created if needed).
        num_subjects: total number of subjects.
        num_test: number of subjects (the last ones) in the ``"testing"`` split; the others are ``"training"``.
        shape: spatial shape of every volume, 3 integers each >= 16.
        seed: non-negative random seed.
        data_list_file_path: where to write the datalist JSON, defaults to ``dataset_dir/datalist.json``.
            The image paths in the datalist are relative to ``dataset_dir``.

    Returns:
        the path of the datalist JSON file.

    Raises:
        ValueError: if ``num_subjects <= num_test``, ``num_test < 0``, fewer than 4 training subjects remain,
            ``shape`` does not have 3 elements >= 16 or ``seed`` is negative.
        TypeError: if an argument that must be an integer (or a sequence of integers for ``shape``) is not.
    """
    return _generate(dataset_dir, num_subjects, num_test, shape, seed, data_list_file_path, overwrite_datalist=True)


def ensure_demo_dataset(dataset_dir: str | os.PathLike, data_list_file_path: str | os.PathLike, **kwargs: Any) -> str:
    """
    Create the demo dataset only if ``data_list_file_path`` does not exist yet.

    Safe to call repeatedly and concurrently: an existing datalist is never overwritten (the datalist is created
    atomically only if absent), and every file is written under a temporary name and then moved into place with
    ``os.replace``, so readers never see partially written files.

    Args:
        dataset_dir: folder of the demo dataset.
        data_list_file_path: path of the datalist JSON file; nothing is done if it exists.
        kwargs: other arguments of :py:func:`generate_demo_dataset` (``num_subjects``, ``num_test``, ``shape``,
            ``seed``).

    Returns:
        ``data_list_file_path`` (as a string).

    Raises:
        ValueError: for unknown or invalid generation arguments (see :py:func:`generate_demo_dataset`).
        TypeError: for generation arguments of the wrong type.
    """
    data_list_file_path = os.fspath(data_list_file_path)
    if os.path.isfile(data_list_file_path):
        return data_list_file_path
    unknown = set(kwargs) - {"num_subjects", "num_test", "shape", "seed"}
    if unknown:
        raise ValueError(f"unexpected arguments for the demo dataset: {sorted(unknown)}.")
    params = {"num_subjects": 48, "num_test": 8, "shape": (64, 64, 32), "seed": 0, **kwargs}
    return _generate(
        dataset_dir,
        params["num_subjects"],
        params["num_test"],
        params["shape"],
        params["seed"],
        data_list_file_path,
        overwrite_datalist=False,
    )
