# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The seeded, subject-level training/validation/testing split of a datalist's records."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arguments import read_exclude

__all__ = ["SECTIONS", "split_records"]

#: the sections of a datalist, in order
SECTIONS = ("training", "validation", "testing")


def _check_fraction(value: Any, name: str) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.") from None
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    return fraction


def _count(fraction: float, n: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * n))


def split_records(
    records: Sequence[Mapping[str, Any]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    exclude: Sequence[str] | str | os.PathLike | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """
    Seeded, subject-level, disjoint ``training``/``validation``/``testing`` split of ``records``.

    The excluded subjects are removed first. Labeled subjects (records with ``label``) are sorted by id and permuted
    with ``numpy.random.default_rng(seed)``: the first ``round(test_fraction * n)`` go to testing, the next
    ``round(val_fraction * n)`` to validation (at least 1 each when the fraction is > 0), the rest to training.
    Unlabeled subjects all go to training. The result only depends on the subject ids and ``seed``, not on the
    order of ``records``; every section is sorted by subject.

    Args:
        records: datalist records with ``subject``.
        val_fraction, test_fraction: fractions of the labeled subjects, each in [0, 1).
        seed: random seed.
        exclude: subject ids to leave out: a list, a comma-separated string, or a file (one id a line, ``#``
            comments allowed, or a JSON list). Ids not among ``records`` are warned about.

    Raises:
        ValueError: bad fractions, records without ``subject``, or no labeled training subject left.
        FileNotFoundError: a missing exclude file.
    """
    val = _check_fraction(val_fraction, "val_fraction")
    test = _check_fraction(test_fraction, "test_fraction")
    if val + test >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val} + {test}.")
    excluded = set(read_exclude(exclude))
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for i, record in enumerate(records):
        if not record.get("subject"):
            raise ValueError(f"record {i} has no 'subject': {dict(record)!r}.")
        by_subject.setdefault(str(record["subject"]), []).append(dict(record))
    unknown = sorted(excluded - set(by_subject))
    if unknown:
        warnings.warn(f"excluded subject id(s) not found in the dataset: {unknown}", stacklevel=2)
    subjects = sorted(set(by_subject) - excluded)
    labeled = [s for s in subjects if all("label" in r for r in by_subject[s])]
    n = len(labeled)
    n_test, n_val = (_count(test, n), _count(val, n)) if n else (0, 0)
    if n and n - n_test - n_val < 1:
        raise ValueError(
            f"{n} labeled subject(s) are too few for {n_test} testing and {n_val} validation subject(s) with at "
            "least one training subject; lower --test_fraction/--val_fraction."
        )
    order = np.random.default_rng(int(seed)).permutation(n)
    testing = {labeled[i] for i in order[:n_test]}
    validation = {labeled[i] for i in order[n_test : n_test + n_val]}
    out: dict[str, list[dict[str, Any]]] = {section: [] for section in SECTIONS}
    for sid in subjects:
        section = "testing" if sid in testing else "validation" if sid in validation else "training"
        out[section].extend(by_subject[sid])
    return out
