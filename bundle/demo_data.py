# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Deterministic generator of a small synthetic multimodal (T1/T2) brain-MRI-like dataset.

The dataset is meant for smoke tests and demos of the Multi-ConDoS bundle when no real data is available. Its two
modalities differ as real MRI contrasts do, so that each one carries information the other lacks (the premise of
multimodal pre-training):

- ``t1``: T1-weighted after a contrast agent (T1-Gd-like). White matter is brighter than grey matter, CSF is dark,
  the enhancing rim of the lesion is bright, its necrotic centre dark, and the edema only faintly darker than the
  white matter around it.
- ``t2``: T2-weighted. The contrast of CSF, grey and white matter is inverted (CSF brightest, white matter
  darkest); edema and necrosis are bright and the enhancing rim is a darker band between them.

So the extent of the lesion (core + edema) is hard to see in ``t1`` alone and clear in ``t2``: ``t2`` is not a
function of ``t1``. Every subject has a random head (scalp, skull, CSF, a grey matter cortex with sulci, white
matter, deep grey nuclei, two ventricles) and one irregular, lobulated lesion in the white matter: a necrotic
centre inside an enhancing rim of varying thickness (together the lesion core, label ``1``), surrounded by edema
(label ``2``) that spreads along the white matter and fades towards its border. The images have partial volume
at tissue boundaries, a smooth multiplicative bias field per modality and Rician noise.

Every subject is written as NIfTI files together with a MONAI/Decathlon-style datalist, which records the
generator's name, version and parameters (``"generator"``):

.. code-block:: text

    dataset_dir/
        datalist.json
        demo_000/demo_000_t1.nii.gz
        demo_000/demo_000_t2.nii.gz
        demo_000/demo_000_label.nii.gz
        ...

The paths in the datalist are relative to ``dataset_dir``; use e.g.
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=dataset_dir)`` to resolve them.

The volumes are 1 mm isotropic with RAS axes (the first axis is left-right, the last one is axial). The
background (outside the head) is exactly ``0`` in both modalities and every voxel inside the head is strictly
positive, so that "non-zero" intensity normalisation selects exactly the head.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "DEMO_LABELS",
    "DEMO_MODALITIES",
    "DEMO_TISSUES",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "DemoSubject",
    "ensure_demo_dataset",
    "generate_demo_dataset",
    "synthesize_subject",
]

GENERATOR_NAME = "multi_condos.demo_data"
"""Name of this generator, recorded in the datalists it writes."""

GENERATOR_VERSION = 2
"""Version of the generated data: bumped whenever the same arguments give other images or labels.

1: tissue classes with fixed intensities, so ``t2`` was a function of ``t1`` (no version was recorded);
2: ``t2`` carries information ``t1`` lacks (faint edema in ``t1``), necrosis and enhancing rim, sulci, Rician noise.
"""

DEMO_MODALITIES: tuple[str, ...] = ("t1", "t2")
"""Names (and order) of the modalities of the demo dataset."""

DEMO_LABELS: dict[str, str] = {"0": "background", "1": "lesion core (necrosis + enhancing rim)", "2": "edema"}
"""Label values of the demo segmentation maps."""

DEFAULT_DATALIST_NAME = "datalist.json"

# tissue classes of the internal tissue map (``DemoSubject.tissue``)
_BACKGROUND, _SCALP, _SKULL, _CSF, _GM, _WM, _EDEMA, _ENHANCING, _NECROSIS = range(9)

DEMO_TISSUES: dict[int, str] = {
    _BACKGROUND: "background",
    _SCALP: "scalp",
    _SKULL: "skull",
    _CSF: "CSF",
    _GM: "grey matter",
    _WM: "white matter",
    _EDEMA: "edema",
    _ENHANCING: "enhancing rim",
    _NECROSIS: "necrosis",
}
"""Tissue classes of :py:attr:`DemoSubject.tissue` (edema is label 2; enhancing rim and necrosis are label 1)."""

