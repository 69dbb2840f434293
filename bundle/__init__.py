# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Multi-ConDoS bundle package: what MONAI lacks for the method (shared-block generators, projection head,
image pool, the 2G/2D training step, translation validation, data helpers, public dataset layouts and the demo dataset)."""

from . import (
    data,
    datasets,
    demo_data,
    distributed,
    evaluation,
    finetune,
    handlers,
    networks,
    trainer,
    transforms,
    validation,
)

__all__ = [
    "data",
    "datasets",
    "demo_data",
    "distributed",
    "evaluation",
    "finetune",
    "handlers",
    "networks",
    "trainer",
    "transforms",
    "validation",
]
