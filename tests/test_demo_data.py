# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the synthetic multimodal demo dataset generator (bundle/demo_data.py)."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from bundle import demo_data  # noqa: E402

NUM_SUBJECTS, NUM_TEST, SHAPE, SEED = 6, 2, (32, 32, 16), 3
DEFAULT_SHAPE = (64, 64, 32)
KEYS = ("t1", "t2", "label")
TISSUE = {name: value for value, name in demo_data.DEMO_TISSUES.items()}


def _generate(root: Path, **kwargs) -> tuple[Path, dict]:
    params = {"num_subjects": NUM_SUBJECTS, "num_test": NUM_TEST, "shape": SHAPE, "seed": SEED, **kwargs}
    path = demo_data.generate_demo_dataset(root, **params)
    with open(path) as f:
        return Path(path), json.load(f)


def _load_subject(root: Path, item: dict) -> dict[str, nib.Nifti1Image]:
    return {key: nib.load(root / item[key]) for key in KEYS}


def _arrays(root: Path, datalist: dict) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for item in datalist["training"] + datalist["testing"]:
        out[item["subject"]] = {k: np.asarray(img.dataobj) for k, img in _load_subject(root, item).items()}
    return out


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """6-neighbourhood dilation (the demo volumes have a background border, so wrapping around is harmless)."""
    out = mask
    for _ in range(steps):
        grown = out.copy()
        for axis in range(out.ndim):
            grown |= np.roll(out, 1, axis) | np.roll(out, -1, axis)
        out = grown
    return out


def _erode_cube(mask: np.ndarray) -> np.ndarray:
    """Voxels whose whole 3x3x3 neighbourhood is in ``mask`` (out of reach of the partial volume blur)."""
    grown = ~mask
    for axis in range(mask.ndim):
        grown = grown | np.roll(grown, 1, axis) | np.roll(grown, -1, axis)
    return ~grown


def _best_balanced_accuracy(positive: np.ndarray, negative: np.ndarray) -> float:
    """Best balanced accuracy of a single intensity threshold separating two sets of voxels (0.5: no separation)."""
    values = np.concatenate([positive, negative])
    is_positive = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])[np.argsort(values, kind="stable")]
    # "positive if above the i-th smallest value"; 1 - accuracy is the accuracy of the reverse rule
    accuracy = 0.5 * (1.0 - np.cumsum(is_positive) / positive.size + np.cumsum(1.0 - is_positive) / negative.size)
    return float(max(accuracy.max(), 1.0 - accuracy.min()))


def _explained_variance(x: np.ndarray, y: np.ndarray, bins: int = 24) -> float:
    """Fraction of the variance of ``y`` explained by ``x`` (correlation ratio over ``bins`` quantile bins of x)."""
    edges = np.quantile(x, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    residual = sum(((y[which == b] - y[which == b].mean()) ** 2).sum() for b in np.unique(which))
    return float(1.0 - residual / ((y - y.mean()) ** 2).sum())


def _moment_ellipsoid_iou(mask: np.ndarray) -> float:
    """IoU of a mask with the ellipsoid of the same centre and second moments (about 1 for an ellipsoid)."""
    points = np.argwhere(mask).astype(np.float64)
    centre = points.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov((points - centre).T))
    grid = np.indices(mask.shape).reshape(mask.ndim, -1).T - centre
    ellipsoid = ((((grid @ eigvec) ** 2) / (5.0 * eigval)).sum(axis=1) <= 1.0).reshape(mask.shape)
    return np.count_nonzero(ellipsoid & mask) / np.count_nonzero(ellipsoid | mask)