# mean relative intensity of every tissue class (indexed by the constants above) for each modality:
# CSF < GM < WM in t1 and the reverse in t2; edema is ~6% below WM in t1 but over 2x WM in t2, so t1 cannot tell
# edema from white matter and t2 cannot tell it from CSF (see the module docstring); 1.0 is the scale of the noise
_CONTRAST: dict[str, tuple[float, ...]] = {
    #     bg   scalp  skull  csf   gm    wm    edema  enh   necr
    "t1": (0.0, 0.95, 0.10, 0.18, 0.55, 0.85, 0.80, 1.30, 0.25),
    "t2": (0.0, 0.60, 0.08, 1.00, 0.62, 0.40, 0.90, 0.58, 0.97),
}
# the edema fades towards its border: its contrast to white matter drops to this fraction at the outer edge
_EDEMA_BORDER_WEIGHT = 0.7

# weight of each of the two neighbours along an axis in the partial volume kernel (see _partial_volume)
_PARTIAL_VOLUME_SIDE_WEIGHT = 0.125
_INTENSITY_SCALE = 1000.0
# size of the reference field of view: in a 64x64x32 volume a lesion has at least 300 voxels
_REFERENCE_VOXELS = 64 * 64 * 32
_REFERENCE_MIN_VOXELS = {"lesion": 300, "necrosis": 80, "enhancing": 80, "edema": 150}
_ABSOLUTE_MIN_VOXELS = {"lesion": 32, "necrosis": 4, "enhancing": 8, "edema": 12}
_MIN_LESION_SLICES = 3
_MAX_LESION_ATTEMPTS = 60

_OWN_FILE = re.compile(r"(demo_\d{3})/\1_[a-z0-9]+\.nii\.gz")  # the relative paths this generator writes

logger = logging.getLogger(GENERATOR_NAME)


@dataclass(frozen=True)
class DemoSubject:
    """
    One synthetic subject.

    Attributes:
        images: modality name -> float32 volume, scaled to roughly [0, 1000], background exactly 0.
        label: uint8 segmentation, values of ``DEMO_LABELS`` (0 background, 1 lesion core, 2 edema).
        tissue: uint8 tissue map, values of ``DEMO_TISSUES`` (what the images were rendered from).
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    tissue: np.ndarray


@dataclass(frozen=True)
class _Anatomy:
    """Masks of the normal head anatomy and the geometry the lesion is placed with."""

    head: np.ndarray
    tissue: np.ndarray  # normal tissue classes (no lesion)
    white: np.ndarray
    allowed: np.ndarray  # where a lesion may grow: parenchyma outside the ventricles
    centre: np.ndarray
    parenchyma_radii: np.ndarray


@dataclass(frozen=True)
class _Lesion:
    necrosis: np.ndarray
    enhancing: np.ndarray
    edema: np.ndarray
    edema_weight: np.ndarray  # 1 next to the core, _EDEMA_BORDER_WEIGHT at the outer edge of the edema


def _subject_id(index: int) -> str:
    return f"demo_{index:03d}"


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def _validate_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise TypeError(f"shape must be a sequence of 3 integers, got {shape!r}.")
    if len(shape) != 3:
        raise ValueError(f"shape must have exactly 3 elements (spatial dims), got {len(shape)}: {tuple(shape)!r}.")
    spatial = tuple(_check_int("shape elements", s) for s in shape)
    if min(spatial) < 16:
        raise ValueError(f"every element of shape must be >= 16, got {spatial}.")
    return spatial


def _validate_seed(seed: Any) -> int:
    seed = _check_int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    return seed


def _validate_arguments(
    num_subjects: Any, num_test: Any, shape: Any, seed: Any
) -> tuple[int, int, tuple[int, ...], int]:
    num_subjects = _check_int("num_subjects", num_subjects)
    num_test = _check_int("num_test", num_test)
    seed = _validate_seed(seed)
    if num_test < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}.")
    if num_subjects <= num_test:
        raise ValueError(f"num_subjects ({num_subjects}) must be greater than num_test ({num_test}).")
    if num_subjects - num_test < 4:
        raise ValueError(
            f"the training split must keep at least 4 subjects, got num_subjects={num_subjects} and "
            f"num_test={num_test} ({num_subjects - num_test} training subjects)."
        )
    return num_subjects, num_test, _validate_shape(shape), seed


def _upsample(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Smooth interpolation of ``array`` to ``size`` samples along ``axis`` (smoothstep weights between points)."""
    n_in = array.shape[axis]
    pos = np.linspace(0.0, n_in - 1.0, size)
    low = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    frac = pos - low
    frac = frac * frac * (3.0 - 2.0 * frac)
    weight_shape = [1] * array.ndim
    weight_shape[axis] = size
    frac = frac.reshape(weight_shape)
    return array.take(low, axis=axis) * (1.0 - frac) + array.take(low + 1, axis=axis) * frac


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation (coarse gaussian grid, upsampled)."""
    field = rng.standard_normal(tuple(grid))
    # one axis at a time, with plain element-wise operations: no BLAS threads, which are slow on busy cores
    for axis, size in enumerate(shape):
        field = _upsample(field, size, axis)
    field -= field.mean()
    return field / max(float(field.std()), 1e-8)


def _ellipsoid_distance(coords: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoidal distance (1 on the surface) of every voxel, using broadcastable 1-D coordinates."""
    dist = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii))
    return np.sqrt(dist)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation with the 6-neighbourhood (voxels outside the volume count as outside the mask)."""
    out = mask.copy()
    for axis in range(mask.ndim):
        head = [slice(None)] * mask.ndim
        tail = [slice(None)] * mask.ndim
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        out[tuple(head)] |= mask[tuple(tail)]
        out[tuple(tail)] |= mask[tuple(head)]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with the 6-neighbourhood (voxels outside the volume count as inside the mask)."""
    return ~_dilate(~mask)


