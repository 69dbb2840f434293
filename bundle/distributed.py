# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Multi-GPU / multi-node helpers for ``torchrun`` + ``DistributedDataParallel`` (used by the ``multi_gpu_*.yaml``
overlays): process group set-up (NCCL on GPU, gloo on CPU), the per-rank device, wrapping, splitting the records (so
the volume cache is split across ranks rather than replicated) and keeping file-writing handlers on rank 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.data import partition_dataset
from torch import nn

__all__ = [
    "WRITER_HANDLERS",
    "cleanup",
    "is_rank_zero",
    "local_device",
    "partition",
    "rank_zero_handlers",
    "setup",
    "wrap",
]

logger = logging.getLogger("multi_condos")

#: handler classes that write files or logs: attached on rank 0 only
WRITER_HANDLERS: tuple[str, ...] = (
    "CheckpointSaver",
    "EngineCheckpointSaver",
    "GeneratorExportHandler",
    "LogfileHandler",
    "OutputRecordHandler",
    "ProgressBar",
    "SegmentationReportHandler",
    "StatsHandler",
    "TensorBoardStatsHandler",
    "TrainingSummaryHandler",
    "TranslationPreviewHandler",
    "ValidationHistoryHandler",
)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup() -> None:
    """Initialise the default process group from the ``torchrun`` environment: NCCL with CUDA, else gloo."""
    if _initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "the multi_gpu_* configs must be launched by torchrun, e.g. torchrun --standalone --nproc_per_node=2 "
            "-m monai.bundle run ... (RANK/WORLD_SIZE are not set)."
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    logger.info(f"process group: backend {backend}, rank {dist.get_rank()} of {dist.get_world_size()}")


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def wrap(module: nn.Module, find_unused_parameters: bool = True) -> nn.Module:
    """``DistributedDataParallel(module)`` on the local device (parameters already there)."""
    device = next(module.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=bool(find_unused_parameters)
    )


def partition(records: Sequence[Any], shuffle: bool = True, seed: int = 0, even_divisible: bool = True) -> list:
    """This rank's share of ``records`` (MONAI ``partition_dataset``); all records outside distributed runs."""
    if not _initialized() or dist.get_world_size() == 1:
        return list(records)
    parts = partition_dataset(
        list(records),
        num_partitions=dist.get_world_size(),
        shuffle=shuffle,
        seed=seed,
        even_divisible=even_divisible,
    )
    return list(parts[dist.get_rank()])


def is_rank_zero() -> bool:
    """True outside distributed runs and on rank 0."""
    return not _initialized() or dist.get_rank() == 0


def rank_zero_handlers(handlers: Sequence[Any]) -> list:
    """
    All ``handlers`` on rank 0; on the other ranks only those that write nothing (see ``WRITER_HANDLERS``). Handlers
    disabled in the config (``_disabled_``, built as None) are dropped.
    """
    handlers = [h for h in handlers if h is not None]
    if is_rank_zero():
        return handlers
    return [h for h in handlers if type(h).__name__ not in WRITER_HANDLERS]


def cleanup() -> None:
    """Destroy the process group (after a barrier, so that rank 0 finishes writing first)."""
    if _initialized():
        dist.barrier()
        dist.destroy_process_group()
