# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Statistics of the result rows: mean ± std per (method, fraction), and paired differences between two
configurations (method A at fraction f vs method B at fraction g) on the per-subject test Dice, with a 95% interval
from a two-level cluster bootstrap.

The runs are nested: a pre-trained method has one pre-training per pre-training seed, each fine-tuned with every
fine-tuning seed, each evaluated on the same test subjects. Treating the runs (or the subject x run rows) as
independent would make the intervals far too narrow, so :py:func:`paired_difference`:

1. averages the per-subject Dice over the fine-tuning seeds (the same seed gives every method the same labeled
   subjects, so they are paired, not resampled),
2. takes, per pre-training seed and test subject, A minus B (scratch, without pre-training seed, is broadcast over
   A's pre-training seeds; two pre-trained methods are paired by pre-training seed),
3. resamples the pre-training seeds and the test subjects, each with replacement and independently (they are
   crossed: every pre-training is evaluated on every subject), and takes the mean difference of each resample,
4. reports the mean difference and the percentile interval of the resampled means.

With one pre-training seed the interval holds only the test-subject (and averaged fine-tuning) variability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LEVEL",
    "N_BOOT",
    "PairedDifference",
    "SUBJECT_KEYS",
    "aggregate",
    "bootstrap_differences",
    "compare",
    "finite_float",
    "mean_std",
    "paired_difference",
    "subject_cells",
]

#: bootstrap resamples and the level of the percentile interval
N_BOOT = 2000
LEVEL = 0.95
#: the per-subject metrics of a result row (``{subject: value}``, written by ``results.read_test_metrics``)
SUBJECT_KEYS: dict[str, str] = {"dice": "test_subject_dice", "hd95": "test_subject_hd95"}

# a configuration: (method, label fraction)
Config = tuple[str, float]


@dataclass(frozen=True)
class PairedDifference:
    """
    A minus B on the per-subject test Dice: ``mean`` and its ``low``-``high`` interval at ``level``; ``a_mean`` and
    ``b_mean`` (each averaged over the same pre-training seeds, fine-tuning seeds and subjects); the numbers of
    pre-training seeds (the resampled clusters; 1 when neither side has several), fine-tuning seeds and subjects.
    """

    mean: float
    low: float
    high: float
    a_mean: float
    b_mean: float
    n_pretrain_seeds: int
    n_seeds: int
    n_subjects: int
    n_boot: int
    level: float


def finite_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the finite values."""
    vals = [float(v) for v in values if finite_float(v) is not None]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std, len(vals)


def aggregate(rows: Sequence[Mapping[str, Any]], metric: str = "test_dice") -> dict[Config, dict]:
    """
    ``{(method, fraction): {"mean", "std", "n", "seeds"}}`` over the runs of each cell (every pre-training seed x
    fine-tuning seed; std: sample, ddof 1; ``seeds``: the fine-tuning seed of each run).
    """
    groups: dict[Config, list[tuple[int, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["fraction"])), []).append((int(r["seed"]), r.get(metric)))
    out = {}
    for key, items in groups.items():
        mean, std, n = mean_std([v for _, v in items])
        out[key] = {"mean": mean, "std": std, "n": n, "seeds": sorted(s for s, _ in items)}
    return out


def _pair(a: Any, b: Any) -> np.ndarray:
    """``(pre-training seeds, subjects)`` differences of two ``(pre-training seeds, fine-tuning seeds, subjects)``
    arrays, the fine-tuning seeds averaged; a side with one pre-training seed is broadcast over the other's."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    same_cells = a.ndim == 3 and b.ndim == 3 and a.shape[1:] == b.shape[1:]
    if not same_cells or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(
            "paired arrays must be (pre-training seeds, fine-tuning seeds, subjects) with the same fine-tuning "
            f"seeds and subjects, and the same pre-training seeds or one: got {a.shape} and {b.shape}."
        )
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired arrays must be non-empty and finite (leave undefined subjects out).")
    return a.mean(axis=1) - b.mean(axis=1)


def bootstrap_differences(a: Any, b: Any, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """
    ``n_boot`` bootstrap replicates of the mean of A minus B (see the module docstring): each resamples the
    pre-training seeds and the test subjects with replacement, independently; the fine-tuning seeds are averaged.

    Args:
        a, b: per-subject values, ``(pre-training seeds, fine-tuning seeds, subjects)``; the same fine-tuning seeds
            and subjects (in the same order), and the same pre-training seeds or one (scratch).
        n_boot: the number of resamples.
        seed: seed of the resampling.

    Raises:
        ValueError: arrays of other shapes, empty or not finite.
    """
    diff = _pair(a, b)
    n_clusters, n_subjects = diff.shape
    rng = np.random.default_rng(seed)
    # how often each pre-training seed and each subject is drawn in each resample (a multinomial count is the same
    # as drawing indices with replacement), so each replicate is one weighted mean of the difference matrix
    clusters = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=int(n_boot))
    subjects = rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=int(n_boot))
    return np.einsum("bp,pj,bj->b", clusters, diff, subjects) / (n_clusters * n_subjects)


