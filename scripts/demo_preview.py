# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Preview of the synthetic demo dataset (``bundle/demo_data.py``): one axial slice of a subject, T1 | T2 | label.

    python scripts/demo_preview.py                                  # docs/demo_data.png, subject 0, seed 0
    python scripts/demo_preview.py --index 3 --output /tmp/demo_3.png

The subject is generated in memory exactly as ``generate_demo_dataset`` writes it (it only depends on ``seed``,
``index`` and ``shape``), so no dataset is needed. The slice shown is the one with the largest lesion area. The
third panel draws the label on the T1 slice: the lesion core (label 1: necrosis + enhancing rim) in red and the
edema (label 2) in yellow, which is faint in T1 and bright in T2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import fire
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bundle.demo_data import GENERATOR_VERSION, synthesize_subject  # noqa: E402

#: RGBA colours of the label overlay: 1 lesion core, 2 edema
LABEL_COLOURS = {1: (0.9, 0.1, 0.1, 0.6), 2: (1.0, 0.85, 0.0, 0.45)}


def lesion_slice(label: np.ndarray) -> int:
    """Index of the axial slice (last axis) with the most lesion voxels."""
    return int(np.argmax(np.count_nonzero(label > 0, axis=(0, 1))))


def label_overlay(label: np.ndarray) -> np.ndarray:
    """RGBA image of a 2-D label slice (transparent background) in ``LABEL_COLOURS``."""
    rgba = np.zeros((*label.shape, 4))
    for value, colour in LABEL_COLOURS.items():
        rgba[label == value] = colour
    return rgba


#: where the preview goes by default (the one the docs show)
DEFAULT_OUTPUT = os.path.join("docs", "demo_data.png")


def demo_preview(
    output: str | None = None,
    seed: int = 0,
    index: int = 0,
    shape: Sequence[int] = (64, 64, 32),
    dpi: int = 100,
) -> str:
    """
    Write a PNG of one axial slice of demo subject ``index``: T1 | T2 | label on T1.

    Args:
        output: the PNG to write (its folder is created if needed), ``docs/demo_data.png`` of the bundle by default.
        seed: seed of the demo dataset (``generate_demo_dataset``'s, 0 for the default demo).
        index: subject index (``demo_<index>``).
        shape: spatial shape of the volumes.
        dpi: resolution of the figure (3 panels of 2.4 x 2.4 inches).

    Returns:
        the path of the PNG.
    """
    output = output or os.path.join(ROOT, DEFAULT_OUTPUT)
    subject = synthesize_subject(seed, index, tuple(shape))
    z = lesion_slice(subject.label)
    # axis 0 is left-right and axis 1 posterior-anterior: transpose and flip so that anterior is at the top
    view = {k: np.flipud(v[:, :, z].T) for k, v in subject.images.items()}
    label = np.flipud(subject.label[:, :, z].T)

    fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.7), dpi=dpi)
    panels = [("T1 (T1-Gd-like)", view["t1"]), ("T2", view["t2"]), ("label on T1", view["t1"])]
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=float(np.percentile(image[image > 0], 99.5)))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    axes[2].imshow(label_overlay(label), interpolation="nearest")
    fig.suptitle(
        f"demo_{index:03d} (seed {seed}, generator v{GENERATOR_VERSION}), axial slice {z}: "
        "red = core (necrosis + enhancing rim), yellow = edema",
        fontsize=7.5,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    print(f"wrote {output} ({os.path.getsize(output)} bytes)")
    return output


if __name__ == "__main__":
    fire.Fire(demo_preview)
