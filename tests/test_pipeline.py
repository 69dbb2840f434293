"""The whole pipeline on tiny data: pre-train -> fine-tune -> evaluate -> infer -> translate."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np

from conftest import ROOT, TINY_NET, config_path, run_workflow


def test_pretrain_finetune_evaluate_infer_translate(tiny_dataset, tiny_generators, tmp_path):
    common = {"bundle_root": str(ROOT), **tiny_dataset, "image_size": 32}
    models = str(tmp_path / "models")
    train = {
        **common,
        "ckpt_dir": models,
        "output_dir": str(tmp_path / "train"),
        "pretrained_ckpt": tiny_generators,
        "label_fraction": 0.5,
        "epochs": 1,
        "epoch_length": 2,
        "val_interval": 1,
        "batch_size": 4,
        "samples_per_subject": 2,
        "val_fraction": 0.25,
        "features": TINY_NET["features"],
    }
    run_workflow(config_path("train.yaml"), train, workflow_type="train")
    assert os.path.isfile(os.path.join(models, "model.pt"))
    assert (tmp_path / "train" / "init.txt").read_text().startswith("init: pretrained")

    run_workflow(
        [config_path("train.yaml"), config_path("evaluate.yaml")], {**train, "output_dir": str(tmp_path / "eval")}
    )
    with open(tmp_path / "eval" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    infer = {**common, "ckpt_dir": models, "output_dir": str(tmp_path / "masks"), "features": TINY_NET["features"]}
    run_workflow(config_path("inference.yaml"), infer, workflow_type="infer")
    translate = {**common, "ckpt_dir": os.path.dirname(tiny_generators), "output_dir": str(tmp_path / "synthetic")}
    run_workflow(config_path("translate.yaml"), translate)

    for subject in ("demo_008", "demo_009"):
        source = nib.load(os.path.join(tiny_dataset["dataset_dir"], subject, f"{subject}_t1.nii.gz"))
        mask = nib.load(tmp_path / "masks" / f"{subject}_t1_seg.nii.gz")
        synthetic = nib.load(tmp_path / "synthetic" / f"{subject}_t1_synthetic_t2.nii.gz")
        for out in (mask, synthetic):
            assert out.shape == source.shape
            np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        fg = np.asarray(source.dataobj) != 0
        assert np.all(np.asarray(synthetic.dataobj)[~fg] == 0) and np.any(np.asarray(synthetic.dataobj)[fg] != 0)
