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
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from .demo_phantom import (
    DEMO_MODALITIES,
    DEMO_TISSUES,
    DemoSubject,
    check_int,
    check_seed,
    check_shape,
    synthesize_subject,
)
from .files import atomic_write

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

DEMO_LABELS: dict[str, str] = {"0": "background", "1": "lesion core (necrosis + enhancing rim)", "2": "edema"}
"""Label values of the demo segmentation maps."""

DEFAULT_DATALIST_NAME = "datalist.json"

logger = logging.getLogger(GENERATOR_NAME)
_OWN_FILE = re.compile(r"(demo_\d{3})/\1_[a-z0-9]+\.nii\.gz")  # the relative paths this generator writes


def _subject_id(index: int) -> str:
    return f"demo_{index:03d}"


def _validate_arguments(
    num_subjects: Any, num_test: Any, shape: Any, seed: Any
) -> tuple[int, int, tuple[int, ...], int]:
    num_subjects = check_int("num_subjects", num_subjects)
    num_test = check_int("num_test", num_test)
    seed = check_seed(seed)
    if num_test < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}.")
    if num_subjects <= num_test:
        raise ValueError(f"num_subjects ({num_subjects}) must be greater than num_test ({num_test}).")
    if num_subjects - num_test < 4:
        raise ValueError(
            f"the training split must keep at least 4 subjects, got num_subjects={num_subjects} and "
            f"num_test={num_test} ({num_subjects - num_test} training subjects)."
        )
    return num_subjects, num_test, check_shape(shape), seed


def _affine(shape: Sequence[int]) -> np.ndarray:
    """1 mm isotropic RAS affine with the origin at the centre of the field of view (same for every subject)."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    return affine


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    def _writer(tmp: str) -> None:
        img = nib.Nifti1Image(array, affine)
        img.header.set_data_dtype(array.dtype)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, tmp)

    atomic_write(path, _writer)


def _write_json(data: dict, path: str, overwrite: bool) -> bool:
    def _writer(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    return atomic_write(path, _writer, overwrite=overwrite)


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
