# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The benchmark's grid: the methods (pre-training variants and scratch), the default grid and the presets
(``--quick``, ``--grid cpu``), and the runs planned for a grid in execution order."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: the repository root (the bundle)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_PRETRAIN_SEEDS",
    "DEFAULT_SEEDS",
    "DEFAULT_VARIANTS",
    "GRIDS",
    "QUICK",
    "ROOT",
    "VARIANTS",
    "BenchmarkError",
    "Grid",
    "Job",
    "as_list",
    "fmt_fraction",
    "normalise_grid",
    "pct",
    "plan_jobs",
    "resolve_grid",
]

#: method name -> (label in the tables, overrides of configs/pretrain.yaml; None: no pre-training, from scratch)
VARIANTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "multi_condos": ("Multi-ConDoS", {}),
    "no_contrastive": ("w/o contrastive (λ_con=0)", {"lambda_contrastive": 0.0}),
    "no_sharing": ("w/o domain sharing (shared_blocks=[])", {"shared_blocks": []}),
    "pix2pix_only": ("Pix2Pix only (λ_cyc=0)", {"lambda_cycle": 0.0}),
    "cyclegan_only": ("CycleGAN only (λ_pix=0)", {"lambda_pix2pix": 0.0}),
    "local_contrastive": ("dense contrastive (contrastive=local)", {"contrastive": "local"}),
    "both_contrastive": ("subject + dense contrastive (contrastive=both)", {"contrastive": "both"}),
    "scratch": ("scratch (random init.)", None),
}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
#: one pre-training per variant by default (as before pre-training seeds existed); --grid cpu has two
DEFAULT_PRETRAIN_SEEDS: tuple[int, ...] = (0,)
#: the CPU schedules (demo data, 64x64 slices): pre-training 6 x 25 iterations; fine-tuning 10 x 15 for the quick
#: smoke grid, and for the statistics grid the default recipe (poly decay, early stopping) over at most 60 x 10
#: iterations of 16 slices: at 30 x 10 doubling the budget still raised validation Dice by 0.016-0.029, while the
#: 60 x 10 runs stopped early (patience) at epoch 48 (docs/results.md, chosen on validation subjects only)
_CPU_PRETRAIN: dict[str, Any] = {"epochs": 6, "epoch_length": 25}
_QUICK_FINETUNE: dict[str, Any] = {"epochs": 10, "epoch_length": 15, "val_interval": 2}
_CPU_FINETUNE: dict[str, Any] = {"epochs": 60, "epoch_length": 10, "val_interval": 2, "patience": 5}
#: the grid presets (``--grid NAME``; ``--quick True`` is ``--grid quick``): the grid and the schedules
GRIDS: dict[str, dict[str, Any]] = {
    # a small but meaningful CPU grid (< 20 min on 2 CPU cores on the demo data): one run per cell
    "quick": {
        "variants": ("multi_condos", "scratch", "no_contrastive"),
        "fractions": (0.1, 0.5, 1.0),
        "seeds": (0,),
        "pretrain_seeds": (0,),
        "pretrain": _CPU_PRETRAIN,
        "finetune": _QUICK_FINETUNE,
    },
    # the statistics grid for 2 CPU cores (4 pre-trainings + 60 fine-tunings, an estimated 3-4 h on 2 free cores as two
    # invocations): intervals over 2 pre-training seeds x 3 fine-tuning seeds at every fraction
    "cpu": {
        "variants": ("multi_condos", "no_contrastive", "scratch"),
        "fractions": DEFAULT_FRACTIONS,
        "seeds": (0, 1, 2),
        "pretrain_seeds": (0, 1),
        "pretrain": _CPU_PRETRAIN,
        "finetune": _CPU_FINETUNE,
    },
}
QUICK: dict[str, Any] = GRIDS["quick"]


class BenchmarkError(RuntimeError):
    """A failed check (init line, splits, output folder, settings of finished runs): the benchmark stops."""


@dataclass(frozen=True)
class Job:
    """
    One unit of work: a pre-training of ``variant`` with ``pretrain_seed``, or a fine-tuning + evaluation of
    ``variant`` at ``fraction`` with fine-tuning ``seed``, from the pre-training with ``pretrain_seed`` (``None``
    for scratch).
    """

    kind: str  # "pretrain" | "finetune"
    variant: str
    fraction: float | None = None
    seed: int | None = None
    pretrain_seed: int | None = None

    @property
    def name(self) -> str:
        """The run's folder relative to the output folder."""
        if self.kind == "pretrain":
            return f"pretrain/{self.variant}/seed_{self.pretrain_seed}"
        pretraining = "" if self.pretrain_seed is None else f"pretrain_seed_{self.pretrain_seed}/"
        return f"finetune/{self.variant}/{pretraining}fraction_{fmt_fraction(self.fraction)}_seed_{self.seed}"

    def describe(self) -> str:
        """The run in a progress line."""
        pretraining = "" if self.pretrain_seed is None else f" pretrain_seed={self.pretrain_seed}"
        if self.kind == "pretrain":
            return f"pretrain variant={self.variant}{pretraining}"
        return f"variant={self.variant}{pretraining} fraction={fmt_fraction(self.fraction)} seed={self.seed}"


