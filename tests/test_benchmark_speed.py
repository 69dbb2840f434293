"""scripts/benchmark_speed.py in-process on tiny data: every number it writes, and that its bare fine-tuning step is
the step of the workflow's own trainer (no timed assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, TINY_NET
from scripts import benchmark_speed


def _recording_bare_steps(calls: list[dict[str, Any]]):
    """``benchmark_speed.bare_steps`` that also records the trainer and whether its ``network`` changed."""
    bare_steps = benchmark_speed.bare_steps

    def record(trainer: Any, batches: Any, count: int) -> None:
        network = getattr(trainer, "network", None)  # fine-tuning's SupervisedTrainer (pre-training: generators)
        before = None if network is None else [p.detach().clone() for p in network.parameters()]
        bare_steps(trainer, batches, count)
        changed = None if network is None else any(not torch.equal(a, p) for a, p in zip(before, network.parameters()))
        calls.append({"trainer": trainer, "count": count, "changed": changed})

    return record


def test_benchmark_speed_numbers_and_bare_finetuning_step(tiny_dataset, tmp_path: Path, monkeypatch):
    workflows: dict[str, list[Any]] = {}
    make_workflow = benchmark_speed.bundle_workflow

    def workflow(config: str, *args: Any, **kwargs: Any) -> Any:
        wf = make_workflow(config, *args, **kwargs)
        workflows.setdefault(config, []).append(wf)
        return wf

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(benchmark_speed, "bundle_workflow", workflow)
    monkeypatch.setattr(benchmark_speed, "bare_steps", _recording_bare_steps(calls))
    json_path = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    results = benchmark_speed.benchmark(
        batch_size=2,
        image_size=32,
        rounds=1,
        iterations=1,
        warmup=1,
        inference_rounds=1,
        overrides={**TINY_NET, "samples_per_subject": 2, "val_slices_per_subject": 1},
        volume_shape=(32, 32, 16),
        schedule_epoch_length=2,
        threads=1,  # tiny networks: 1 thread is the fastest, on a loaded machine by far
        json_path=str(json_path),
        **tiny_dataset,
    )
    assert results["threads"] == 1 and torch.get_num_threads() == threads  # restored

    written = json.loads(json_path.read_text())
    assert written == json.loads(json.dumps(results))
    for part, unit in (("pretraining", "iteration"), ("finetuning", "iteration"), ("inference", "volume")):
        numbers = written[part]
        for key in (
            "workflow_over_bare",
            "slices_per_s",
            "bare_slices_per_s",
            "flops_per_iteration",
            f"workflow_s_per_{unit}",
            f"bare_s_per_{unit}",
            "workflow_tflops",
            "bare_tflops",
            "peak_rss_mb",
        ):
            assert math.isfinite(numbers[key]) and numbers[key] > 0, (part, key, numbers[key])
        assert numbers["rounds"] == 1 and len(numbers["workflow_over_bare_per_round"]) == 1
        assert numbers["device"] == "cpu" and numbers["nominal_peak_tflops"] is None  # no fraction off CUDA
    assert written["pretraining"]["slices_per_iteration"] == written["finetuning"]["slices_per_iteration"] == 2
    assert written["inference"]["slices_per_volume"] == 16
    # 3 full epochs (2 iterations each, validation every epoch, a checkpoint at the third), extrapolated to the BraTS
    # preset's 200 epochs with its intervals
    schedule = written["schedule"]
    assert schedule["iterations"] == 2 and schedule["epochs"] == 200
    assert schedule["checkpoints"] == ["checkpoint_epoch=3.pt", "checkpoint_final.pt"]
    parts = [schedule[k] for k in ("iterations_s", "validation_s", "checkpoint_s", "final_s")]
    assert all(v >= 0 for v in parts) and schedule["iterations_s"] > 0 and schedule["validation_s"] > 0
    expected = 200 * parts[0] + 200 / 1 * parts[1] + 200 // 20 * parts[2] + parts[3]
    assert math.isclose(schedule["schedule_s"], expected, rel_tol=0.01, abs_tol=0.2)
    # foreground_only (the default): the inferer crops, and the plain SliceInferer's forward is timed beside it
    assert math.isfinite(written["inference"]["crop_speedup"]) and written["inference"]["plain_bare_s_per_volume"] > 0
    # reading and preprocessing the volume is part of the workflow's time, and only a part of it
    inference = written["inference"]
    assert 0 < inference["preprocess_s_per_volume"] < inference["workflow_s_per_volume"]
    # every transform of inference.yaml timed alone, in order (the second EnsureTyped named apart), and the rest
    stages = list(inference["stage_s_per_volume"])
    assert stages[0] == "LoadImaged" and stages[-2:] == ["Invertd", "SaveImaged"], stages
    assert stages.count("EnsureTyped") == 1 and "EnsureTyped (2)" in stages and "ChannelArgmaxd" in stages
    assert all(v >= 0 for v in inference["stage_s_per_volume"].values())
    assert inference["voxel_check_s_per_volume"] > 0
    stage_sum = sum(inference["stage_s_per_volume"].values())
    outside = inference["workflow_s_per_volume"] - inference["bare_s_per_volume"] - stage_sum
    assert math.isclose(inference["outside_stages_s_per_volume"], outside, abs_tol=1e-3)

    # the bare fine-tuning step is the iteration of the trainer train.yaml built, on its network, loss and optimizer,
    # and it trains that network
    (wf,) = workflows["train.yaml"]
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.network is wf.parser.get_parsed_content("network")
    assert trainer.optimizer is wf.parser.get_parsed_content("optimizer")
    assert trainer.loss_function is wf.parser.get_parsed_content("loss")
    finetuning = [c for c in calls if c["trainer"] is trainer]
    assert [c["count"] for c in finetuning] == [1, 0, 1]  # FLOPs (warm-up), rest of the warm-up, one round
    # the warm-up step changes the weights (the round's step runs at the poly schedule's end: learning rate 0)
    assert finetuning[0]["changed"]
    pre, schedule_run = workflows["pretrain.yaml"]  # the pre-training part's, then the schedule's (no bare steps)
    assert not any(c["trainer"] is schedule_run.parser.get_parsed_content("train#trainer") for c in calls)
    assert sum(c["count"] for c in calls if c["trainer"] is pre.parser.get_parsed_content("train#trainer")) == 2


def test_schedule_intervals_are_the_brats_presets():
    import inspect

    from monai.bundle import ConfigParser

    defaults = inspect.signature(benchmark_speed.measure_schedule).parameters
    preset = ConfigParser.load_config_file(str(ROOT / "configs" / "brats.yaml"))
    assert defaults["save_interval"].default == preset["save_interval"] == 20
    assert preset["val_interval"].startswith(f"${defaults['val_interval'].default} if @stage == 'pretrain' else")
    assert inspect.signature(benchmark_speed.benchmark).parameters["schedule_epochs"].default == 200


def test_benchmark_sampler_times_both_sources_of_each_workflow(tiny_dataset, capsys):
    from scripts import benchmark_sampler

    threads = torch.get_num_threads()
    results = benchmark_sampler.benchmark(
        batch_size=2, image_size=32, rounds=2, warmup=1, threads=1, overrides={"samples_per_subject": 2}, **tiny_dataset
    )
    assert set(results) == {"pretraining", "finetuning"} and torch.get_num_threads() == threads  # restored
    for r in results.values():
        assert r["per_sample_s_per_batch"] > 0 and r["batched_s_per_batch"] > 0
        assert math.isclose(r["per_sample_over_batched"], r["per_sample_s_per_batch"] / r["batched_s_per_batch"])
        assert r["batched_ops_per_batch"] > 0
    printed = capsys.readouterr().out
    assert "tensor ops/batch" in printed
    assert "finetuning, batch 2 @ 32 (1 threads): per-sample chain" in printed and "per_sample_over_batched" in printed
    with pytest.raises(ValueError, match=r"unknown parts \['inference'\]"):
        benchmark_sampler.benchmark(parts=["inference"], **tiny_dataset)


def test_dispatched_ops_counts_the_tensor_operations_of_one_batch():
    from scripts.benchmark_sampler import dispatched_ops

    def batches():
        while True:
            yield torch.ones(4) * 2 + 1  # ones, mul, add

    assert dispatched_ops(batches(), batches=3) == 3
