# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The synthetic brain phantom of the demo dataset (``bundle.demo_data`` writes it to disk): one subject's T1-Gd-like
and T2-like volumes, its labels and its tissue map, from a seed and an index. A random head (scalp, skull, CSF, a
grey matter cortex with sulci, white matter, deep grey nuclei, ventricles) holds one lobulated lesion in the white
matter: a necrotic centre inside an enhancing rim (label 1) surrounded by edema (label 2) that is faint in T1 and
bright in T2, with partial volume, a bias field per modality and Rician noise. See ``bundle.demo_data`` for the
contrasts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEMO_MODALITIES",
    "DEMO_TISSUES",
    "DemoSubject",
    "check_int",
    "check_seed",
    "check_shape",
    "synthesize_subject",
]

#: the modalities of every subject (datalist keys)
DEMO_MODALITIES: tuple[str, ...] = ("t1", "t2")

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


def check_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise TypeError(f"shape must be a sequence of 3 integers, got {shape!r}.")
    if len(shape) != 3:
        raise ValueError(f"shape must have exactly 3 elements (spatial dims), got {len(shape)}: {tuple(shape)!r}.")
    spatial = tuple(check_int("shape elements", s) for s in shape)
    if min(spatial) < 16:
        raise ValueError(f"every element of shape must be >= 16, got {spatial}.")
    return spatial


def check_seed(seed: Any) -> int:
    seed = check_int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    return seed


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
    seed, shape = check_seed(seed), check_shape(shape)
    index = check_int("index", index)
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
