# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Datalists for public datasets: scan a dataset folder (recursively), recognise its layout, and write a
Decathlon-style datalist with a seeded, subject-level training/validation/testing split and the dataset's label
convention.

Layouts (``layout="auto"`` picks the one matching the most subjects):

- ``brats2021`` (BraTS 2018-2021): ``<ID>_{t1,t1ce,t2,flair,seg}.nii.gz``, possibly under ``HGG/`` and ``LGG/``.
- ``brats2023`` (BraTS 2023+): ``<ID>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, keys normalised to ``t1, t1ce, t2, flair``.
- ``msd`` (MSD Task01_BrainTumour): ``imagesTr/BRATS_NNN.nii.gz`` (4-D, channels FLAIR, T1w, T1gd, T2w) and
  ``labelsTr/BRATS_NNN.nii.gz``; every image key points to the 4-D file and the record's ``channels`` map gives the
  channel of each key (the transforms split it). ``imagesTs`` is only used when labels are not required.
- ``hecktor``: ``<ID>__CT.nii.gz``, ``<ID>__PT.nii.gz`` and the label ``<ID>.nii.gz`` (keys ``ct, pet, label``).
- ``pattern``: one glob per key relative to the dataset folder, each with the placeholder ``{subject}``.

Record paths are relative to the dataset folder (posix separators), so the datalist is portable; hidden files and
folders (``.*``, including macOS ``._*`` files) are ignored. Subjects missing a required file are skipped with a
warning, never half-included. With ``require_label=False`` subjects without a label are kept (no ``label`` key) and
all go to ``training`` (for pre-training); only labeled subjects are split into validation and testing.

The modules: ``layouts`` (the layouts, their detection and the ``pattern`` globs), ``scan`` (records of a
folder), ``split`` (the seeded subject-level split), ``conventions`` (label conventions and region label maps),
``prepare`` (the datalist file, its summary and the next commands), ``arguments`` (the CLI's values).
"""

from .conventions import LABEL_CONVENTIONS, datalist_label_convention, region_label_map
from .layouts import DETECTABLE_LAYOUTS, LAYOUT_MODALITIES, LAYOUTS, MSD_CHANNELS, detect_layout
from .prepare import next_commands, prepare_datalist, summary_text
from .scan import scan_dataset
from .split import split_records

__all__ = [
    "DETECTABLE_LAYOUTS",
    "LABEL_CONVENTIONS",
    "LAYOUTS",
    "LAYOUT_MODALITIES",
    "MSD_CHANNELS",
    "datalist_label_convention",
    "detect_layout",
    "next_commands",
    "prepare_datalist",
    "region_label_map",
    "scan_dataset",
    "split_records",
    "summary_text",
]
