# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Speed and memory of the Multi-ConDoS pre-training step, measured through the bundle config itself.

    python scripts/benchmark_pretrain.py --batch_sizes "[8,16]" --image_size 64 --iterations 10

Prints, per batch size, seconds per iteration (after warm-up), iterations per second and peak RSS. Any other
``configs/pretrain.yaml`` id can be overridden with ``--overrides "{'shared_blocks': []}"``.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence

import fire
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def benchmark(
    batch_sizes: Sequence[int] = (8, 16),
    image_size: int = 64,
    iterations: int = 10,
    warmup: int = 2,
    config_file: str = os.path.join(ROOT, "configs", "pretrain.yaml"),
    overrides: dict | None = None,
    threads: int | None = None,
) -> list[dict]:
    """Time ``iterations`` training steps for each batch size and print one line each; returns the rows."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    import bundle

    if threads:
        torch.set_num_threads(int(threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in batch_sizes:
            set_determinism(seed=0)
            parser = ConfigParser()
            parser.read_config(config_file)
            parser.update({"bundle_root": ROOT, "image_size": image_size, "batch_size": int(batch_size)})
            parser.update({"ckpt_dir": os.path.join(tmp, "ckpt"), "output_dir": os.path.join(tmp, "out")})
            parser.update(dict(overrides or {}))
            demo = os.path.abspath(parser.get_parsed_content("demo_data_list_file_path"))
            if os.path.abspath(parser.get_parsed_content("data_list_file_path")) == demo:
                bundle.demo_data.ensure_demo_dataset(parser.get_parsed_content("dataset_dir"), demo)
            trainer = parser.get_parsed_content("train#trainer")
            loader = parser.get_parsed_content("train#dataloader")
            batches = []
            while len(batches) < warmup + iterations:
                batches += list(loader)
            for b in batches[:warmup]:
                trainer._iteration(trainer, b)
            start = time.perf_counter()
            for b in batches[warmup : warmup + iterations]:
                trainer._iteration(trainer, b)
            seconds = (time.perf_counter() - start) / iterations
            row = {
                "batch_size": int(batch_size),
                "image_size": image_size,
                "s_per_iteration": round(seconds, 4),
                "slices_per_s": round(batch_size / seconds, 2),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "device": str(trainer.state.device),
                "threads": torch.get_num_threads(),
            }
            print(
                f"batch {row['batch_size']:>3} @ {image_size}x{image_size}: {row['s_per_iteration']:.3f} s/iteration, "
                f"{row['slices_per_s']:.1f} slices/s, peak RSS {row['peak_rss_mb']:.0f} MB "
                f"({row['device']}, {row['threads']} threads)"
            )
            rows.append(row)
    return rows


if __name__ == "__main__":
    fire.Fire(benchmark)