def _partial_volume(image: np.ndarray, side_weight: float = _PARTIAL_VOLUME_SIDE_WEIGHT) -> np.ndarray:
    """
    Mix every voxel with its neighbours, as the voxels of an MRI image average the tissues they cover.

    A separable ``[w, 1 - 2w, w]`` kernel along every axis (edges replicated); ``w = 1/8`` is a point spread
    function of about 1.2 voxels full width at half maximum.
    """
    out = image
    for axis in range(image.ndim):
        padded = np.concatenate([out.take([0], axis=axis), out, out.take([-1], axis=axis)], axis=axis)
        n = out.shape[axis]
        out = (1.0 - 2.0 * side_weight) * padded.take(np.arange(1, n + 1), axis=axis) + side_weight * (
            padded.take(np.arange(0, n), axis=axis) + padded.take(np.arange(2, n + 2), axis=axis)
        )
    return out


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    direction = rng.standard_normal(3)
    return direction / max(float(np.linalg.norm(direction)), 1e-8)


def _make_anatomy(rng: np.random.Generator, coords: Sequence[np.ndarray], shape: tuple[int, ...]) -> _Anatomy:
    """Random head: scalp, skull, CSF, a grey matter cortex with sulci, white matter, deep grey nuclei, ventricles."""
    size = np.asarray(shape, dtype=np.float64)
    scale = min(shape[0], shape[1]) / 64.0

    # head: ellipsoid covering ~70-85% of the in-plane field of view, slightly irregular outline
    centre = (size - 1.0) / 2.0 + rng.uniform(-0.03, 0.03, size=3) * size * np.array([1.0, 1.0, 0.5])
    head_radii = size * np.array([rng.uniform(0.35, 0.425), rng.uniform(0.35, 0.425), rng.uniform(0.40, 0.45)])
    outline = 1.0 + 0.015 * _smooth_noise(rng, shape, (4, 4, 3))

    def inside(radii: np.ndarray) -> np.ndarray:
        return _ellipsoid_distance(coords, centre, radii) * outline <= 1.0

    # nested layers, each one thinner than the last by its thickness (voxels)
    head = inside(head_radii)
    skull_radii = head_radii - max(1.0, rng.uniform(1.0, 1.6) * scale)  # scalp
    brain_radii = skull_radii - max(1.0, rng.uniform(1.0, 1.5) * scale)  # skull
    parenchyma_radii = brain_radii - max(0.8, rng.uniform(0.8, 1.4) * scale)  # extra-axial CSF
    skull = inside(skull_radii) & head
    brain = inside(brain_radii) & skull
    parenchyma = inside(parenchyma_radii) & brain

    # white matter inside a grey matter cortex ribbon of varying thickness (gyri)
    ribbon = max(1.0, rng.uniform(2.5, 4.0) * scale) * (
        1.0 + 0.35 * _smooth_noise(rng, shape, (8, 8, 5)) + 0.25 * _smooth_noise(rng, shape, (14, 14, 8))
    )
    ribbon = np.clip(ribbon, 0.5, None)
    wm_dist = _ellipsoid_distance(coords, centre, parenchyma_radii)
    white = (wm_dist <= 1.0 - ribbon / parenchyma_radii[:2].mean()) & parenchyma
    # sulci: thin CSF sheets (near-zero level sets of a smooth field) that cut into the cortex from outside
    sulcal_field = np.abs(_smooth_noise(rng, shape, (9, 9, 5)))
    sulci = (sulcal_field < 0.25) & parenchyma & ~white & (wm_dist > 0.75)

    # deep grey nuclei and two ventricles, roughly symmetric about the mid-sagittal plane (first axis: left-right)
    deep_grey = np.zeros(shape, dtype=bool)
    ventricles = np.zeros(shape, dtype=bool)
    deep_dx = rng.uniform(0.28, 0.36) * parenchyma_radii[0]
    deep_radii = parenchyma_radii * np.array(
        [rng.uniform(0.10, 0.14), rng.uniform(0.15, 0.22), rng.uniform(0.15, 0.25)]
    )
    dx = rng.uniform(0.10, 0.16) * parenchyma_radii[0]
    dy = rng.uniform(-0.10, 0.05) * parenchyma_radii[1]
    dz = rng.uniform(-0.05, 0.15) * parenchyma_radii[2]
    vent_radii = parenchyma_radii * np.array([rng.uniform(0.07, 0.12), rng.uniform(0.25, 0.38), rng.uniform(0.18, 0.3)])
    for side in (-1.0, 1.0):
        d_radii = np.maximum(deep_radii * rng.uniform(0.85, 1.15, size=3), 1.2)
        deep_grey |= _ellipsoid_distance(coords, centre + np.array([side * deep_dx, dy, 0.0]), d_radii) <= 1.0
        v_radii = np.maximum(vent_radii * rng.uniform(0.85, 1.15, size=3), 1.2)
        ventricles |= _ellipsoid_distance(coords, centre + np.array([side * dx, dy, dz]), v_radii) <= 1.0
    deep_grey &= white
    ventricles &= parenchyma

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[head] = _SCALP
    tissue[skull] = _SKULL
    tissue[brain] = _CSF
    tissue[parenchyma] = _GM
    tissue[white & ~deep_grey] = _WM
    tissue[sulci | ventricles] = _CSF
    return _Anatomy(
        head=head,
        tissue=tissue,
        white=white & ~deep_grey & ~ventricles,
        allowed=parenchyma & ~ventricles & ~sulci,
        centre=centre,
        parenchyma_radii=parenchyma_radii,
    )


