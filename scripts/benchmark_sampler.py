# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Time per training batch of its two sources, through the configs themselves: the per-sample MONAI chain
(``train#host_dataloader``: ``RandWeightedCropd`` / ``RandCropByPosNegLabeld`` and the augmentation, per subject)
against the batched sampler (``train#device_dataloader``: ``bundle.device_data``), for pre-training and fine-tuning.
The numbers behind ``bundle/device_data.py``'s docstring.

    python scripts/benchmark_sampler.py --batch_size 8 --image_size 64 --threads 1
    python scripts/benchmark_sampler.py --image_size 64 --preset brats --dataset_dir <folder> \
        --data_list_file_path <datalist.json> --parts "['finetuning']"

The two sources are timed interleaved (one batch of each per round, ``--rounds`` rounds after ``--warmup``), so a
shared machine's load falls on both; the median per batch and their ratio are printed, and the tensor operations
the batched sampler dispatches per batch (each a kernel launch or a copy on a GPU, where the step is launch-bound).
The training cache is filled first and not timed. Without ``--dataset_dir`` a demo dataset is generated in a
temporary folder.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fire
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.workflow_harness import RUN_IDS, OpCounter, bundle_workflow, demo_dataset, sync  # noqa: E402

#: part name -> (config, run id)
PARTS: dict[str, tuple[str, str]] = {
    "pretraining": ("pretrain.yaml", RUN_IDS["pretrain.yaml"]),
    "finetuning": ("train.yaml", RUN_IDS["train.yaml"]),
}


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def dispatched_ops(source: Iterator[Any], batches: int = 4) -> float:
    """The ATen operations (views included) that drawing one batch from ``source`` dispatches, averaged."""
    with OpCounter() as counter:
        for _ in range(batches):
            next(source)
    return counter.count / batches


def time_sources(wf: Any, rounds: int, warmup: int) -> dict[str, float]:
    """
    Median seconds per batch of the workflow's per-sample loader and of its batched sampler, drawn alternately.

    Parameters
    ----------
    wf
        an initialised training workflow whose ``device_cache`` resolved to on.
    rounds
        timed batches of each source.
    warmup
        untimed batches of each source first.
    """
    sources = {
        "per_sample": _endless(wf.parser.get_parsed_content("train#host_dataloader")),
        "batched": _endless(wf.parser.get_parsed_content("train#device_dataloader")),
    }
    device = torch.device(wf.parser.get_parsed_content("device"))
    times: dict[str, list[float]] = {name: [] for name in sources}
    for i in range(warmup + rounds):
        for name, source in sources.items():
            start = time.perf_counter()
            batch = next(source)
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    result = {f"{name}_s_per_batch": statistics.median(t) for name, t in times.items()}
    result["per_sample_over_batched"] = result["per_sample_s_per_batch"] / result["batched_s_per_batch"]
    result["batched_ops_per_batch"] = dispatched_ops(sources["batched"])
    return result


def benchmark(
    batch_size: int = 8,
    image_size: int = 64,
    rounds: int = 30,
    warmup: int = 3,
    parts: Sequence[str] = tuple(PARTS),
    threads: int | None = None,
    preset: str | None = None,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Print, per part, the per-sample chain's and the batched sampler's seconds per batch and their ratio.

    Parameters
    ----------
    batch_size, image_size
        the workflows' ``batch_size`` (slices per batch; fine-tuning: ``samples_per_subject`` 4 each) and
        ``image_size``.
    rounds, warmup
        see ``time_sources``.
    parts
        among ``pretraining``, ``finetuning``.
    threads
        ``torch.set_num_threads`` for the measurement.
    preset
        a preset config merged over each workflow's (``brats``: ``configs/brats.yaml``).
    dataset_dir, data_list_file_path
        the data (default: a generated demo dataset).
    overrides
        config ids set in every workflow.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose among {list(PARTS)}.")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if dataset_dir is None:
                dataset_dir, data_list_file_path = demo_dataset(os.path.join(tmp, "data"), batch_size, image_size)
            for part in parts:
                config, run_id = PARTS[part]
                files = [config] + ([f"{preset}.yaml"] if preset else [])
                wf = bundle_workflow(files, {
                    "bundle_root": ROOT, "dataset_dir": dataset_dir, "ckpt_dir": os.path.join(tmp, part),
                    "data_list_file_path": data_list_file_path or os.path.join(dataset_dir, "datalist.json"),
                    "output_dir": os.path.join(tmp, f"{part}_out"), "batch_size": int(batch_size),
                    "image_size": int(image_size), "device_cache": True, "pretrained_ckpt": None, **(overrides or {}),
                }, run_id)
                results[part] = r = time_sources(wf, int(rounds), int(warmup))
                print(
                    f"{part}, batch {batch_size} @ {image_size} ({torch.get_num_threads()} threads): per-sample chain "
                    f"{r['per_sample_s_per_batch'] * 1000:.2f} ms/batch, batched sampler "
                    f"{r['batched_s_per_batch'] * 1000:.2f} ms/batch "
                    f"({r['batched_ops_per_batch']:.0f} tensor ops/batch), "
                    f"per_sample_over_batched {r['per_sample_over_batched']:.1f} (median of {rounds})"
                )
    finally:
        torch.set_num_threads(previous_threads)
    return results


if __name__ == "__main__":
    fire.Fire(benchmark, serialize=lambda _: None)
