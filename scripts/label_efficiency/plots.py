# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""``label_efficiency.png``: test Dice against the label fraction, one line per method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .plan import VARIANTS, pct
from .stats import aggregate

__all__ = ["plot"]


def plot(rows: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """``label_efficiency.png``: test Dice vs label fraction, one line per method, error bars = std over runs."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows, "test_dice")
    methods = [m for m in VARIANTS if any(r["method"] == m for r in rows)]
    fractions = sorted({float(r["fraction"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for f in fractions:
            s = agg.get((m, f))
            if s and s["mean"] is not None:
                xs.append(f * (1 + 0.025 * (i - (len(methods) - 1) / 2)))  # small offsets: error bars stay readable
                ys.append(s["mean"])
                es.append(s["std"] or 0.0)
        style = {"linestyle": "--", "color": "black"} if m == "scratch" else {}
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=VARIANTS[m][0], **style)
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([pct(f) for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labeled training subjects")
    ax.set_ylabel("test Dice (3-D, mean over subjects)")
    seeds = {int(r["seed"]) for r in rows}
    pretrain_seeds = {r.get("pretrain_seed") for r in rows if r.get("pretrain_seed") is not None}
    over = f"{len(seeds)} fine-tuning" + (f" x {len(pretrain_seeds)} pre-training" if pretrain_seeds else "")
    ax.set_title(f"Label efficiency (mean ± std over {over} seed(s))")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
