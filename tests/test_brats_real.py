"""
Real BraTS 2018 end to end at tiny scale (slow; skipped without the data): scripts/prepare_datalist.py on the
development folder, pre-training FLAIR <-> T2 on the training subjects' images, fine-tuning with 1 labelled subject,
whole-tumour evaluation per held-out subject, and scripts/brats_dev.py at its smoke scale.

The folder is ``../shared/data/brats2018_dev`` beside the repository (its SOURCE.md), or ``$BRATS_DEV_DIR``; it is
read in place, never copied.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.handlers import checkpoint_run_record
from bundle.records import load_generators
from conftest import ROOT, config_path, run_workflow, tiny_overrides

DATA = Path(os.environ.get("BRATS_DEV_DIR", ROOT.parent / "shared" / "data" / "brats2018_dev"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real BraTS development data not found at {DATA}"),
]

PRE, TRAIN, EVAL, BRATS = (config_path(n) for n in ("pretrain.yaml", "train.yaml", "evaluate.yaml", "brats.yaml"))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def datalist(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The datalist of the real folder, written by the CLI into a temporary folder (2 testing subjects held out)."""
    out = tmp_path_factory.mktemp("brats_real") / "datalist.json"
    cmd = [sys.executable, "scripts/prepare_datalist.py", "--dataset_dir", str(DATA), "--output", str(out)]
    cmd += ["--modalities", "['flair','t2']", "--test_fraction", "0.25", "--val_fraction", "0.125", "--seed", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "layout brats2021" in proc.stdout and "subjects: 8 (training 5, validation 1, testing 2)" in proc.stdout
    return {"dataset_dir": str(DATA), "data_list_file_path": str(out), "list": json.loads(out.read_text())}


def test_real_brats_pretrain_finetune_one_subject_evaluate(datalist: dict, tmp_path: Path) -> None:
    dl = datalist["list"]
    dataset = {k: datalist[k] for k in ("dataset_dir", "data_list_file_path")}
    ids = {section: [r["subject"] for r in dl[section]] for section in ("training", "validation", "testing")}
    assert [len(ids[s]) for s in ("training", "validation", "testing")] == [5, 1, 2]
    assert not (set(ids["training"]) | set(ids["validation"])) & set(ids["testing"])
    assert all(r["flair"].endswith("_flair.nii.gz") and r["label"].endswith("_seg.nii.gz") for r in dl["testing"])

    # pre-training on the training subjects' FLAIR and T2 (the BraTS preset; a tiny schedule)
    pre = tiny_overrides(
        dataset, tmp_path / "pre", batch_size=4, epoch_length=2, val_slices_per_subject=2, image_pool_size=2,
        log_interval=1, cache_num_workers=2,
    )
    run_workflow([PRE, BRATS], pre, run_id="training")
    generators = tmp_path / "pre" / "ckpt" / "generators.pt"
    record = load_generators(generators)[1]
    assert record["preprocessing"]["modalities"] == ["flair", "t2"]
    assert record["preprocessing"]["intensity"] == {"flair": "mri", "t2": "mri"}
    assert record["training"]["settings"]["data_list_file_path"] == dataset["data_list_file_path"]
    assert len(_csv(tmp_path / "pre" / "out" / "losses.csv")) == 2
    (val,) = _csv(tmp_path / "pre" / "out" / "validation_metrics.csv")
    # FLAIR vs T2 of a real brain: far from equal, far from unrelated (the identity mapping is the reference)
    assert 12.0 < float(val["val_psnr_identity"]) < 35.0
    assert all(math.isfinite(float(val[k])) for k in ("val_psnr_ab", "val_psnr_ba", "val_ssim_ab", "val_mae_ab"))
    # the pre-training read the training and validation subjects' images only, never a testing file or a label
    run_record = checkpoint_run_record(str(tmp_path / "pre" / "ckpt" / "checkpoints" / "checkpoint_final.pt"))
    files = {os.path.basename(p) for p in run_record["data"]["files"]}
    expected = {f"{s}_{m}.nii.gz" for s in ids["training"] + ids["validation"] for m in ("flair", "t2")}
    assert files == expected

    # fine-tuning FLAIR with 1 labelled subject (whole tumour), initialised from G_AB
    fine = {
        "bundle_root": str(ROOT), **dataset, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "ft"),
        "pretrained_ckpt": str(generators), "label_fraction": 0.01, "batch_size": 4, "samples_per_subject": 2,
        "epochs": 1, "epoch_length": 2, "val_interval": 1, "cache_num_workers": 2,
    }
    run_workflow([TRAIN, BRATS], fine)
    selection = json.loads((tmp_path / "ft" / "label_subjects.json").read_text())
    assert len(selection["training_subjects"]) == 1 and selection["label_fraction"] == 0.01  # ceil(0.01 * 5)
    assert set(selection["training_subjects"]) <= set(ids["training"])
    assert selection["validation_subjects"] == ids["validation"]
    assert (tmp_path / "ft" / "init.txt").read_text().startswith("init: pretrained")
    model = json.loads((tmp_path / "models" / "model.json").read_text())
    assert {int(k): v for k, v in model["labels"]["label_map"].items()} == {1: 1, 2: 1, 4: 1}  # whole tumour

    # evaluation on the held-out subjects, one row each, in the labels' own voxel counts
    run_workflow([TRAIN, EVAL, BRATS], {**fine, "output_dir": str(tmp_path / "eval")})
    rows = _csv(tmp_path / "eval" / "metrics.csv")
    assert sorted(r["subject"] for r in rows) == sorted(ids["testing"])
    for row, rec in zip(sorted(rows, key=lambda r: r["subject"]), sorted(dl["testing"], key=lambda r: r["subject"])):
        seg = np.asarray(nib.load(os.path.join(DATA, rec["label"])).dataobj)
        assert int(row["label_voxels"]) == int(np.isin(seg, [1, 2, 4]).sum()) > 0  # WT = {1, 2, 4}, nothing resampled
        assert 0.0 <= float(row["dice"]) <= 1.0
        assert 0 <= int(row["pred_voxels"]) <= seg.size
        assert float(row["hd95"]) >= 0.0 or math.isnan(float(row["hd95"]))
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["n_subjects"] == 2


def test_brats_dev_script_smoke_scale(datalist: dict, tmp_path: Path, capsys) -> None:
    """scripts/brats_dev.py end to end at its smoke scale: per-subject rows for every run and PSNR vs identity."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import brats_dev

    out = tmp_path / "brats_dev"
    brats_dev.main(scale="smoke", data_dir=str(DATA), output_dir=str(out), seeds=[0], scratch=False)
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "identity" in printed
    rows = _csv(out / "results.csv")
    testing = sorted(r["subject"] for r in json.loads((out / "datalist.json").read_text())["testing"])
    # one pre-trained init x {1 subject, all} x 1 seed, one row per held-out subject
    assert sorted({(r["init"], r["labelled"]) for r in rows}) == [("pretrained_seed0", "1"), ("pretrained_seed0", "5")]
    for labelled in ("1", "5"):
        assert sorted(r["subject"] for r in rows if r["labelled"] == labelled) == testing
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    (pre,) = _csv(out / "pretraining.csv")
    assert float(pre["psnr_gain_ab"]) == pytest.approx(float(pre["val_psnr_ab"]) - float(pre["val_psnr_identity"]))
