# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Write the bundle's datalist for a public dataset folder (scanned recursively; the logic is in
``bundle/datasets.py``):

    python scripts/prepare_datalist.py --dataset_dir /data/BraTS2021 --output /data/BraTS2021/datalist.json
    python scripts/prepare_datalist.py --dataset_dir /data/Task01_BrainTumour --output msd.json --layout msd \\
        --modalities "['flair','t2']" --test_fraction 0.2 --val_fraction 0.1 --seed 0 --exclude bad_subjects.txt
    python scripts/prepare_datalist.py --dataset_dir /data/mine --output mine.json --layout pattern \\
        --patterns "{'t1': '{subject}/{subject}_T1.nii.gz', 't2': '{subject}/{subject}_T2.nii.gz', \\
                     'label': 'labels/{subject}.nii.gz'}" --labels "{1: 'lesion'}"

Layouts: ``auto`` (default), ``brats2021``, ``brats2023``, ``msd``, ``hecktor``, ``pattern``. Paths in the datalist
are relative to ``--dataset_dir``. An existing ``--output`` is only replaced with ``--overwrite True``. Errors are
printed as ``ERROR: ...`` (exit status 1); skipped subjects and unknown excluded ids as ``WARNING: ...``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bundle.datasets import next_commands, prepare_datalist, summary_text  # noqa: E402

__all__ = ["main"]


def main(
    dataset_dir: str,
    output: str,
    layout: str = "auto",
    patterns: Any = None,
    modalities: Any = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    exclude: Any = None,
    require_label: bool = True,
    labels: Any = None,
    overwrite: bool = False,
) -> None:
    """
    Scan ``dataset_dir``, write the datalist to ``output`` and print a summary and the next commands.

    Args:
        dataset_dir: the dataset folder (scanned recursively).
        output: the datalist JSON file to write.
        layout: auto, brats2021, brats2023, msd, hecktor or pattern.
        patterns: for --layout pattern: "{key: glob}" relative to dataset_dir, each glob with {subject}.
        modalities: image keys to require and write, e.g. "['flair','t2']" or flair,t2 (default: all).
        test_fraction, val_fraction: fractions of the labeled subjects for testing and validation.
        seed: seed of the subject-level split.
        exclude: subject ids to leave out: a file (one id a line, # comments, or a JSON list) or a list of ids.
        require_label: skip subjects without a label (default True); False keeps them (in training, unlabeled).
        labels: for --layout pattern: "{value: name}" of the label values, e.g. "{1: 'lesion'}".
        overwrite: replace an existing output file.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            datalist = prepare_datalist(
                dataset_dir,
                output,
                layout=layout,
                patterns=patterns,
                modalities=modalities,
                test_fraction=test_fraction,
                val_fraction=val_fraction,
                seed=seed,
                exclude=exclude,
                require_label=bool(require_label),
                labels=labels,
                overwrite=bool(overwrite),
            )
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            for w in caught:
                print(f"WARNING: {w.message}", file=sys.stderr, flush=True)
            print(f"ERROR: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
    for w in caught:
        print(f"WARNING: {w.message}", file=sys.stderr, flush=True)
    print(summary_text(datalist))
    print(f"datalist written: {os.path.abspath(output)}")
    print("next steps (self-supervised pre-training, then fine-tuning):")
    for command in next_commands(datalist, os.path.abspath(dataset_dir), os.path.abspath(output)):
        print(f"  {command}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
