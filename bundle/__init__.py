# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Multi-ConDoS bundle package: what MONAI lacks for the method (shared-block generators, projection head,
image pool, the 2G/2D training step, translation validation, data helpers, public dataset layouts and the demo dataset)."""

__version__ = "0.4.0"  # configs/metadata.json "version" (a test keeps them equal)

from . import (  # noqa: E402 (after __version__, which the modules read)
    data,
    datasets,
    demo_data,
    demo_phantom,
    distributed,
    evaluation,
    files,
    finetune,
    finite,
    handlers,
    losses,
    networks,
    preprocessing,
    records,
    speed,
    trainer,
    transforms,
    validation,
)

__all__ = [
    "__version__",
    "data",
    "datasets",
    "demo_data",
    "demo_phantom",
    "distributed",
    "evaluation",
    "files",
    "finetune",
    "finite",
    "handlers",
    "losses",
    "networks",
    "preprocessing",
    "records",
    "speed",
    "trainer",
    "transforms",
    "validation",
]