@dataclass(frozen=True)
class Grid:
    """A validated grid: methods in ``VARIANTS`` order, fractions ascending, seeds in the given order."""

    variants: list[str]
    fractions: list[float]
    seeds: list[int]
    pretrain_seeds: list[int]


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


def _as_seeds(values: Any, name: str) -> list[int]:
    seeds = []
    for s in as_list(values, name):
        if isinstance(s, bool) or int(s) != float(s):
            raise BenchmarkError(f"{name} must be integers, got {s!r}.")
        seeds.append(int(s))
    return list(dict.fromkeys(seeds))


def normalise_grid(
    variants: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    pretrain_seeds: Sequence[int] = DEFAULT_PRETRAIN_SEEDS,
) -> Grid:
    """Validated grid: known variants (in ``VARIANTS`` order), fractions in (0, 1] ascending, seeds, deduplicated."""
    variants = [str(v) for v in as_list(variants, "variants")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BenchmarkError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}.")
    fractions = [float(f) for f in as_list(fractions, "fractions")]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise BenchmarkError(f"label fractions must be in (0, 1], got {bad}.")
    return Grid(
        variants=[v for v in VARIANTS if v in variants],
        fractions=sorted(set(fractions)),
        seeds=_as_seeds(seeds, "seeds"),
        pretrain_seeds=_as_seeds(pretrain_seeds, "pretrain_seeds"),
    )


def resolve_grid(
    grid: str | None = None,
    quick: bool = False,
    variants: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    pretrain_seeds: Sequence[int] | None = None,
) -> tuple[Grid, dict[str, Any], dict[str, Any]]:
    """
    The grid asked for: the preset ``grid`` (``quick`` also with ``quick=True``; none: the defaults) with the given
    ``variants``, ``fractions``, ``seeds`` and ``pretrain_seeds`` instead of its own; and the preset's pre-training
    and fine-tuning schedules (overrides of the configs, ``{}`` without a preset).

    Raises:
        BenchmarkError: an unknown preset, ``quick`` with another preset, or a bad grid (:py:func:`normalise_grid`).
    """
    if quick and grid not in (None, "quick"):
        raise BenchmarkError(f"--quick True is --grid quick: it cannot be combined with --grid {grid}.")
    name = "quick" if quick else grid
    if name is not None and name not in GRIDS:
        raise BenchmarkError(f"unknown --grid {name!r}; known: {list(GRIDS)}.")
    preset = GRIDS.get(name, {}) if name is not None else {}
    defaults = {
        "variants": DEFAULT_VARIANTS,
        "fractions": DEFAULT_FRACTIONS,
        "seeds": DEFAULT_SEEDS,
        "pretrain_seeds": DEFAULT_PRETRAIN_SEEDS,
    }
    given = {"variants": variants, "fractions": fractions, "seeds": seeds, "pretrain_seeds": pretrain_seeds}
    chosen = {k: v if v is not None else preset.get(k, defaults[k]) for k, v in given.items()}
    return normalise_grid(**chosen), dict(preset.get("pretrain", {})), dict(preset.get("finetune", {}))


def plan_jobs(
    variants: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    pretrain_seeds: Sequence[int] = DEFAULT_PRETRAIN_SEEDS,
) -> list[Job]:
    """
    The runs of the grid, in execution order: fine-tuning seed by seed (one complete table per seed as early as
    possible), for each seed the fractions ascending, for each fraction the methods, each pre-trained method once
    per pre-training seed; each (variant, pre-training seed) is pre-trained once for the whole grid, just before its
    first fine-tuning. Scratch has no pre-training seed.
    """
    grid = normalise_grid(variants, fractions, seeds, pretrain_seeds)
    jobs: list[Job] = []
    pretrained: set[tuple[str, int]] = set()
    for seed in grid.seeds:
        for fraction in grid.fractions:
            for variant in grid.variants:
                if VARIANTS[variant][1] is None:
                    jobs.append(Job("finetune", variant, fraction, seed))
                    continue
                for pretrain_seed in grid.pretrain_seeds:
                    if (variant, pretrain_seed) not in pretrained:
                        jobs.append(Job("pretrain", variant, pretrain_seed=pretrain_seed))
                        pretrained.add((variant, pretrain_seed))
                    jobs.append(Job("finetune", variant, fraction, seed, pretrain_seed))
    return jobs