def paired_difference(a: Any, b: Any, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> PairedDifference:
    """
    The mean of A minus B with its percentile interval from :py:func:`bootstrap_differences`.

    Args:
        a, b: per-subject values, ``(pre-training seeds, fine-tuning seeds, subjects)`` (see
            :py:func:`bootstrap_differences`).
        n_boot: the number of resamples.
        level: the coverage of the interval, in (0, 1).
        seed: seed of the resampling (the same inputs and seed give the same interval).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    replicates = bootstrap_differences(a, b, n_boot, seed)
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(
        mean=float(_pair(a, b).mean()),
        low=float(low),
        high=float(high),
        a_mean=float(a.mean()),
        b_mean=float(b.mean()),
        n_pretrain_seeds=max(a.shape[0], b.shape[0]),
        n_seeds=a.shape[1],
        n_subjects=a.shape[2],
        n_boot=int(n_boot),
        level=float(level),
    )


def _runs(
    rows: Sequence[Mapping[str, Any]], config: Config, metric: str = "dice"
) -> dict[tuple[int | None, int], Mapping[str, Any]]:
    """The per-subject ``metric`` of ``config``'s runs: ``{(pre-training seed or None, fine-tuning seed): {subject:
    v}}`` (``pretrain_seed`` is None for scratch and for rows written before pre-training seeds)."""
    method, fraction = config
    return {
        (r.get("pretrain_seed"), int(r["seed"])): r.get(SUBJECT_KEYS[metric]) or {}
        for r in rows
        if r["method"] == method and float(r["fraction"]) == float(fraction)
    }


def subject_cells(
    runs: Mapping[tuple[int | None, int], Mapping[str, Any]],
    pretrain_seeds: Sequence[int | None],
    seeds: Sequence[int],
    subjects: Sequence[str],
) -> np.ndarray:
    """The ``(pre-training seeds, fine-tuning seeds, subjects)`` array of ``runs`` (missing values: NaN)."""
    cells = np.full((len(pretrain_seeds), len(seeds), len(subjects)), np.nan)
    for i, p in enumerate(pretrain_seeds):
        for k, s in enumerate(seeds):
            values = runs.get((p, s)) or {}
            for j, subject in enumerate(subjects):
                v = finite_float(values.get(subject))
                cells[i, k, j] = np.nan if v is None else v
    return cells


def _complete_seeds(runs: Mapping[tuple[int | None, int], Any], pretrain_seeds: Sequence[int | None]) -> set[int]:
    """The fine-tuning seeds that ``runs`` has for every one of ``pretrain_seeds``."""
    return {s for _, s in runs if all((p, s) in runs for p in pretrain_seeds)}


def compare(
    rows: Sequence[Mapping[str, Any]], a: Config, b: Config, n_boot: int = N_BOOT, seed: int = 0, metric: str = "dice"
) -> PairedDifference | None:
    """
    :py:func:`paired_difference` of configuration ``a`` minus ``b`` (each ``(method, fraction)``) on the rows'
    per-subject test ``metric`` (a ``SUBJECT_KEYS`` name: ``dice`` or ``hd95``), over what both have: the
    fine-tuning seeds every used pre-training has on both sides, the pre-training seeds both have when both are
    pre-trained, and the subjects with a defined value in every used run (HD95 is undefined for an empty mask).
    ``None`` when they share nothing.
    """
    if metric not in SUBJECT_KEYS:
        raise ValueError(f"metric must be one of {sorted(SUBJECT_KEYS)}, got {metric!r}.")
    runs_a, runs_b = _runs(rows, a, metric), _runs(rows, b, metric)
    pre_a = sorted({p for p, _ in runs_a}, key=lambda p: -1 if p is None else p)
    pre_b = sorted({p for p, _ in runs_b}, key=lambda p: -1 if p is None else p)
    if None not in pre_a and None not in pre_b:  # both pre-trained: paired by pre-training seed
        pre_a = pre_b = [p for p in pre_a if p in pre_b]
    seeds = sorted(_complete_seeds(runs_a, pre_a) & _complete_seeds(runs_b, pre_b))
    if not (pre_a and pre_b and seeds):
        return None
    used = [runs_a[(p, s)] for p in pre_a for s in seeds] + [runs_b[(p, s)] for p in pre_b for s in seeds]
    subjects = sorted(set.intersection(*(set(r) for r in used)))
    subjects = [j for j in subjects if all(finite_float(r.get(j)) is not None for r in used)]
    if not subjects:
        return None
    cells_a = subject_cells(runs_a, pre_a, seeds, subjects)
    cells_b = subject_cells(runs_b, pre_b, seeds, subjects)
    return paired_difference(cells_a, cells_b, n_boot=n_boot, seed=seed)
