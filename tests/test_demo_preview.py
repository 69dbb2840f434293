# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the demo dataset preview (scripts/demo_preview.py) and the preview the docs show."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from conftest import ROOT
from scripts import demo_preview


def test_preview_png(tmp_path):
    path = demo_preview.demo_preview(str(tmp_path / "sub" / "preview.png"), seed=3, index=1, shape=(32, 32, 16))
    assert path == str(tmp_path / "sub" / "preview.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 2 * img.height  # three panels side by side
    assert os.path.getsize(path) < 100_000


def test_lesion_slice_and_overlay():
    label = np.zeros((4, 4, 3), dtype=np.uint8)
    label[1, 1, 0] = 2
    label[1:3, 1:3, 2] = 1
    assert demo_preview.lesion_slice(label) == 2
    rgba = demo_preview.label_overlay(label[:, :, 2])
    assert rgba.shape == (4, 4, 4) and rgba[0, 0, 3] == 0.0
    np.testing.assert_allclose(rgba[1, 1], demo_preview.LABEL_COLOURS[1])


def test_docs_preview_is_small():
    path = os.path.join(ROOT, demo_preview.DEFAULT_OUTPUT)
    assert os.path.isfile(path) and os.path.getsize(path) < 100_000