def _lobe_distance(
    coords: Sequence[np.ndarray], lobes: Sequence[tuple[np.ndarray, np.ndarray]], factor: float
) -> np.ndarray:
    """Distance to the union of the lobes (ellipsoids ``(centre, radii)``), with all radii scaled by ``factor``."""
    return np.minimum.reduce([_ellipsoid_distance(coords, c, r * factor) for c, r in lobes])


def _min_voxels(shape: tuple[int, ...]) -> dict[str, int]:
    ratio = float(np.prod(shape)) / _REFERENCE_VOXELS
    return {k: max(_ABSOLUTE_MIN_VOXELS[k], round(v * ratio)) for k, v in _REFERENCE_MIN_VOXELS.items()}


def _make_lesion(
    rng: np.random.Generator, coords: Sequence[np.ndarray], shape: tuple[int, ...], anatomy: _Anatomy
) -> _Lesion:
    """Random lobulated lesion centred in the white matter: necrosis inside an enhancing rim, edema around them."""
    min_voxels = _min_voxels(shape)
    scale = min(shape[0], shape[1]) / 64.0
    inplane = 0.5 * (shape[0] + shape[1])
    growth = 1.0
    for _ in range(_MAX_LESION_ATTEMPTS):
        offset = _random_direction(rng) * 0.5 * rng.uniform(0.0, 1.0) ** (1.0 / 3.0)  # uniform in a ball
        lesion_centre = anatomy.centre + offset * anatomy.parenchyma_radii
        radius = rng.uniform(0.065, 0.11) * inplane * growth
        # a main lobe and 1-3 smaller ones around it
        lobes = [(lesion_centre, np.maximum(radius * rng.uniform(0.8, 1.1, size=3), 1.5))]
        for _ in range(int(rng.integers(1, 4))):
            lobe_centre = lesion_centre + _random_direction(rng) * radius * rng.uniform(0.5, 0.9)
            lobes.append((lobe_centre, np.maximum(radius * rng.uniform(0.45, 0.75, size=3), 1.2)))
        core_dist = _lobe_distance(coords, lobes, 1.0) + 0.12 * _smooth_noise(rng, shape, (8, 8, 5))
        core = (core_dist <= 1.0) & anatomy.allowed
        # enhancing rim of varying thickness (~1.5-2.5 voxels at 64x64); the necrosis never touches the outside
        rim = max(1.0, rng.uniform(1.5, 2.5) * scale) / radius
        necrosis = (core_dist + 0.15 * _smooth_noise(rng, shape, (10, 10, 6)) <= 1.0 - rim) & _erode(core)
        enhancing = core & ~necrosis
        # edema: a larger irregular region that spreads along the white matter, plus a ring that wraps the core
        edema_dist = _lobe_distance(coords, lobes, rng.uniform(1.7, 2.3)) + 0.25 * _smooth_noise(rng, shape, (7, 7, 4))
        edema = (((edema_dist <= 1.0) & anatomy.white) | _dilate(core)) & anatomy.allowed & ~core
        lesion = core | edema
        counts = {
            "lesion": np.count_nonzero(lesion),
            "necrosis": np.count_nonzero(necrosis),
            "enhancing": np.count_nonzero(enhancing),
            "edema": np.count_nonzero(edema),
        }
        in_white = anatomy.white[tuple(np.clip(np.rint(lesion_centre).astype(int), 0, np.asarray(shape) - 1))]
        slices = np.count_nonzero(lesion.any(axis=(0, 1)))
        if in_white and slices >= _MIN_LESION_SLICES and all(counts[k] >= min_voxels[k] for k in counts):
            weight = 1.0 - (1.0 - _EDEMA_BORDER_WEIGHT) * np.clip(edema_dist, 0.0, 1.0) ** 2
            return _Lesion(necrosis=necrosis, enhancing=enhancing, edema=edema, edema_weight=weight)
        growth *= 1.05  # make the next attempt a bit larger (only matters for very small fields of view)
    raise RuntimeError(f"could not place a lesion in a volume of shape {shape}.")


