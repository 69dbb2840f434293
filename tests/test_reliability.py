"""Resume, atomic and non-destructive checkpoints, run fingerprint, divergence guard."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.handlers import RNGState, check_finite, latest_checkpoint
from bundle.losses import ContrastiveTerm
from conftest import build_trainer, config_path, paired_batches, run_workflow

PRETRAIN = config_path("pretrain.yaml")


def _pretrain(overrides: dict, **extra) -> ConfigWorkflow:
    return run_workflow(PRETRAIN, {**overrides, **extra}, run_id="training")


def test_resume_continues_epoch_lr_and_optimizer_state(pretrain_overrides, tmp_path):
    common = {**pretrain_overrides, "epochs": 2, "lr_decay_start_epoch": 0, "save_interval": 1, "val_interval": 2}
    full = _pretrain({**common, "ckpt_dir": str(tmp_path / "full"), "output_dir": str(tmp_path / "full_out")})
    # "crash" after epoch 1: same schedule (epochs 2), but the trainer stops after its first epoch's checkpoint
    _pretrain(common, **{"train#trainer#max_epochs": 1})
    ckpt_dir = os.path.join(common["ckpt_dir"], "checkpoints")
    first = torch.load(os.path.join(ckpt_dir, "checkpoint_epoch=1.pt"), weights_only=True)
    resumed = _pretrain(common, resume=True)

    t_full, t_res = (wf.parser.get_parsed_content("train#trainer") for wf in (full, resumed))
    assert (t_res.state.epoch, t_res.state.iteration) == (t_full.state.epoch, t_full.state.iteration) == (2, 4)
    for name in ("g_optimizer", "d_optimizer"):
        opt_full, opt_res = full.parser.get_parsed_content(name), resumed.parser.get_parsed_content(name)
        assert opt_res.param_groups[0]["lr"] == pytest.approx(opt_full.param_groups[0]["lr"])
        steps = {float(s["step"]) for s in opt_res.state.values()}
        assert steps == {4.0}, steps  # the moments continued from the checkpoint (2 steps) for 2 more
    sched = resumed.parser.get_parsed_content("g_lr_scheduler")
    assert sched.last_epoch == full.parser.get_parsed_content("g_lr_scheduler").last_epoch == 2
    assert first["trainer"]["iteration"] == 2 and "pool_a" in first and "rng_state" in first
    assert json.load(open(os.path.join(common["ckpt_dir"], "run_config.json")))["resumed"] is True


def test_resume_refuses_other_settings_and_missing_checkpoints(pretrain_overrides):
    with pytest.raises(SystemExit, match="holds no complete checkpoint"):
        ConfigWorkflow(config_file=PRETRAIN, workflow_type=None, **pretrain_overrides, resume=True).initialize()
    _pretrain(pretrain_overrides, epochs=1)
    changed = {**pretrain_overrides, "lambda_cycle": 5.0, "resume": True, "epochs": 2}
    with pytest.raises(SystemExit, match=r"settings differ .*lambda_cycle: 10.0 -> 5.0"):
        ConfigWorkflow(config_file=PRETRAIN, workflow_type=None, **changed).initialize()


def test_truncated_newest_checkpoint_is_skipped(pretrain_overrides):
    _pretrain(pretrain_overrides)  # 2 epochs, a checkpoint every epoch
    ckpt_dir = os.path.join(pretrain_overrides["ckpt_dir"], "checkpoints")
    os.remove(os.path.join(ckpt_dir, "checkpoint_final.pt"))
    newest = os.path.join(ckpt_dir, "checkpoint_epoch=2.pt")
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 3])  # a kill in the middle of a (non-atomic) save
    assert latest_checkpoint(ckpt_dir) == os.path.join(ckpt_dir, "checkpoint_epoch=1.pt")
    assert not [f for f in os.listdir(ckpt_dir) if f.startswith("tmp")]  # atomic saves leave no partial files


def test_overwrite_moves_the_earlier_run_aside(pretrain_overrides, tmp_path):
    _pretrain(pretrain_overrides, epochs=1)
    ckpt_dir, out = pretrain_overrides["ckpt_dir"], pretrain_overrides["output_dir"]
    before = torch.load(os.path.join(ckpt_dir, "generators.pt"))
    with pytest.raises(SystemExit, match="already holds checkpoints of an earlier run"):
        ConfigWorkflow(config_file=PRETRAIN, workflow_type=None, **pretrain_overrides).initialize()
    other = {**pretrain_overrides, "ckpt_dir": str(tmp_path / "other")}  # another run into the same output_dir
    with pytest.raises(SystemExit, match=rf"--output_dir {out} already holds the outputs of an earlier run \(\d+ file"):
        ConfigWorkflow(config_file=PRETRAIN, workflow_type=None, **other).initialize()
    metrics = open(os.path.join(out, "validation_metrics.csv")).read()
    _pretrain(pretrain_overrides, epochs=1, overwrite=True, seed=1)
    (stamp,) = os.listdir(os.path.join(ckpt_dir, "previous"))
    kept = torch.load(os.path.join(ckpt_dir, "previous", stamp, "generators.pt"))
    assert torch.equal(kept["g_ab"]["conv_0.conv_0.conv.weight"], before["g_ab"]["conv_0.conv_0.conv.weight"])
    assert os.path.isfile(os.path.join(ckpt_dir, "previous", stamp, "run_config.json"))
    # the outputs move too: the new folder holds only the new run's (one epoch 1), the earlier ones are kept
    (stamp,) = os.listdir(os.path.join(out, "previous"))
    assert open(os.path.join(out, "previous", stamp, "validation_metrics.csv")).read() == metrics
    assert os.path.isfile(os.path.join(out, "previous", stamp, "run_config.json"))
    assert [line[:2] for line in open(os.path.join(out, "validation_metrics.csv"))][1:] == ["1,"]
    assert json.load(open(os.path.join(out, "run_config.json")))["settings"]["seed"] == 1


def test_nan_loss_stops_training_before_any_weight_changes():
    batches = paired_batches()
    trainer = build_trainer(batches)
    before = [p.clone() for p in trainer.generators.parameters()]
    bad = {k: v.clone() for k, v in batches[0].items()}
    bad["t2"][0, 0, 0, 0] = float("nan")
    out = trainer._iteration(trainer, bad)  # skipped (DivergenceGuard raises within log_interval: test_step_sync)
    assert not torch.isfinite(out["losses"]["pix2pix"])
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.generators.parameters()))
    with pytest.raises(FloatingPointError, match=r"\['loss'\] became NaN/inf at epoch 3, iteration 7"):
        check_finite(float("inf"), 3, 7)


def test_divergence_in_a_run_keeps_the_last_good_checkpoint(pretrain_overrides, monkeypatch):
    _pretrain(pretrain_overrides, epochs=1)
    ckpt_dir = pretrain_overrides["ckpt_dir"]
    good = open(os.path.join(ckpt_dir, "checkpoints", "checkpoint_final.pt"), "rb").read()
    shutil.rmtree(pretrain_overrides["output_dir"])
    original = ContrastiveTerm.forward

    def nan_contrastive(self, *args, **kwargs):
        return original(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(ContrastiveTerm, "forward", nan_contrastive)
    with pytest.raises(RuntimeError) as err:  # the config expression wraps the trainer's error
        _pretrain(pretrain_overrides, epochs=2, resume=True)
    assert "['contrastive', 'g_total'] became NaN/inf at epoch 2, iteration 3" in str(err.value.__cause__)
    assert open(os.path.join(ckpt_dir, "checkpoints", "checkpoint_final.pt"), "rb").read() == good


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = RNGState().state_dict()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    RNGState().load_state_dict(state)
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
