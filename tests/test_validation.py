"""Input validation: every bad input kind stops the run cleanly, naming the file and the problem, writing nothing."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from bundle.validation import DataProblems, validate_records
from conftest import ROOT, TINY_NET, config_path, make_workflow

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.fixture()
def small_dataset(tmp_path: Path) -> dict:
    """5 subjects of 32x32x8 t1/t2/label and their datalist (paths relative to the dataset folder)."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    records = []
    for i in range(5):
        sid = f"s{i}"
        img = np.zeros((32, 32, 8), np.float32)
        img[6:26, 6:26, 1:7] = rng.uniform(100, 200, (20, 20, 6))
        label = np.zeros((32, 32, 8), np.uint8)
        label[12:18, 12:18, 3:5] = 1
        label[14:16, 14:16, 3:5] = 2
        _write(root / sid / f"{sid}_t1.nii.gz", img)
        _write(root / sid / f"{sid}_t2.nii.gz", img[::-1].copy())
        _write(root / sid / f"{sid}_label.nii.gz", label)
        records.append({"subject": sid, **{k: f"{sid}/{sid}_{k}.nii.gz" for k in ("t1", "t2", "label")}})
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": records}))
    return {"root": root, "datalist": datalist, "records": records}


def _overrides(small_dataset: dict, tmp_path: Path) -> dict:
    return {
        "bundle_root": str(ROOT),
        "dataset_dir": str(small_dataset["root"]),
        "data_list_file_path": str(small_dataset["datalist"]),
        "ckpt_dir": str(tmp_path / "ckpt"),
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "batch_size": 2,
        "val_fraction": 0.25,
        **TINY_NET,
    }


def _corrupt(kind: str, ds: dict) -> tuple[str, str]:
    """Damage the dataset; returns (config, expected message regex)."""
    s1 = ds["root"] / "s1"
    if kind == "malformed_json":
        ds["datalist"].write_text('{"training": [{"subject": "s0",}]}')
        return "pretrain.yaml", r"datalist.json: malformed JSON at line 1 column \d+"
    if kind == "no_training_list":
        ds["datalist"].write_text(json.dumps({"testing": ds["records"]}))
        return "pretrain.yaml", r"datalist.json: a datalist needs a 'training' list"
    if kind == "missing_key":
        records = [dict(r) for r in ds["records"]]
        del records[1]["t2"]
        ds["datalist"].write_text(json.dumps({"training": records}))
        return "pretrain.yaml", r"subject s1: missing key\(s\) \['t2'\]"
    if kind == "missing_file":
        os.remove(s1 / "s1_t2.nii.gz")
        return "pretrain.yaml", r"subject s1, key 't2': file not found: .*s1_t2.nii.gz"
    if kind == "empty_file":
        (s1 / "s1_t2.nii.gz").write_bytes(b"")
        return "pretrain.yaml", r"subject s1, key 't2', file .*s1_t2.nii.gz: empty file"
    if kind == "truncated_gzip":
        data = (s1 / "s1_t2.nii.gz").read_bytes()
        (s1 / "s1_t2.nii.gz").write_bytes(data[: len(data) // 2])
        return "pretrain.yaml", r"subject s1, key 't2', file .*s1_t2.nii.gz: (truncated or corrupt|not a readable)"
    if kind == "not_an_image":
        with gzip.open(s1 / "s1_t2.nii.gz", "wb") as f:
            f.write(b"this is a text file, not a NIfTI image\n" * 20)
        return "pretrain.yaml", r"subject s1, key 't2', file .*s1_t2.nii.gz: not a readable image"
    if kind == "shape_mismatch":
        _write(s1 / "s1_t2.nii.gz", np.ones((32, 30, 8), np.float32))
        return "pretrain.yaml", r"subject s1, key 't2', file .*s1_t2.nii.gz: shape \(32, 30, 8\) differs from 't1'"
    if kind == "affine_mismatch":
        _write(s1 / "s1_t2.nii.gz", np.ones((32, 32, 8), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
        return "pretrain.yaml", r"subject s1, key 't2', file .*s1_t2.nii.gz: affine differs from 't1'"
    if kind == "nan_voxels":
        data = np.ones((32, 32, 8), np.float32)
        data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
        _write(s1 / "s1_t2.nii.gz", data)
        return "pretrain.yaml", r"subject s1, key 't2', file .*s1_t2.nii.gz: 2 NaN/inf voxel\(s\)"
    if kind == "label_values":
        label = np.zeros((32, 32, 8), np.uint8)
        label[5, 5, 5] = 4
        _write(s1 / "s1_label.nii.gz", label)
        return "train.yaml", r"subject s1, key 'label', file .*s1_label.nii.gz: label values \[4\] not in label_map"
    if kind == "too_few_subjects":
        ds["datalist"].write_text(json.dumps({"training": ds["records"][:2]}))
        return "pretrain.yaml", r"pre-training training records: 1 record\(s\), at least 2 needed"
    raise ValueError(kind)


KINDS = [
    "malformed_json",
    "no_training_list",
    "missing_key",
    "missing_file",
    "empty_file",
    "truncated_gzip",
    "not_an_image",
    "shape_mismatch",
    "affine_mismatch",
    "nan_voxels",
    "label_values",
    "too_few_subjects",
]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_stops_cleanly_and_writes_nothing(kind, small_dataset, tmp_path):
    config, message = _corrupt(kind, small_dataset)
    overrides = _overrides(small_dataset, tmp_path)
    if config == "train.yaml":
        overrides.update({"pretrained_ckpt": "$None", "epochs": 1, "val_interval": 1})
    wf = ConfigWorkflow(config_file=config_path(config), workflow_type=None, **overrides)
    with pytest.raises(SystemExit) as err:
        wf.initialize()
    assert str(err.value).startswith("ERROR: ")
    assert re.search(message, str(err.value)), str(err.value)
    assert not os.path.exists(tmp_path / "ckpt") and not os.path.exists(tmp_path / "out")


def test_all_problems_are_reported_at_once(small_dataset):
    root = small_dataset["root"]
    os.remove(root / "s1" / "s1_t2.nii.gz")
    (root / "s2" / "s2_t1.nii.gz").write_bytes(b"")
    records = [{k: str(root / v) if k != "subject" else v for k, v in r.items()} for r in small_dataset["records"]]
    with pytest.raises(DataProblems) as err:
        validate_records(records, ["t1", "t2"], "label", {1: 1, 2: 1})
    assert len(err.value.problems) == 2 and "s1_t2" in str(err.value) and "s2_t1" in str(err.value)


def test_validate_data_run_prints_a_summary(small_dataset, tmp_path, capsys):
    """``python -m monai.bundle run validate_data``, in-process: the checks and their summary, nothing written."""
    make_workflow(config_path("pretrain.yaml"), _overrides(small_dataset, tmp_path), run_id="validate_data").run()
    printed = capsys.readouterr().out
    assert "pre-training training records: 4 subject(s) checked, no problem found" in printed
    assert "shapes: [(32, 32, 8)]" in printed and "intensity range 't1'" in printed
    assert not os.path.exists(tmp_path / "ckpt") and not os.path.exists(tmp_path / "out")
    assert not os.path.exists(tmp_path / "ckpt") and not os.path.exists(tmp_path / "out")


def test_cli_data_error_has_no_traceback(small_dataset, tmp_path):
    _corrupt("nan_voxels", small_dataset)
    overrides = _overrides(small_dataset, tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/pretrain.yaml"]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 1
    assert "NaN/inf voxel(s)" in proc.stderr and "Traceback" not in proc.stderr