def _quadratic_fit(values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Least-squares fit of a 2nd order polynomial of the voxel coordinates ``points`` (n, 3) to ``values``."""
    u = [(c - c.mean()) / c.std() for c in points.T]
    design = np.stack([np.ones_like(u[0]), *u, *(a * b for i, a in enumerate(u) for b in u[i:])], axis=1)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return design @ coef


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    path, datalist = _generate(root)
    return root, path, datalist


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """A few subjects with the default shape (64, 64, 32) and seed."""
    root = tmp_path_factory.mktemp("demo_default")
    _, datalist = _generate(root, num_subjects=5, num_test=1, shape=DEFAULT_SHAPE, seed=0)
    return root, datalist


@pytest.fixture(scope="module")
def subjects() -> list:
    """Subjects 0-5 of the default demo (shape and seed), in memory, with their tissue maps."""
    return [demo_data.synthesize_subject(0, index, DEFAULT_SHAPE) for index in range(6)]


def _tissue_masks(subject) -> dict[str, np.ndarray]:
    return {name: subject.tissue == value for name, value in TISSUE.items()}


def _images(subject) -> tuple[np.ndarray, np.ndarray]:
    return subject.images["t1"].astype(np.float64), subject.images["t2"].astype(np.float64)


def test_public_api():
    assert demo_data.DEMO_MODALITIES == ("t1", "t2")
    assert callable(demo_data.generate_demo_dataset) and callable(demo_data.ensure_demo_dataset)
    assert callable(demo_data.synthesize_subject)
    assert (demo_data.GENERATOR_NAME, demo_data.GENERATOR_VERSION) == ("multi_condos.demo_data", 2)
    assert set(demo_data.DEMO_LABELS) == {"0", "1", "2"}


def test_datalist_structure(dataset):
    root, path, datalist = dataset
    assert path == root / "datalist.json"
    assert datalist["name"] == "multi-condos demo"
    assert isinstance(datalist["description"], str) and datalist["description"]
    assert datalist["modalities"] == ["t1", "t2"]
    assert datalist["labels"] == {"0": "background", "1": "lesion core (necrosis + enhancing rim)", "2": "edema"}
    assert datalist["label_convention"] == "demo"
    # the generator, its version and its arguments are recorded
    generator = datalist["generator"]
    assert generator["name"] == "multi_condos.demo_data" and generator["version"] == demo_data.GENERATOR_VERSION == 2
    assert (generator["seed"], generator["shape"]) == (SEED, list(SHAPE))
    assert (generator["num_subjects"], generator["num_test"]) == (NUM_SUBJECTS, NUM_TEST)
    assert set(generator["modalities"]) == {"t1", "t2"}
    subjects = [f"demo_{i:03d}" for i in range(NUM_SUBJECTS)]
    assert [d["subject"] for d in datalist["training"]] == subjects[: NUM_SUBJECTS - NUM_TEST]
    assert [d["subject"] for d in datalist["testing"]] == subjects[NUM_SUBJECTS - NUM_TEST :]
    for item in datalist["training"] + datalist["testing"]:
        sub = item["subject"]
        assert set(item) == {"subject", "t1", "t2", "label"}
        for key in KEYS:
            assert item[key] == f"{sub}/{sub}_{key}.nii.gz"
            assert not os.path.isabs(item[key])
            assert (root / item[key]).is_file()
    # no temporary files are left behind
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp")]
    # the relative paths resolve with MONAI's decathlon loader
    train = load_decathlon_datalist(str(path), data_list_key="training", base_dir=str(root))
    assert len(train) == NUM_SUBJECTS - NUM_TEST
    assert all(os.path.isfile(d[k]) for d in train for k in KEYS)


def test_geometry_and_dtypes(dataset):
    root, _, datalist = dataset
    for item in datalist["training"] + datalist["testing"]:
        imgs = _load_subject(root, item)
        for key, img in imgs.items():
            assert img.shape == SHAPE, key
            np.testing.assert_array_equal(img.affine, imgs["label"].affine)
            np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))
        np.testing.assert_allclose(np.diag(imgs["t1"].affine), (1.0, 1.0, 1.0, 1.0))
        assert imgs["t1"].get_data_dtype() == np.float32 and imgs["t2"].get_data_dtype() == np.float32
        assert imgs["label"].get_data_dtype() == np.uint8
    # the same (fixed) affine for all subjects
    affines = [_load_subject(root, d)["t1"].affine for d in datalist["training"]]
    assert all(np.array_equal(a, affines[0]) for a in affines)


def test_labels_and_background(dataset):
    root, _, datalist = dataset
    for sub, arr in _arrays(root, datalist).items():
        t1, t2, label = arr["t1"], arr["t2"], arr["label"]
        assert set(np.unique(label).tolist()) == {0, 1, 2}, sub
        lesion = label > 0
        assert np.count_nonzero(lesion) >= 20, sub
        assert np.count_nonzero(lesion.any(axis=(0, 1))) >= 3, f"{sub}: lesion must span several axial slices"
        # the same head mask in both modalities: background exactly 0, head strictly positive
        head = t1 != 0
        np.testing.assert_array_equal(head, t2 != 0)
        assert np.all(t1[head] > 0) and np.all(t2[head] > 0)
        assert np.all(t1[~head] == 0.0) and np.all(t2[~head] == 0.0)
        assert 0.1 < head.mean() < 0.6, f"{sub}: head covers {head.mean():.2f} of the volume"
        # the corners and border slices of the field of view are background
        assert not head[0].any() and not head[-1].any() and not head[:, 0].any() and not head[:, -1].any()
        # the lesion is inside the head
        assert np.all(head[lesion])
        assert np.all(label[~head] == 0)
        assert t1.max() > 100.0  # realistic-ish intensity range, not [0, 1]


def test_files_are_the_synthesized_subjects(default_dataset, subjects):
    root, datalist = default_dataset
    for index, (sub, arr) in enumerate(_arrays(root, datalist).items()):
        subject = subjects[index]
        for key in ("t1", "t2"):
            assert arr[key].tobytes() == subject.images[key].tobytes(), (sub, key)
        assert arr["label"].tobytes() == subject.label.tobytes(), sub


def test_labels_follow_the_lesion_subregions(subjects):
    for index, subject in enumerate(subjects):
        masks = _tissue_masks(subject)
        core, edema = subject.label == 1, subject.label == 2
        # label 1 = necrosis + enhancing rim, label 2 = edema, nothing else is labelled
        np.testing.assert_array_equal(core, masks["necrosis"] | masks["enhancing rim"])
        np.testing.assert_array_equal(edema, masks["edema"])
        assert np.count_nonzero(masks["necrosis"]) >= 40 and np.count_nonzero(masks["enhancing rim"]) >= 60, index
        assert np.count_nonzero(edema) >= 150, index
        # the necrosis is enclosed by the enhancing rim: it never touches a voxel outside the core
        assert not np.any(_dilate(masks["necrosis"]) & ~core), index
        # the edema wraps the core: most voxels next to the core are edema (the rest: CSF or cortex it touches)
        outside = _dilate(core) & ~core
        assert np.count_nonzero(outside & edema) > 0.6 * np.count_nonzero(outside), index
        # the lesion lies in the brain parenchyma, never in the ventricles, the scalp or the skull
        for name in ("CSF", "scalp", "skull", "background"):
            assert not np.any(masks[name] & (subject.label > 0)), (index, name)


def test_tissue_contrast_inverts_between_modalities(subjects):
    for index, subject in enumerate(subjects):
        t1, t2 = _images(subject)
        masks = _tissue_masks(subject)
        csf, gm, wm = (masks[k] for k in ("CSF", "grey matter", "white matter"))
        assert t1[wm].mean() > t1[gm].mean() > t1[csf].mean(), index
        assert t2[csf].mean() > t2[gm].mean() > t2[wm].mean(), index
        assert t1[wm].mean() > 2.0 * t1[csf].mean() and t2[csf].mean() > 1.4 * t2[wm].mean(), index
    # at 32x32x16 the CSF and the cortex are 1-2 voxels thin, mostly partial volume: white matter still inverts
    for index in range(4):
        subject = demo_data.synthesize_subject(SEED, index, SHAPE)
        t1, t2 = _images(subject)
        masks = _tissue_masks(subject)
        csf, gm, wm = (masks[k] for k in ("CSF", "grey matter", "white matter"))
        assert t1[wm].mean() > max(t1[gm].mean(), t1[csf].mean()) + 100.0, index
        assert t2[wm].mean() < min(t2[gm].mean(), t2[csf].mean()) - 50.0, index


def test_edema_faint_in_t1_bright_in_t2(subjects):
    for index, subject in enumerate(subjects):
        t1, t2 = _images(subject)
        masks = _tissue_masks(subject)
        edema = masks["edema"]
        white_around = _dilate(edema, 3) & masks["white matter"]
        csf = masks["CSF"]
        # faint in t1: within ~10% of the white matter around it; in t2 more than 1.4 times as bright
        assert abs(1.0 - t1[edema].mean() / t1[white_around].mean()) < 0.12, index
        assert t2[edema].mean() > 1.4 * t2[white_around].mean(), index
        # so no t1 threshold tells edema from the white matter around it, while a t2 threshold does ...
        assert _best_balanced_accuracy(t1[edema], t1[white_around]) < 0.85, index
        assert _best_balanced_accuracy(t2[edema], t2[white_around]) > 0.95, index
        # ... and the reverse holds for edema and CSF: the modalities carry complementary information
        assert _best_balanced_accuracy(t1[edema], t1[csf]) > 0.95, index
        assert _best_balanced_accuracy(t2[edema], t2[csf]) < 0.9, index


def test_core_subregion_contrasts(subjects):
    for index, subject in enumerate(subjects):
        t1, t2 = _images(subject)
        masks = _tissue_masks(subject)
        rim, necrosis, edema, wm = (masks[k] for k in ("enhancing rim", "necrosis", "edema", "white matter"))
        # enhancing rim: the brightest brain tissue in t1 (contrast-enhanced), a darker band in t2
        assert t1[rim].mean() > 1.08 * t1[wm].mean() and t1[rim].mean() > t1[edema].mean(), index
        assert t2[rim].mean() < 0.9 * t2[necrosis].mean() and t2[rim].mean() < t2[edema].mean(), index
        # necrosis: dark in t1, bright (fluid-like) in t2
        assert t1[necrosis].mean() < 0.85 * t1[wm].mean() and t1[necrosis].mean() < 0.7 * t1[rim].mean(), index
        assert t2[necrosis].mean() > 1.6 * t2[wm].mean(), index


def test_t2_is_not_a_function_of_t1(default_dataset):
    root, datalist = default_dataset
    for sub, arr in _arrays(root, datalist).items():
        t1, t2, label = (arr[k].astype(np.float64) for k in KEYS)
        lesion, edema = label > 0, label == 2
        region = (lesion | _dilate(lesion, 3)) & (t1 > 0)  # the lesion and the tissue around it
        # t1 explains little of the variance of t2 (a tissue-class remapping of t1 explains nearly all of it)
        assert _explained_variance(t1[region], t2[region]) < 0.5, sub
        # voxels of nearly equal t1 (within +-2%) have widely different t2: edema vs the normal tissue around it
        level = np.median(t1[edema])
        same_t1 = region & (np.abs(t1 - level) < 0.02 * level)
        assert np.count_nonzero(same_t1 & edema) >= 20 and np.count_nonzero(same_t1 & ~lesion) >= 20, sub
        assert t2[same_t1 & edema].mean() > 1.3 * t2[same_t1 & ~lesion].mean(), sub


def test_irregular_lesions(subjects, dataset):
    root, _, datalist = dataset
    lesions = [s.label > 0 for s in subjects] + [a["label"] > 0 for a in _arrays(root, datalist).values()]
    iou = np.array([_moment_ellipsoid_iou(mask) for mask in lesions])
    # an ellipsoid, even a small voxelised one, fills its moment ellipsoid; the lesions are lobulated
    grid = np.indices(SHAPE)
    ellipsoid = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (15.3, 16.0, 7.6), (4.5, 3.2, 2.6))) <= 1.0
    assert _moment_ellipsoid_iou(ellipsoid) > 0.85
    assert np.all(iou < 0.85) and iou.mean() < 0.78, iou.round(3)
    # and no two lesions are alike
    assert len({np.count_nonzero(mask) for mask in lesions}) == len(lesions)


def test_partial_volume(subjects):
    for index, subject in enumerate(subjects):
        _, t2 = _images(subject)
        masks = _tissue_masks(subject)
        wm, csf = masks["white matter"], masks["CSF"]
        interior, next_to_csf = _erode_cube(wm), wm & _dilate(csf)
        # white matter voxels next to CSF are partly CSF: their t2 is well on the way to CSF's
        gain = (t2[next_to_csf].mean() - t2[interior].mean()) / (t2[csf].mean() - t2[interior].mean())
        assert 0.1 < gain < 0.6, (index, gain)


def test_bias_field_and_noise(subjects):
    for index, subject in enumerate(subjects):
        t1, t2 = _images(subject)
        masks = _tissue_masks(subject)
        # each modality has its own smooth bias field: inside tissue classes (out of reach of the partial volume),
        # where the texture is the same in both modalities, log(t1 / t2) varies smoothly by several percent
        values, points = [], []
        for name in ("CSF", "grey matter", "white matter"):
            inner = _erode_cube(masks[name])
            if np.count_nonzero(inner) >= 50:
                ratio = np.log(t1[inner] / t2[inner])
                values.append(ratio - ratio.mean())
                points.append(np.argwhere(inner))
        fit = _quadratic_fit(np.concatenate(values), np.concatenate(points).astype(np.float64))
        assert np.exp(np.percentile(fit, 95) - np.percentile(fit, 5)) > 1.04, index
        # noise: neighbouring voxels of the white matter interior differ by ~2-4% of its intensity
        interior = _erode_cube(masks["white matter"])
        pairs = interior[1:] & interior[:-1]
        for image in (t1, t2):
            noise = np.std((image[1:] - image[:-1])[pairs]) / np.sqrt(2.0) / image[interior].mean()
            assert 0.01 < noise < 0.1, (index, noise)
            assert len(np.unique(image[interior])) > 0.99 * np.count_nonzero(interior), index


def test_synthesize_subject_arguments():
    a, b = demo_data.synthesize_subject(1, 2, SHAPE), demo_data.synthesize_subject(1, 2, list(SHAPE))
    assert all(a.images[k].tobytes() == b.images[k].tobytes() for k in ("t1", "t2"))
    assert a.tissue.dtype == np.uint8 and set(np.unique(a.tissue).tolist()) == set(demo_data.DEMO_TISSUES)
    with pytest.raises(ValueError, match="index"):
        demo_data.synthesize_subject(0, -1, SHAPE)
    with pytest.raises(ValueError, match=">= 16"):
        demo_data.synthesize_subject(0, 0, (32, 32, 8))
    with pytest.raises(TypeError):
        demo_data.synthesize_subject(0, 1.0, SHAPE)


def test_deterministic(dataset, tmp_path):
    root, _, datalist = dataset
    reference = _arrays(root, datalist)
    _, same_datalist = _generate(tmp_path / "same")
    again = _arrays(tmp_path / "same", same_datalist)
    assert same_datalist == datalist
    for sub in reference:
        for key in KEYS:
            assert reference[sub][key].tobytes() == again[sub][key].tobytes(), (sub, key)
    _, other_datalist = _generate(tmp_path / "other", seed=SEED + 1)
    other = _arrays(tmp_path / "other", other_datalist)
    for sub in reference:
        for key in KEYS:
            assert not np.array_equal(reference[sub][key], other[sub][key]), (sub, key)


def test_subject_independent_of_num_subjects(dataset, tmp_path):
    root, _, datalist = dataset
    reference = _arrays(root, datalist)
    _, bigger_datalist = _generate(tmp_path, num_subjects=NUM_SUBJECTS + 2, num_test=3)
    bigger = _arrays(tmp_path, bigger_datalist)
    assert len(bigger) == NUM_SUBJECTS + 2 and len(bigger_datalist["testing"]) == 3
    for sub in reference:
        for key in KEYS:
            assert reference[sub][key].tobytes() == bigger[sub][key].tobytes(), (sub, key)


def test_default_shape_lesion_size(default_dataset):
    root, datalist = default_dataset
    for sub, arr in _arrays(root, datalist).items():
        assert arr["t1"].shape == (64, 64, 32)
        lesion = arr["label"] > 0
        assert np.count_nonzero(lesion) >= 300, sub
        assert np.count_nonzero(arr["label"] == 1) >= 30, sub
        assert np.count_nonzero(lesion.any(axis=(0, 1))) >= 4, sub


def test_custom_datalist_path(tmp_path):
    target = tmp_path / "lists" / "my_list.json"
    path = demo_data.generate_demo_dataset(tmp_path / "data", 5, 1, SHAPE, 0, data_list_file_path=target)
    assert path == str(target) and target.is_file()
    assert not (tmp_path / "data" / "datalist.json").exists()
    datalist = json.loads(target.read_text())
    assert (tmp_path / "data" / datalist["testing"][0]["t2"]).is_file()


def test_ensure_demo_dataset(tmp_path):
    root, target = tmp_path / "data", tmp_path / "data" / "datalist.json"
    path = demo_data.ensure_demo_dataset(root, target, num_subjects=5, num_test=1, shape=SHAPE, seed=1)
    assert path == str(target)
    content, mtime = target.read_bytes(), os.stat(target).st_mtime_ns
    datalist = json.loads(content)
    assert len(datalist["training"]) == 4 and len(datalist["testing"]) == 1
    # a second call (even with other arguments) is a no-op: nothing is regenerated or overwritten
    removed = root / datalist["training"][0]["t1"]
    removed.unlink()
    assert demo_data.ensure_demo_dataset(root, target, num_subjects=8, num_test=2, seed=5) == str(target)
    assert target.read_bytes() == content and os.stat(target).st_mtime_ns == mtime
    assert not removed.exists()
    assert not (root / "demo_005").exists()


def test_ensure_keeps_foreign_datalist(tmp_path):
    target = tmp_path / "datalist.json"
    target.write_text('{"custom": true}\n')
    mtime = os.stat(target).st_mtime_ns
    assert demo_data.ensure_demo_dataset(tmp_path, target, shape=SHAPE) == str(target)
    assert target.read_text() == '{"custom": true}\n' and os.stat(target).st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datalist.json"]


def _stale_demo(root: Path, target: Path, version) -> dict:
    """A demo folder as an older (``version=None``: version 1, which recorded none) or other version wrote it."""
    demo_data.ensure_demo_dataset(root, target, num_subjects=6, num_test=1, shape=SHAPE, seed=1)
    datalist = json.loads(target.read_text())
    if version is None:
        del datalist["generator"]
    else:
        datalist["generator"]["version"] = version
    # other images than the current version's, and one more subject than will be regenerated
    (root / "demo_000" / "demo_000_t1.nii.gz").write_bytes((root / "demo_001" / "demo_001_t1.nii.gz").read_bytes())
    (root / "demo_006").mkdir()
    extra = {"subject": "demo_006"}
    for key in KEYS:
        extra[key] = f"demo_006/demo_006_{key}.nii.gz"
        (root / extra[key]).write_bytes(b"old")
    # files that are not the generator's: one listed under another name, two unlisted
    extra["mask"] = "custom/mask.nii.gz"
    (root / "custom").mkdir()
    (root / "custom" / "mask.nii.gz").write_bytes(b"mine")
    (root / "demo_006" / "notes.txt").write_text("mine")
    (root / "README.txt").write_text("mine")
    datalist["testing"].append(extra)
    target.write_text(json.dumps(datalist))
    return datalist


@pytest.mark.parametrize("version, logged", [(None, "version 1"), (1, "version 1"), (99, "version 99")])
def test_ensure_regenerates_stale_version(tmp_path, caplog, version, logged):
    root, target = tmp_path / "data", tmp_path / "data" / "datalist.json"
    _stale_demo(root, target, version)
    # invalid arguments are refused before anything is touched
    before = target.read_bytes()
    with pytest.raises(ValueError, match="at least 4"):
        demo_data.ensure_demo_dataset(root, target, num_subjects=3, num_test=0, shape=SHAPE, seed=1)
    assert target.read_bytes() == before
    with caplog.at_level(logging.WARNING, logger=demo_data.GENERATOR_NAME):
        path = demo_data.ensure_demo_dataset(root, target, num_subjects=5, num_test=1, shape=SHAPE, seed=1)
    assert path == str(target)
    assert logged in caplog.text and "regenerating" in caplog.text and "own data" in caplog.text
    datalist = json.loads(target.read_text())
    assert datalist["generator"]["version"] == demo_data.GENERATOR_VERSION
    assert datalist["generator"]["num_subjects"] == 5
    subjects = [item["subject"] for item in datalist["training"] + datalist["testing"]]
    assert subjects == [f"demo_{i:03d}" for i in range(5)]
    # the images are the current version's again
    fresh = demo_data.synthesize_subject(1, 0, SHAPE)
    assert (
        np.asarray(nib.load(root / "demo_000" / "demo_000_t1.nii.gz").dataobj).tobytes() == fresh.images["t1"].tobytes()
    )
    # the generator's stale files are gone (and their emptied folder); nobody else's file is touched
    assert not (root / "demo_005").exists()
    assert sorted(p.name for p in (root / "demo_006").iterdir()) == ["notes.txt"]
    assert (root / "custom" / "mask.nii.gz").read_bytes() == b"mine" and (root / "README.txt").is_file()
    # the regenerated folder is current: a further call is a no-op
    caplog.clear()
    content = target.read_bytes()
    demo_data.ensure_demo_dataset(root, target, num_subjects=8, num_test=2, shape=SHAPE, seed=5)
    assert target.read_bytes() == content and not caplog.text


@pytest.mark.parametrize(
    "content",
    [
        {"name": "my data", "label_convention": "demo", "training": []},  # not this generator's name
        {"generator": {"name": "someone.else", "version": 1}, "name": "multi-condos demo", "training": []},
        "not a datalist",
    ],
)
def test_ensure_keeps_other_generators_datalists(tmp_path, content):
    target = tmp_path / "datalist.json"
    target.write_text(json.dumps(content) if isinstance(content, dict) else content)
    before = target.read_bytes()
    assert demo_data.ensure_demo_dataset(tmp_path, target, shape=SHAPE) == str(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datalist.json"]


def test_ensure_concurrent(tmp_path):
    target = tmp_path / "datalist.json"
    errors = []

    def _run():
        try:
            demo_data.ensure_demo_dataset(tmp_path, target, num_subjects=5, num_test=1, shape=SHAPE)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=_run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    datalist = json.loads(target.read_text())
    assert len(datalist["training"]) == 4
    for item in datalist["training"] + datalist["testing"]:
        for key in KEYS:
            assert nib.load(tmp_path / item[key]).get_fdata().shape == SHAPE
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_subjects": 6, "num_test": 6}, "greater than num_test"),
        ({"num_subjects": 6, "num_test": 8}, "greater than num_test"),
        ({"num_subjects": 6, "num_test": -1}, "num_test must be >= 0"),
        ({"num_subjects": 5, "num_test": 2}, "at least 4"),
        ({"num_subjects": 3, "num_test": 0}, "at least 4"),
        ({"shape": (32, 32)}, "exactly 3 elements"),
        ({"shape": (32, 32, 16, 1)}, "exactly 3 elements"),
        ({"shape": (32, 15, 16)}, ">= 16"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    params = {"num_subjects": 6, "num_test": 2, "shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=message):
        demo_data.generate_demo_dataset(tmp_path / "data", **params)
    with pytest.raises(ValueError, match=message):
        demo_data.ensure_demo_dataset(tmp_path / "data", tmp_path / "data" / "datalist.json", **params)
    assert not (tmp_path / "data").exists()  # validated before anything is written


@pytest.mark.parametrize("kwargs", [{"shape": 32}, {"shape": (32.0, 32, 16)}, {"num_subjects": 6.5}])
def test_bad_argument_types(tmp_path, kwargs):
    with pytest.raises(TypeError):
        demo_data.generate_demo_dataset(tmp_path, **{"num_test": 2, "shape": SHAPE, **kwargs})


def test_ensure_unknown_argument(tmp_path):
    with pytest.raises(ValueError, match="unexpected"):
        demo_data.ensure_demo_dataset(tmp_path, tmp_path / "datalist.json", num_subject=5)
