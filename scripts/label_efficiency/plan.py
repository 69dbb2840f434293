# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The benchmark's grid: the methods (pre-training variants and scratch), the default and ``--quick`` grids, and
the runs planned for a grid, in execution order."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: the repository root (the bundle)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SEEDS",
    "DEFAULT_VARIANTS",
    "PRETRAIN_SEED",
    "QUICK",
    "ROOT",
    "VARIANTS",
    "BenchmarkError",
    "Job",
    "as_list",
    "fmt_fraction",
    "normalise_grid",
    "pct",
    "plan_jobs",
]

#: method name -> (label in the tables, overrides of configs/pretrain.yaml; None: no pre-training, from scratch)
VARIANTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "multi_condos": ("Multi-ConDoS", {}),
    "no_contrastive": ("w/o contrastive (λ_con=0)", {"lambda_contrastive": 0.0}),
    "no_sharing": ("w/o domain sharing (shared_blocks=[])", {"shared_blocks": []}),
    "pix2pix_only": ("Pix2Pix only (λ_cyc=0)", {"lambda_cycle": 0.0}),
    "cyclegan_only": ("CycleGAN only (λ_pix=0)", {"lambda_pix2pix": 0.0}),
    "scratch": ("scratch (random init.)", None),
}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
#: --quick True: a small but meaningful CPU grid (< 20 min on 2 CPU cores on the demo data)
QUICK: dict[str, Any] = {
    "variants": ("multi_condos", "scratch", "no_contrastive"),
    "fractions": (0.1, 0.5, 1.0),
    "seeds": (0,),
    "pretrain": {"epochs": 6, "epoch_length": 25},
    "finetune": {"epochs": 10, "epoch_length": 15, "val_interval": 2},
}
#: the pre-training seed (one pre-training per variant, reused across fine-tuning seeds)
PRETRAIN_SEED = 0


class BenchmarkError(RuntimeError):
    """A failed check (init line, splits, output folder, settings of finished runs): the benchmark stops."""


@dataclass(frozen=True)
class Job:
    """One unit of work: a pre-training of ``variant``, or a fine-tuning + evaluation of ``variant``."""

    kind: str  # "pretrain" | "finetune"
    variant: str
    fraction: float | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain/{self.variant}"
        return f"finetune/{self.variant}/fraction_{fmt_fraction(self.fraction)}_seed_{self.seed}"

    def describe(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain variant={self.variant}"
        return f"variant={self.variant} fraction={fmt_fraction(self.fraction)} seed={self.seed}"


def fmt_fraction(f: float | None) -> str:
    return "none" if f is None else f"{float(f):g}"


def pct(f: float) -> str:
    return f"{100 * float(f):g}%"


def as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = [value]
    out = list(value)
    if not out:
        raise BenchmarkError(f"--{name} is empty.")
    return out


def normalise_grid(
    variants: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]
) -> tuple[list[str], list[float], list[int]]:
    """Validated grid: known variants (in ``VARIANTS`` order), fractions in (0, 1] ascending, seeds, deduplicated."""
    variants = [str(v) for v in as_list(variants, "variants")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BenchmarkError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}.")
    fractions = [float(f) for f in as_list(fractions, "fractions")]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise BenchmarkError(f"label fractions must be in (0, 1], got {bad}.")
    seeds_out = []
    for s in as_list(seeds, "seeds"):
        if isinstance(s, bool) or int(s) != float(s):
            raise BenchmarkError(f"seeds must be integers, got {s!r}.")
        seeds_out.append(int(s))
    ordered = [v for v in VARIANTS if v in variants]
    return ordered, sorted(set(fractions)), list(dict.fromkeys(seeds_out))


def plan_jobs(variants: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]) -> list[Job]:
    """
    The runs of the grid, in execution order: seed by seed (one complete table per seed as early as possible), for
    each seed the fractions ascending, for each fraction the methods; each variant's pre-training just before its
    first fine-tuning, once for the whole grid.
    """
    variants, fractions, seeds = normalise_grid(variants, fractions, seeds)
    jobs: list[Job] = []
    pretrained: set[str] = set()
    for seed in seeds:
        for fraction in fractions:
            for variant in variants:
                if VARIANTS[variant][1] is not None and variant not in pretrained:
                    jobs.append(Job("pretrain", variant))
                    pretrained.add(variant)
                jobs.append(Job("finetune", variant, fraction, seed))
    return jobs
