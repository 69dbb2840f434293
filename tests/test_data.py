"""Data contract: datalist reading, subject-level split, image_size rule, slice sampling of the pre-training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader

from bundle.data import as_image_size, as_modality_pair, load_datalist, subject_id, train_val_split
from bundle.transforms import ForegroundMaskd, ForegroundSlicesd
from conftest import config_path


def test_image_size_rule():
    assert as_image_size(64) == (64, 64)
    assert as_image_size([64, 48]) == (64, 48)
    with pytest.raises(ValueError, match=r"image_size \[16, 16\] is too small: each side must be >= 32"):
        as_image_size(16)
    with pytest.raises(ValueError, match="int or"):
        as_image_size("64")


def test_modality_pair_rule():
    assert as_modality_pair(["flair", "t2"]) == ["flair", "t2"]
    for bad in (["t1"], ["t1", "t1"], "t1", ["t1", "label"]):
        with pytest.raises(ValueError, match="modalities"):
            as_modality_pair(bad)


def test_load_datalist_resolves_paths_and_subjects(tiny_dataset):
    dl = load_datalist(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], ["t1", "t2"])
    assert len(dl["training"]) == 8 and dl["validation"] == []
    rec = dl["training"][0]
    assert rec["subject"] == "demo_000" and rec["t1"].startswith(tiny_dataset["dataset_dir"])
    assert subject_id({"t1": "/x/BraTS_001_t1.nii.gz"}, ["t1"]) == "BraTS_001"


def test_load_datalist_reports_every_problem(tmp_path, tiny_dataset):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"training": [{"subject": "s1", "t1": "a.nii.gz"}, {"subject": "s2", "t2": "b.nii.gz"}]})
    )
    with pytest.raises(ValueError) as err:
        load_datalist(path, tmp_path, ["t1", "t2"])
    msg = str(err.value)
    assert "2 problem(s)" in msg and "subject s1: missing key(s) ['t2']" in msg and "subject s2" in msg
    path.write_text('{"training": [}')
    with pytest.raises(ValueError, match="malformed JSON at line 1"):
        load_datalist(path, tmp_path, ["t1"])
    path.write_text(json.dumps({"training": [{"subject": "s1", "t1": "gone.nii.gz"}]}))
    with pytest.raises(ValueError, match="subject s1, key 't1': file not found: .*gone.nii.gz"):
        load_datalist(path, tmp_path, ["t1"])
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        load_datalist(tmp_path / "missing.json", tmp_path, ["t1"])


def test_train_val_split_is_seeded_and_subject_level(tiny_dataset):
    dl = load_datalist(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], ["t1", "t2"])
    dl["training"] = dl["training"] + [dict(r) for r in dl["training"][:3]]  # several records per subject
    a, b = train_val_split(dl, 0.25, seed=1), train_val_split(dl, 0.25, seed=1)
    assert [r["subject"] for r in a["validation"]] == [r["subject"] for r in b["validation"]]
    train_s, val_s = {r["subject"] for r in a["training"]}, {r["subject"] for r in a["validation"]}
    assert len(val_s) == 2 and not train_s & val_s and len(train_s | val_s) == 8
    assert train_val_split({**dl, "validation": dl["training"][:1]}, 0.25)["validation"] == dl["training"][:1]


def test_foreground_slices_are_deterministic_and_non_empty():
    img = torch.zeros(1, 8, 8, 10)
    img[:, 2:6, 2:6, 3:7] = 1.0
    d = ForegroundMaskd(keys=["a"])({"a": img, "b": img * 2})
    slices = ForegroundSlicesd(keys=["a", "b"], num_slices=3)(d)
    assert [s["slice_index"] for s in slices] == [3, 5, 6]
    assert all(s["a"].shape == (1, 8, 8) and s["a"].sum() > 0 and "foreground" not in s for s in slices)


def _train_loader(overrides: dict):
    parser = ConfigParser()
    parser.read_config(config_path("pretrain.yaml"))
    parser.update(overrides)
    return parser.get_parsed_content("train#dataloader")


@pytest.mark.parametrize("device_cache", [False, "auto"])  # the per-sample chain; auto on a CPU: the batched sampler
def test_pretrain_batches_pair_slices_of_distinct_subjects(pretrain_overrides, device_cache):
    torch.manual_seed(0)
    loader = _train_loader({**pretrain_overrides, "batch_size": 3, "device_cache": device_cache})
    assert isinstance(loader, DataLoader) == (device_cache is False)
    head_fractions = []
    for _ in range(3):  # several passes: different random slices and flips
        for batch in loader:
            assert batch["t1"].shape == (3, 1, 32, 32) and batch["t2"].shape == (3, 1, 32, 32)
            if device_cache is False:  # the sampler's own test checks its subjects (test_device_data.py)
                assert len(set(batch["subject"])) == 3, batch["subject"]  # never two slices of one subject
            a, b = batch["t1"], batch["t2"]
            assert a.min() >= -1 and a.max() <= 1
            # same position and the same flips in both modalities: identical head masks
            assert torch.equal(a != 0, b != 0)
            head_fractions.append(float((a != 0).float().mean()))
    assert len(head_fractions) == 3 * 2  # 6 training subjects, batch 3, drop_last
    # foreground-aware sampling: slices are mostly not empty (both paths average 0.32 over 200 batches; about 7% of
    # single batches fall under 0.2, so the mean of the 6 is tested)
    assert sum(head_fractions) / len(head_fractions) > 0.2


def test_pretrain_slices_are_z_scored_per_volume(pretrain_overrides):
    parser = ConfigParser()
    parser.read_config(config_path("pretrain.yaml"))
    parser.update(pretrain_overrides)
    ds = parser.get_parsed_content("validate#dataset")
    item = ds[0][0]
    for key in ("t1", "t2"):
        values = np.asarray(item[key])
        assert values.shape == (1, 32, 32)
        assert np.all(values[values != 0] > -1) and np.all(values <= 1)