def _polynomial_bias(rng: np.random.Generator, coords: Sequence[np.ndarray], head: np.ndarray) -> np.ndarray:
    """Smooth multiplicative bias field (2nd order polynomial), at most +-10-18% inside the head."""
    u = [(c - (c.size - 1) / 2.0) / max((c.size - 1) / 2.0, 1.0) for c in coords]
    terms = [u[0], u[1], u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2, u[0] * u[1], u[0] * u[2], u[1] * u[2]]
    coef = rng.standard_normal(len(terms))
    field = sum(c * t for c, t in zip(coef, terms)) * np.ones(head.shape)
    field -= field[head].mean()
    field /= max(float(np.abs(field[head]).max()), 1e-8)
    return 1.0 + rng.uniform(0.10, 0.18) * field


def _render(
    rng: np.random.Generator,
    modality: str,
    tissue: np.ndarray,
    lesion: _Lesion,
    texture: np.ndarray,
    head: np.ndarray,
    coords: Sequence[np.ndarray],
) -> np.ndarray:
    """One modality: tissue intensities, texture, partial volume, bias field and Rician noise; background 0."""
    contrast = np.asarray(_CONTRAST[modality])
    means = contrast * (1.0 + np.clip(rng.normal(0.0, 0.03, size=contrast.size), -0.08, 0.08))
    means[_BACKGROUND] = 0.0
    image = means[tissue]
    # the edema fades into the surrounding white matter
    edema = lesion.edema
    image[edema] = means[_WM] + lesion.edema_weight[edema] * (means[_EDEMA] - means[_WM])
    image = image * texture
    image = _partial_volume(image)
    image = image * _polynomial_bias(rng, coords, head)
    # magnitude images: the noise of the real and imaginary channels makes it Rician (always positive)
    sigma = rng.uniform(0.02, 0.03)
    noise = sigma * rng.standard_normal((2, *tissue.shape))
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    image = np.where(head, np.clip(image, 1e-3, None), 0.0)
    return (image * _INTENSITY_SCALE).astype(np.float32)


