# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Speed and memory of pre-training, fine-tuning and inference, measured through the bundle configs.

    python scripts/benchmark_speed.py --batch_size 8 --image_size 64
    python scripts/benchmark_speed.py --batch_size 16 --image_size 160 --amp True --channels_last True   # on a GPU

For pre-training and fine-tuning it prints s/iteration, slices/s and peak memory (CPU RSS; CUDA max allocated on a
GPU) of (a) the full bundle workflow (engine, handlers, data loading from the cache) and (b) the bare training step
on batches already in memory, measured in the same run, and their ratio (a)/(b). Then the inference time per volume
of the segmentation network (SliceInferer) on a 240x240x155 volume. ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import fire
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CONFIGS = os.path.join(ROOT, "configs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _workflow(config: str, overrides: dict, run_id: str):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=os.path.join(CONFIGS, config),
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        logging_file=os.path.join(CONFIGS, "logging.conf"),
        workflow_type=None,
        run_id=run_id,
        **overrides,
    )
    wf.initialize()
    return wf


def _measure(wf, batch_slices: int, iterations: int, warmup: int) -> dict[str, Any]:
    """(a) the engine's own iterations [warmup, warmup + iterations) and (b) bare steps on batches kept in memory."""
    from ignite.engine import Events

    trainer = wf.parser.get_parsed_content("train#trainer")
    device = torch.device(trainer.state.device)
    marks: dict[int, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _mark(engine):
        if engine.state.iteration in (warmup, warmup + iterations):
            _sync(device)
            marks[engine.state.iteration] = time.perf_counter()

    wf.run()
    workflow_s = (marks[warmup + iterations] - marks[warmup]) / iterations
    loader = wf.parser.get_parsed_content("train#dataloader")
    batches = []
    while len(batches) < warmup + iterations:
        batches += list(loader)
    batches = batches[: warmup + iterations]
    for batch in batches[:warmup]:
        trainer._iteration(trainer, batch)
    _sync(device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        trainer._iteration(trainer, batch)
    _sync(device)
    bare_s = (time.perf_counter() - start) / iterations
    return {
        "workflow_s_per_iteration": round(workflow_s, 4),
        "bare_s_per_iteration": round(bare_s, 4),
        "workflow_over_bare": round(workflow_s / bare_s, 3),
        "slices_per_s": round(batch_slices / workflow_s, 2),
        "device": str(device),
        **_memory(device),
    }


def benchmark(
    batch_size: int = 8,
    image_size: int = 64,
    iterations: int = 10,
    warmup: int = 3,
    amp: bool = False,
    channels_last: bool = False,
    parts: tuple[str, ...] = ("pretrain", "finetune", "inference"),
    inference_shape: tuple[int, int, int] = (240, 240, 155),
    threads: int | None = None,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Run the selected ``parts`` and print one line each; returns (and optionally writes) the numbers."""
    import bundle  # noqa: F401  (imported by the configs)
    from bundle.demo_data import ensure_demo_dataset

    if threads:
        torch.set_num_threads(int(threads))
    results: dict[str, Any] = {
        "settings": {"batch_size": batch_size, "image_size": image_size, "amp": amp, "channels_last": channels_last},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        side = max(64, int(image_size))
        datalist = ensure_demo_dataset(
            data, os.path.join(data, "datalist.json"), num_subjects=max(24, 2 * batch_size + 8), shape=(side, side, 32)
        )
        common = {
            "bundle_root": ROOT,
            "dataset_dir": data,
            "data_list_file_path": datalist,
            "image_size": image_size,
            "amp": amp,
            "epochs": 1,
            "val_interval": 1,
            "validate_voxels": False,
        }
        if "pretrain" in parts:
            overrides = {
                **common,
                "ckpt_dir": os.path.join(tmp, "pre"),
                "output_dir": os.path.join(tmp, "pre_out"),
                "batch_size": batch_size,
                "epoch_length": warmup + iterations,
                "channels_last": channels_last,
                "log_interval": 10**6,
            }
            wf = _workflow("pretrain.yaml", overrides, "training")
            results["pretrain"] = _measure(wf, batch_size, iterations, warmup)
            _print("pre-training", results["pretrain"], batch_size, image_size)
        if "finetune" in parts:
            overrides = {
                **common,
                "ckpt_dir": os.path.join(tmp, "models"),
                "output_dir": os.path.join(tmp, "fine_out"),
                "pretrained_ckpt": None,
                "batch_size": batch_size,
                "epoch_length": warmup + iterations,
            }
            wf = _workflow("train.yaml", overrides, "run")
            results["finetune"] = _measure(wf, batch_size, iterations, warmup)
            _print("fine-tuning", results["finetune"], batch_size, image_size)
        if "inference" in parts:
            results["inference"] = _inference(image_size, inference_shape, amp)
            print(
                f"inference: {results['inference']['s_per_volume']:.3f} s/volume for {list(inference_shape)} "
                f"({results['inference']['device']})"
            )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def _inference(image_size: int, shape: tuple[int, int, int], amp: bool, repeats: int = 3) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "inference.yaml"))
    parser.update({"bundle_root": ROOT, "image_size": image_size})
    network = parser.get_parsed_content("network").eval()
    inferer = parser.get_parsed_content("inferer")
    device = torch.device(parser.get_parsed_content("device"))
    volume = torch.randn(1, 1, *shape, device=device)
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(amp)):
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            out = inferer(volume, network)
            _sync(device)
            times.append(time.perf_counter() - start)
    assert out.shape[2:] == volume.shape[2:]
    return {"s_per_volume": round(min(times[1:]), 4), "device": str(device), **_memory(device)}


def _print(name: str, r: dict, batch_size: int, image_size: int) -> None:
    memory = f"peak RSS {r['peak_rss_mb']:.0f} MB" + (
        f", CUDA max allocated {r['cuda_max_allocated_mb']:.0f} MB" if "cuda_max_allocated_mb" in r else ""
    )
    print(
        f"{name} batch {batch_size} @ {image_size}: workflow {r['workflow_s_per_iteration']:.3f} s/it, bare step "
        f"{r['bare_s_per_iteration']:.3f} s/it, ratio {r['workflow_over_bare']:.3f}, {r['slices_per_s']:.1f} slices/s, "
        f"{memory} ({r['device']})"
    )


if __name__ == "__main__":
    fire.Fire(benchmark)
