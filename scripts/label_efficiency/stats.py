# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Statistics of the result rows: mean ± std over seeds, and paired differences between two configurations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["aggregate", "finite_float", "mean_std", "paired_difference"]


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


def aggregate(rows: Sequence[Mapping[str, Any]], metric: str = "test_dice") -> dict[tuple[str, float], dict]:
    """``{(method, fraction): {"mean", "std", "n", "seeds"}}`` over the seeds of ``rows`` (std: sample, ddof 1)."""
    groups: dict[tuple[str, float], list[tuple[int, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["fraction"])), []).append((int(r["seed"]), r.get(metric)))
    out = {}
    for key, items in groups.items():
        mean, std, n = mean_std([v for _, v in items])
        out[key] = {"mean": mean, "std": std, "n": n, "seeds": sorted(s for s, _ in items)}
    return out


def paired_difference(
    rows: Sequence[Mapping[str, Any]], a: tuple[str, float], b: tuple[str, float], metric: str = "test_dice"
) -> dict[str, Any] | None:
    """``a`` minus ``b`` over the seeds both have: mean ± std of the per-seed differences, and wins of ``a``."""
    va = {int(r["seed"]): finite_float(r.get(metric)) for r in rows if (r["method"], float(r["fraction"])) == a}
    vb = {int(r["seed"]): finite_float(r.get(metric)) for r in rows if (r["method"], float(r["fraction"])) == b}
    seeds = sorted(s for s in set(va) & set(vb) if va[s] is not None and vb[s] is not None)
    if not seeds:
        return None
    diffs = [va[s] - vb[s] for s in seeds]
    mean, std, n = mean_std(diffs)
    return {
        "a": mean_std([va[s] for s in seeds])[0],
        "b": mean_std([vb[s] for s in seeds])[0],
        "diff_mean": mean,
        "diff_std": std,
        "n": n,
        "wins": sum(d > 0 for d in diffs),
        "diffs": diffs,
    }
