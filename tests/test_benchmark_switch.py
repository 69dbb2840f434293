"""scripts/benchmark_switch.py in-process on tiny data: both variants step, their op counts differ as the switch
implies (no timed assertions)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_NET
from scripts import benchmark_switch


def test_group_norm_kernel_dispatches_fewer_ops_than_instance_norms(tiny_dataset, capsys):
    threads = torch.get_num_threads()
    r = benchmark_switch.main(
        switch={"group_norm_kernel": False},
        config="train.yaml",
        batch_size=2,
        image_size=32,
        rounds=1,
        iterations=1,
        warmup=1,
        threads=1,
        overrides={**TINY_NET, "samples_per_subject": 2, "val_slices_per_subject": 1},
        **tiny_dataset,
    )
    default, switched = r["default"], r["switched"]
    # instance norms (switched off): a reshape, two repeats of the affine parameters and their backward per layer
    assert switched["ops_per_step"] > default["ops_per_step"] + 4 * 18
    assert default["step_s"] > 0 and switched["step_s"] > 0 and r["switch_over_default"] > 0
    printed = capsys.readouterr().out
    assert "train.yaml, batch 2 @ 32: {'group_norm_kernel': False}" in printed and "switch_over_default" in printed
    assert printed.rstrip().endswith(f"({r['device']})") and torch.get_num_threads() == threads  # restored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"switch": {}}, "non-empty dict"),
        ({"switch": {"amp": True}, "config": "inference.yaml"}, "inference.yaml"),
        ({"switch": {"tf32": True, "amp": True}}, r"\['tf32'\] set process-wide torch flags"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark_switch.main(**kwargs)
