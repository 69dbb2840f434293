"""scripts/profile_step.py in-process on tiny data: the profile covers exactly the profiled steps of the workflow's
own trainer (no timed assertions)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from conftest import TINY_NET
from scripts import profile_step


def test_profile_counts_one_backward_per_convolution_per_step(tiny_dataset, capsys):
    steps = 2
    results = profile_step.main(
        config="train.yaml",
        batch_sizes=[2],
        image_size=32,
        steps=steps,
        warmup=1,
        overrides={**TINY_NET, "samples_per_subject": 2, "val_slices_per_subject": 1},
        **tiny_dataset,
    )
    (r,) = results
    assert r["batch_size"] == 2
    network = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=TINY_NET["features"])
    convolutions = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in network.modules())
    # the bare step and the workflow iteration: one weight gradient per convolution layer and profiled step
    for part in ("bare", "workflow"):
        assert r[part]["step_s"] > 0
        backward = {key: per_step for key, _, per_step in r[part]["top_host"]}.get("aten::convolution_backward")
        assert backward == convolutions, part
    printed = capsys.readouterr().out
    assert "train.yaml, batch 2, bare step:" in printed and "train.yaml, batch 2, workflow iteration:" in printed
    assert "top ops by host ms/step" in printed
    if not torch.cuda.is_available():
        assert r["bare"]["busy_s_per_step"] == 0 and "device busy" not in printed


def test_unknown_config_is_refused_before_any_work(tiny_dataset):
    with pytest.raises(ValueError, match="inference.yaml"):
        profile_step.main(config="inference.yaml", **tiny_dataset)
