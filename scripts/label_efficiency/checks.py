# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Checks of the benchmark's runs that abort it: the subjects every run used, and the output folder."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .plan import ROOT, BenchmarkError

__all__ = ["check_output_dir", "check_splits"]


def check_splits(rows: Sequence[Mapping[str, Any]], test_subjects: Iterable[str]) -> None:
    """
    Every method (and every pre-training seed of it) must see the same labeled and validation subjects for one
    (fraction, fine-tuning seed); for one (method, pre-training seed, fine-tuning seed) the labeled subjects must be
    nested across fractions; no test subject may be labeled or used for validation.

    Raises:
        BenchmarkError: naming the first violation.
    """
    test = set(test_subjects)
    by_key: dict[tuple[float, int], tuple[str, list[str], list[str]]] = {}  # the first run of each (fraction, seed)
    chains: dict[tuple[str, int | None, int], list[tuple[float, set[str]]]] = {}
    for r in rows:
        labeled, validation = list(r["label_subjects"]), list(r.get("validation_subjects", []))
        leaked = sorted(test & (set(labeled) | set(validation)))
        if leaked:
            raise BenchmarkError(f"test subjects {leaked} were used by {_describe(r)}.")
        key = (float(r["fraction"]), int(r["seed"]))
        if key in by_key:
            method, other, other_val = by_key[key]
            if sorted(other) != sorted(labeled) or sorted(other_val) != sorted(validation):
                raise BenchmarkError(
                    f"fraction {key[0]:g}, seed {key[1]}: {_describe(r)} and {method} used different labeled or "
                    "validation subjects (the same split is required for every method)."
                )
        else:
            by_key[key] = (_describe(r), labeled, validation)
        chain = chains.setdefault((r["method"], r.get("pretrain_seed"), int(r["seed"])), [])
        chain.append((float(r["fraction"]), set(labeled)))
    for (method, pretrain_seed, seed), chain in chains.items():
        pretraining = "" if pretrain_seed is None else f" (pre-training seed {pretrain_seed})"
        chain.sort(key=lambda t: t[0])
        for (f_small, small), (f_large, large) in zip(chain, chain[1:]):
            if not small <= large:
                raise BenchmarkError(
                    f"{method}{pretraining}, seed {seed}: the labeled subjects of fraction {f_small:g} are not inside "
                    f"those of {f_large:g} (missing {sorted(small - large)[:5]})."
                )


def _describe(row: Mapping[str, Any]) -> str:
    pretraining = "" if row.get("pretrain_seed") is None else f", pre-training seed {row['pretrain_seed']}"
    return f"{row['method']} (fraction {float(row['fraction']):g}, seed {row['seed']}{pretraining})"


def check_output_dir(output_dir: str) -> str:
    """The absolute output folder; refuses the repository and any folder inside it."""
    if not output_dir:
        raise BenchmarkError("--output_dir is required (a folder outside the repository, e.g. /tmp/bench).")
    path = os.path.realpath(os.path.abspath(os.path.expanduser(str(output_dir))))
    root = os.path.realpath(ROOT)
    if path == root or path.startswith(root + os.sep):
        raise BenchmarkError(
            f"--output_dir {output_dir} is inside the repository ({root}); the benchmark writes many checkpoints "
            "and logs: choose a folder outside it, e.g. /tmp/bench."
        )
    return path