def synthesize_subject(seed: int, index: int, shape: Sequence[int] = (64, 64, 32)) -> DemoSubject:
    """
    Generate one subject in memory; the result only depends on ``(seed, index, shape)``.

    Args:
        seed: non-negative random seed of the dataset.
        index: index of the subject in the dataset (subject ``demo_<index>``).
        shape: spatial shape, 3 integers each >= 16.

    Returns:
        the subject's images (``DEMO_MODALITIES``), label and tissue map.

    Raises:
        ValueError: for a negative seed or index, or a shape that does not have 3 elements >= 16.
        TypeError: if an argument is not an integer (or a sequence of integers for ``shape``).
    """
    seed, shape = _validate_seed(seed), _validate_shape(shape)
    index = _check_int("index", index)
    if index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index}.")
    rng = np.random.default_rng([seed, index])
    coords = [
        np.arange(shape[0], dtype=np.float64)[:, None, None],
        np.arange(shape[1], dtype=np.float64)[None, :, None],
        np.arange(shape[2], dtype=np.float64)[None, None, :],
    ]
    anatomy = _make_anatomy(rng, coords, shape)
    lesion = _make_lesion(rng, coords, shape, anatomy)

    tissue = anatomy.tissue.copy()
    tissue[lesion.edema] = _EDEMA
    tissue[lesion.enhancing] = _ENHANCING
    tissue[lesion.necrosis] = _NECROSIS
    label = np.zeros(shape, dtype=np.uint8)
    label[lesion.edema] = 2
    label[lesion.enhancing | lesion.necrosis] = 1

    # a mild tissue texture, anatomical so the same in every modality (unlike the bias field and the noise)
    texture = 1.0 + 0.02 * _smooth_noise(rng, shape, (10, 10, 6))
    images = {m: _render(rng, m, tissue, lesion, texture, anatomy.head, coords) for m in DEMO_MODALITIES}
    return DemoSubject(images=images, label=label, tissue=tissue)


def _affine(shape: Sequence[int]) -> np.ndarray:
    """1 mm isotropic RAS affine with the origin at the centre of the field of view (same for every subject)."""
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


