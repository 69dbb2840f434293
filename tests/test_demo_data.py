# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the synthetic multimodal demo dataset generator (bundle/demo_data.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

_MODULE_PATH = Path(__file__).resolve().parents[1] / "bundle" / "demo_data.py"


def _load_module():
    # load the file directly, so that the test does not depend on the rest of the bundle package
    spec = importlib.util.spec_from_file_location("_multi_condos_demo_data_under_test", _MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo_data = _load_module()

NUM_SUBJECTS, NUM_TEST, SHAPE, SEED = 6, 2, (32, 32, 16), 3
KEYS = ("t1", "t2", "label")


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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    path, datalist = _generate(root)
    return root, path, datalist


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """A few subjects with the default shape (64, 64, 32) and seed."""
    root = tmp_path_factory.mktemp("demo_default")
    _, datalist = _generate(root, num_subjects=5, num_test=1, shape=(64, 64, 32), seed=0)
    return root, datalist


def test_public_api():
    assert demo_data.DEMO_MODALITIES == ("t1", "t2")
    assert callable(demo_data.generate_demo_dataset) and callable(demo_data.ensure_demo_dataset)


def test_datalist_structure(dataset):
    root, path, datalist = dataset
    assert path == root / "datalist.json"
    assert datalist["name"] == "multi-condos demo"
    assert isinstance(datalist["description"], str) and datalist["description"]
    assert datalist["modalities"] == ["t1", "t2"]
    assert datalist["labels"] == {"0": "background", "1": "lesion core", "2": "edema"}
    assert datalist["label_convention"] == "demo"
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
        # the lesion is inside the head, with an edema rim around the core
        assert np.all(head[lesion])
        assert np.all(label[~head] == 0)
        assert t1.max() > 100.0  # realistic-ish intensity range, not [0, 1]


def test_modality_contrast(default_dataset):
    root, datalist = default_dataset
    for sub, arr in _arrays(root, datalist).items():
        t1, t2, label = (arr[k].astype(np.float64) for k in KEYS)
        head = t1 > 0
        normal = head & (label == 0)
        core, edema = label == 1, label == 2
        # t1: lesion core dark compared with the (mostly WM/GM) normal tissue, edema in between
        t1_ref = np.median(t1[normal])
        assert t1[core].mean() < 0.65 * t1_ref, sub
        assert t1[core].mean() < t1[edema].mean() < t1_ref, sub
        # t2: lesion core and edema brighter than the median normal tissue
        t2_ref = np.median(t2[normal])
        assert t2[core].mean() > 1.45 * t2_ref, sub
        assert t2[edema].mean() > 1.3 * t2_ref, sub
        # genuinely different contrasts: the two modalities are anti-correlated over the head
        assert np.corrcoef(t1[head], t2[head])[0, 1] < -0.4, sub
        # the brightest normal tissue in t2 (CSF) is dark in t1
        csf_like = normal & (t2 > np.percentile(t2[normal], 97))
        assert t1[csf_like].mean() < 0.8 * t1_ref, sub


def test_modality_contrast_small(dataset):
    root, _, datalist = dataset
    for sub, arr in _arrays(root, datalist).items():
        t1, t2, label = (arr[k].astype(np.float64) for k in KEYS)
        normal = (t1 > 0) & (label == 0)
        assert t1[label == 1].mean() < 0.8 * np.median(t1[normal]), sub
        assert t2[label == 1].mean() > 1.4 * np.median(t2[normal]), sub


def test_noise_and_bias_present(dataset):
    root, _, datalist = dataset
    arr = _arrays(root, datalist)["demo_000"]
    core = arr["label"] == 1
    # not piecewise constant: noise/bias/texture inside a single tissue class
    assert np.std(arr["t1"][core]) > 0.005 * arr["t1"].max()
    assert len(np.unique(arr["t2"][core])) > 0.9 * np.count_nonzero(core)


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
