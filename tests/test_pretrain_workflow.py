"""Pre-training configs end to end: the CLI, in-process ConfigWorkflow runs, outputs and clear errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import BasicUNet
from PIL import Image

from bundle.records import load_generators
from conftest import ROOT, config_path, make_workflow


def _workflow(overrides: dict) -> ConfigWorkflow:
    return make_workflow(config_path("pretrain.yaml"), overrides, run_id="training")


def test_cli_pretraining_writes_checkpoints_generators_previews_and_metrics(pretrain_overrides):
    args = []
    for key, value in {**pretrain_overrides, "log_interval": 1}.items():
        args += [f"--{key}", str(value)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/pretrain.yaml"]
    proc = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt_dir, out_dir = pretrain_overrides["ckpt_dir"], pretrain_overrides["output_dir"]

    ckpts = sorted(os.listdir(os.path.join(ckpt_dir, "checkpoints")))
    assert "checkpoint_final.pt" in ckpts and any(c.startswith("checkpoint_epoch=") for c in ckpts)
    full = torch.load(os.path.join(ckpt_dir, "checkpoints", "checkpoint_final.pt"), weights_only=False)
    assert {"generators", "discriminators", "g_optimizer", "d_optimizer", "g_lr_scheduler", "trainer"} <= set(full)
    assert full["trainer"]["iteration"] == 4 and full["trainer"]["epoch_length"] == 2

    gens, record = load_generators(os.path.join(ckpt_dir, "generators.pt"))
    assert sorted(torch.load(os.path.join(ckpt_dir, "generators.pt"))) == ["g_ab", "g_ba"]  # weights only
    assert record["network"]["args"]["features"] == pretrain_overrides["features"]
    assert record["preprocessing"]["modalities"] == ["t1", "t2"] and record["training"]["epoch"] == 2
    assert record["preprocessing"]["image_size"] == [32, 32] and record["preprocessing"]["intensity"]["t2"] == "mri"
    assert record["training"]["settings"]["lambda_pix2pix"] == 100.0
    net = BasicUNet(**record["network"]["args"])
    net.load_state_dict(gens["g_ab"])  # strict: the stored arguments rebuild the same topology

    preview = Image.open(os.path.join(out_dir, "preview_epoch0002.png"))
    assert preview.size == (4 * 32, 4 * 32)  # A | G_AB(A) | B | G_BA(B), one row per validation slice (2 x 2)
    with open(os.path.join(out_dir, "validation_metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("val_mae_ab", "val_psnr_ab", "val_ssim_ab", "val_mae_ba", "val_mae_identity", "val_psnr_identity"):
        assert all(float(r[key]) == float(r[key]) for r in rows), key
    log = Path(out_dir, "pretrain_log.txt").read_text()
    for term in ("g_total", "adversarial", "cycle", "pix2pix", "contrastive", "d_a", "d_b"):
        assert f"{term}: " in log, term  # every loss term logged by name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out_dir))


def test_ablation_switches_in_config(pretrain_overrides):
    overrides = {
        **pretrain_overrides,
        "shared_blocks": [],
        "lambda_contrastive": 0.0,
        "lambda_cycle": 0.0,
        "epochs": 1,
        "epoch_length": 1,
    }
    wf = _workflow(overrides)
    gens = wf.parser.get_parsed_content("generators")
    assert gens.shared_parameter_names() == []
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.run()
    losses = trainer.state.output["losses"]
    assert "contrastive" not in losses and "cycle" not in losses and "pix2pix" in losses and "d_a" in losses
    wf.finalize()


def test_existing_checkpoints_are_not_overwritten(pretrain_overrides):
    os.makedirs(os.path.join(pretrain_overrides["ckpt_dir"], "checkpoints"))
    marker = os.path.join(pretrain_overrides["ckpt_dir"], "checkpoints", "checkpoint_final.pt")
    Path(marker).write_text("earlier run")
    with pytest.raises(SystemExit, match="already holds checkpoints of an earlier run"):
        _workflow(pretrain_overrides)
    assert Path(marker).read_text() == "earlier run"


def test_too_small_image_size_is_rejected(pretrain_overrides):
    with pytest.raises(SystemExit, match=r"image_size \[16, 16\] is too small: each side must be >= 32"):
        _workflow({**pretrain_overrides, "image_size": 16})
    assert not os.path.exists(pretrain_overrides["ckpt_dir"])