def _generator_record(num_subjects: int, num_test: int, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    return {
        "name": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "shape": list(shape),
        "num_subjects": num_subjects,
        "num_test": num_test,
        "modalities": {
            "t1": "T1-weighted, contrast-enhanced (T1-Gd-like): enhancing rim bright, edema faint",
            "t2": "T2-weighted: CSF, edema and necrosis bright",
        },
    }


def _generate(
    dataset_dir: str | os.PathLike,
    num_subjects: int,
    num_test: int,
    shape: Sequence[int],
    seed: int,
    data_list_file_path: str | os.PathLike | None,
    overwrite_datalist: bool,
) -> str:
    num_subjects, num_test, spatial, seed = _validate_arguments(num_subjects, num_test, shape, seed)
    dataset_dir = os.fspath(dataset_dir)
    if data_list_file_path is None:
        data_list_file_path = os.path.join(dataset_dir, DEFAULT_DATALIST_NAME)
    data_list_file_path = os.fspath(data_list_file_path)
    os.makedirs(dataset_dir, exist_ok=True)
    affine = _affine(spatial)

    items = []
    for index in range(num_subjects):
        subject_id = _subject_id(index)
        os.makedirs(os.path.join(dataset_dir, subject_id), exist_ok=True)
        subject = synthesize_subject(seed, index, spatial)
        item = {"subject": subject_id}
        for key, array in (*subject.images.items(), ("label", subject.label)):
            rel_path = f"{subject_id}/{subject_id}_{key}.nii.gz"
            _save_nifti(array, affine, os.path.join(dataset_dir, rel_path))
            item[key] = rel_path
        items.append(item)

    n_train = num_subjects - num_test
    datalist = {
        "name": "multi-condos demo",
        "description": (
            "Synthetic co-registered T1-Gd-like/T2-like brain-MRI-like volumes with one lesion (necrosis and "
            "enhancing rim = core, edema) per subject; the edema is faint in t1 and bright in t2. Generated by "
            f"bundle/demo_data.py version {GENERATOR_VERSION} (seed={seed}, shape={list(spatial)}). "
            "Not real patient data."
        ),
        "generator": _generator_record(num_subjects, num_test, spatial, seed),
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
    label with 0: background, 1: lesion core = necrosis + enhancing rim, 2: edema; 1 mm isotropic, RAS, the last
    axis is axial). Subject ``i`` only depends on ``(seed, i, shape)`` (see :py:func:`synthesize_subject`), so it
    is identical for any ``num_subjects``. The datalist records the generator (``"generator"``: name, version and
    these arguments). Existing files (including the datalist) are overwritten, each one atomically.

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


def _read_datalist(path: str) -> Any:
    """Content of a JSON file, or None if it cannot be read or parsed."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _written_version(datalist: Any) -> Any:
    """
    The version of this generator that wrote ``datalist``, or None if it was not written by this generator.

    Datalists of version 1 recorded no version; they are recognised by their name and label convention.
    """
    if not isinstance(datalist, dict):
        return None
    generator = datalist.get("generator")
    if isinstance(generator, dict) and generator.get("name") == GENERATOR_NAME:
        return generator.get("version")
    if datalist.get("name") == "multi-condos demo" and datalist.get("label_convention") == "demo":
        return 1
    return None


def _own_files(datalist: dict) -> set[str]:
    """Relative paths of the subject files a datalist of this generator lists (only names the generator writes)."""
    paths = set()
    for section in ("training", "testing"):
        items = datalist.get(section)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                paths.update(v for v in item.values() if isinstance(v, str) and _OWN_FILE.fullmatch(v))
    return paths


def _remove_stale_files(dataset_dir: str, stale: set[str]) -> None:
    """Remove the generator's own files that a regenerated dataset no longer lists, then their emptied folders."""
    for rel_path in sorted(stale):
        path = os.path.join(dataset_dir, rel_path)
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
    for folder in sorted({os.path.dirname(p) for p in stale}):
        try:
            os.rmdir(os.path.join(dataset_dir, folder))  # only if empty: other files are never removed
        except OSError:
            pass


def ensure_demo_dataset(dataset_dir: str | os.PathLike, data_list_file_path: str | os.PathLike, **kwargs: Any) -> str:
    """
    Create the demo dataset if ``data_list_file_path`` does not exist yet, or if this generator wrote it in
    another version (then its subjects are regenerated with ``kwargs`` and a warning is logged).

    A datalist that this generator did not write (no ``"generator"`` record of this generator, and not a version 1
    demo datalist) is never touched, and neither is any file a stale demo datalist does not list under a name
    the generator writes (``demo_XXX/demo_XXX_<key>.nii.gz``). A datalist of the current version is reused as it
    is, whatever ``kwargs`` say.

    Safe to call repeatedly and concurrently: a new datalist is created atomically only if absent, and every file
    is written under a temporary name and then moved into place with ``os.replace``, so readers never see
    partially written files.

    Args:
        dataset_dir: folder of the demo dataset.
        data_list_file_path: path of the datalist JSON file.
        kwargs: other arguments of :py:func:`generate_demo_dataset` (``num_subjects``, ``num_test``, ``shape``,
            ``seed``).

    Returns:
        ``data_list_file_path`` (as a string).

    Raises:
        ValueError: for unknown or invalid generation arguments (see :py:func:`generate_demo_dataset`).
        TypeError: for generation arguments of the wrong type.
    """
    data_list_file_path = os.fspath(data_list_file_path)
    stale_datalist = None
    if os.path.isfile(data_list_file_path):
        content = _read_datalist(data_list_file_path)
        version = _written_version(content)
        if version is None or version == GENERATOR_VERSION:
            return data_list_file_path  # someone else's datalist, or a current demo one
        stale_datalist = content
    unknown = set(kwargs) - {"num_subjects", "num_test", "shape", "seed"}
    if unknown:
        raise ValueError(f"unexpected arguments for the demo dataset: {sorted(unknown)}.")
    params = {"num_subjects": 48, "num_test": 8, "shape": (64, 64, 32), "seed": 0, **kwargs}
    args = (params["num_subjects"], params["num_test"], params["shape"], params["seed"])
    if stale_datalist is None:
        return _generate(dataset_dir, *args, data_list_file_path, overwrite_datalist=False)

    _validate_arguments(*args)  # before anything is logged or written
    logger.warning(
        f"the demo dataset {data_list_file_path} was written by {GENERATOR_NAME} version {version}, not the "
        f"current version {GENERATOR_VERSION}: it is this generator's own data, regenerating it in "
        f"{os.fspath(dataset_dir)}."
    )
    path = _generate(dataset_dir, *args, data_list_file_path, overwrite_datalist=True)
    _remove_stale_files(os.fspath(dataset_dir), _own_files(stale_datalist) - _own_files(_read_datalist(path) or {}))
    return path
