# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The benchmark's reports: ``results.csv`` (one row per run) and ``results.md`` (tables and comparisons)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .plan import VARIANTS, pct
from .plots import plot
from .stats import N_BOOT, PairedDifference, aggregate, compare, finite_float

__all__ = ["CSV_FIELDS", "HEADLINES", "fmt_difference", "fmt_number", "headline", "render_markdown", "write_reports"]

#: results.csv columns (every key of a result row, in this order)
CSV_FIELDS = [
    "method",
    "label",
    "pretrain_seed",
    "fraction",
    "seed",
    "n_label_subjects",
    "init",
    "test_dice",
    "test_dice_subject_std",
    "test_iou",
    "test_hd95",
    "test_hd95_n_excluded",
    "test_sensitivity",
    "test_precision",
    "n_test_subjects",
    "best_val_dice",
    "best_epoch",
    "last_val_dice",
    "last_epoch",
    "pretrain_val_psnr_ab",
    "pretrain_val_psnr_ba",
    "pretrain_val_psnr_identity",
    "pretrain_val_mae_ab",
    "pretrain_val_mae_ba",
    "pretrain_val_mae_identity",
    "pretrain_val_ssim_ab",
    "pretrain_val_ssim_identity",
    "pretrain_wall_s",
    "finetune_wall_s",
    "eval_wall_s",
    "finetune_iterations",
    "label_subjects",
    "finished",
]
#: the paper's headline claims: Multi-ConDoS at a label fraction vs scratch at a larger one
HEADLINES: tuple[tuple[float, float], ...] = ((0.05, 0.5), (0.1, 1.0))
#: a pre-training per variant and pre-training seed: ``{(variant, pretrain_seed): record}``
Pretrains = Mapping[tuple[str, int], Mapping[str, Any]]


def _cell(stats: Mapping[str, Any] | None, digits: int = 3, n_expected: int | None = None) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("std") is not None:
        text += f" ± {stats['std']:.{digits}f}"
    if n_expected is not None and stats.get("n") != n_expected:
        text += f" (n={stats.get('n')})"
    return text


def fmt_number(value: Any, fmt: str = ".3f") -> str:
    v = finite_float(value)
    return "—" if v is None else format(v, fmt)


def fmt_difference(d: PairedDifference | None, digits: int = 3) -> str:
    """``+0.050 [+0.010, +0.090]`` (mean difference and its interval), ``—`` without one."""
    return "—" if d is None else f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _verdict(d: PairedDifference, a: str, b: str) -> str:
    if d.low > 0:
        return f"{a} higher"
    if d.high < 0:
        return f"{b} higher"
    return "interval includes 0"


def headline(rows: Sequence[Mapping[str, Any]], n_boot: int = N_BOOT) -> list[str]:
    """The paper's headline checks (``HEADLINES``) as table lines, with the paired differences and their intervals."""
    lines = [
        "| comparison | Multi-ConDoS Dice | scratch Dice | difference [95% interval] | reading "
        "| pre-training seeds × fine-tuning seeds × test subjects | HD95 difference in mm [95% interval] |",
        "|---|---|---|---|---|---|---|",
    ]
    for fa, fb in HEADLINES:
        name = f"Multi-ConDoS@{pct(fa)} vs scratch@{pct(fb)}"
        d = compare(rows, ("multi_condos", fa), ("scratch", fb), n_boot=n_boot)
        if d is None:
            lines.append(f"| {name} | — | — | not in this grid | — | — | — |")
            continue
        hd95 = compare(rows, ("multi_condos", fa), ("scratch", fb), n_boot=n_boot, metric="hd95")
        lines.append(
            f"| {name} | {d.a_mean:.3f} | {d.b_mean:.3f} | {fmt_difference(d)} | "
            f"{_verdict(d, 'Multi-ConDoS', 'scratch')} | {d.n_pretrain_seeds} × {d.n_seeds} × {d.n_subjects} | "
            f"{fmt_difference(hd95, 2)} |"
        )
    return lines


def _settings(rows: Sequence[Mapping[str, Any]], pretrains: Pretrains, info: Mapping[str, Any]) -> list[str]:
    finetune_s = sum(float(r.get("finetune_wall_s") or 0) + float(r.get("eval_wall_s") or 0) for r in rows)
    return [
        "# Label-efficiency benchmark results",
        "",
        f"Written by `scripts/benchmark.py` on {info.get('written', '')}. Command: `{info.get('command', '')}`",
        "",
        f"- grid: methods {info.get('variants')}, label fractions {info.get('fractions')}, fine-tuning seeds "
        f"{info.get('seeds')}, pre-training seeds {info.get('pretrain_seeds')} ({len(rows)} fine-tuning runs finished)",
        f"- data: `{info.get('data_list_file_path')}` (modalities {info.get('modalities')}); "
        f"{info.get('n_test_subjects')} test subjects, never used by pre-training or fine-tuning",
        f"- pre-training overrides (besides the variant's): `{info.get('pretrain_overrides')}`; one run per variant "
        "and pre-training seed, reused by every fraction and fine-tuning seed",
        f"- fine-tuning overrides: `{info.get('finetune_overrides')}`",
        f"- device: {info.get('device')}; torch {info.get('torch')}, monai {info.get('monai')}",
        f"- wall time of the runs: {info.get('wall_total_s', 0):.0f} s in all (pre-training "
        f"{sum(float(p.get('wall_s') or 0) for p in pretrains.values()):.0f} s, fine-tuning + evaluation "
        f"{finetune_s:.0f} s)",
        "",
    ]


def _table(
    title: str, methods: Sequence[str], fractions: Sequence[float], cell: Callable[[str, float], str]
) -> list[str]:
    """A markdown table: one row per method, one column per fraction, ``cell(method, fraction)`` in each."""
    lines = [f"## {title}", "", "| method | " + " | ".join(f"{pct(f)} labels" for f in fractions) + " |"]
    lines.append("|---|" + "---|" * len(fractions))
    lines += [f"| {VARIANTS[m][0]} | " + " | ".join(cell(m, f) for f in fractions) + " |" for m in methods]
    return lines + [""]


def _metric_tables(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str], fractions: Sequence[float], info: Mapping[str, Any]
) -> list[str]:
    n_seeds, n_pretrain_seeds = len(info.get("seeds") or []), len(info.get("pretrain_seeds") or []) or 1

    def expected(method: str) -> int | None:  # runs per cell: pre-training seeds x fine-tuning seeds
        return (n_seeds * (n_pretrain_seeds if VARIANTS[method][1] is not None else 1)) or None

    out = []
    for metric, title, digits in (
        ("test_dice", "Test Dice (3-D, per subject, mean over test subjects)", 3),
        ("test_hd95", "Test HD95 in mm (mean over test subjects with non-empty masks)", 1),
    ):
        agg = aggregate(rows, metric)
        out += _table(
            f"{title}: mean ± std over runs (pre-training × fine-tuning seeds)",
            methods,
            fractions,
            lambda m, f, agg=agg, digits=digits: _cell(agg.get((m, f)), digits, expected(m)),
        )
    return out


def _comparisons(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str], fractions: Sequence[float], n_boot: int
) -> list[str]:
    n_pretrain_seeds = len({r.get("pretrain_seed") for r in rows if r.get("pretrain_seed") is not None})
    out = [
        "## Paired differences (test Dice)",
        "",
        "A minus B on the per-subject test Dice (and HD95): the fine-tuning seeds are averaged per subject (the same "
        "seed gives "
        f"every method the same labeled subjects), then a two-level cluster bootstrap ({n_boot} resamples of the "
        "pre-training seeds and of the test subjects, each with replacement) gives the 95% percentile interval. "
        "Scratch has no pre-training seed; nested runs are not counted as independent.",
        "",
    ]
    if n_pretrain_seeds <= 1:
        out += ["One pre-training seed: these intervals leave out the variability of pre-training itself.", ""]
    elif n_pretrain_seeds < 5:  # a percentile interval over so few clusters cannot reach beyond their range
        out += [
            f"{n_pretrain_seeds} pre-training seeds: resampling them reaches at most their range, so the intervals "
            "understate the variability of pre-training (read them as lower bounds on that part).",
            "",
        ]
    out += ["### Headline comparisons (the paper's claim)", ""] + headline(rows, n_boot) + [""]
    pretrained = [m for m in methods if VARIANTS[m][1] is not None]
    if "scratch" in methods and pretrained:
        out += _table(
            "Pre-trained minus scratch at the same label fraction: difference [95% interval]",
            pretrained,
            fractions,
            lambda m, f: fmt_difference(compare(rows, (m, f), ("scratch", f), n_boot=n_boot)),
        )
        out += _table(
            "Pre-trained minus scratch at the same label fraction: HD95 difference in mm [95% interval] (lower is "
            "better; subjects with an empty mask left out)",
            pretrained,
            fractions,
            lambda m, f: fmt_difference(compare(rows, (m, f), ("scratch", f), n_boot=n_boot, metric="hd95"), 2),
        )
    return out


def _epochs(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    known = [r for r in rows if r.get("best_epoch") is not None and r.get("last_epoch") is not None]
    if not known:
        return []
    at_last = sum(int(r["best_epoch"]) == int(r["last_epoch"]) for r in known)
    return [
        f"Best validation Dice at the last validated epoch (model.pt from the end of the schedule, the model possibly "
        f"still improving) in {at_last} of {len(known)} fine-tuning runs; `results.csv` has `best_epoch` and "
        "`last_epoch` of each.",
        "",
    ]


def _pretraining_table(pretrains: Pretrains) -> list[str]:
    out = [
        "## Pre-training (last validation on held-out training subjects; last logged losses)",
        "",
        "PSNR in dB and MAE on [-1, 1] intensities of G_AB(A) vs B and G_BA(B) vs A, beside the identity mapping "
        "(A vs B). Loss columns: raw value × weight = contribution to the generator loss.",
        "",
        "| variant | seed | PSNR A→B | PSNR B→A | PSNR identity | MAE A→B | MAE identity | adversarial | cycle "
        "| pix2pix | contrastive | local contrastive | iterations | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, pretrain_seed), p in sorted(
        pretrains.items(), key=lambda kv: (list(VARIANTS).index(kv[0][0]), kv[0][1])
    ):
        v, losses, weights = p.get("validation", {}), p.get("losses", {}), p.get("weights", {})
        loss_cells = []
        for term in ("adversarial", "cycle", "pix2pix", "contrastive", "local_contrastive"):
            raw, w = losses.get(term), weights.get(term)
            if raw is None:
                loss_cells.append("—")
            else:
                loss_cells.append(f"{raw:.3g} × {w:g} = {raw * w:.3g}" if w is not None else f"{raw:.3g}")
        psnr = " | ".join(fmt_number(v.get(k), ".2f") for k in ("val_psnr_ab", "val_psnr_ba", "val_psnr_identity"))
        mae = " | ".join(fmt_number(v.get(k), ".4f") for k in ("val_mae_ab", "val_mae_identity"))
        out.append(
            f"| {VARIANTS[variant][0]} | {pretrain_seed} | {psnr} | {mae} | " + " | ".join(loss_cells) + " | "
            f"{p.get('iterations', '—')} | {fmt_number(p.get('wall_s'), '.0f')} s |"
        )
    return out + [""]


def render_markdown(
    rows: Sequence[Mapping[str, Any]], pretrains: Pretrains, info: Mapping[str, Any], n_boot: int = N_BOOT
) -> str:
    """
    ``results.md``: settings, Dice and HD95 tables (rows: methods, columns: fractions), paired differences with
    their intervals (the headline comparisons, and pre-trained minus scratch per fraction), best vs last epoch,
    pre-training, wall times.
    """
    methods = [m for m in VARIANTS if any(r["method"] == m for r in rows)]
    fractions = sorted({float(r["fraction"]) for r in rows})
    out = _settings(rows, pretrains, info) + _metric_tables(rows, methods, fractions, info)
    out += _comparisons(rows, methods, fractions, n_boot) + _epochs(rows)
    if pretrains:
        out += _pretraining_table(pretrains)
    walls, evals = aggregate(rows, "finetune_wall_s"), aggregate(rows, "eval_wall_s")
    out += _table(
        "Wall time per run (s, mean over runs): fine-tuning / evaluation",
        methods,
        fractions,
        lambda m, f: (
            f"{fmt_number((walls.get((m, f)) or {}).get('mean'), '.0f')} / "
            f"{fmt_number((evals.get((m, f)) or {}).get('mean'), '.0f')}"
        ),
    )
    out += ["![Dice vs label fraction](label_efficiency.png)", ""]
    return "\n".join(out)


def _row_order(row: Mapping[str, Any]) -> tuple:
    pretrain_seed = row.get("pretrain_seed")
    return (
        list(VARIANTS).index(row["method"]),
        float(row["fraction"]),
        -1 if pretrain_seed is None else int(pretrain_seed),
        int(row["seed"]),
    )


def write_reports(
    output_dir: str, rows: Sequence[Mapping[str, Any]], pretrains: Pretrains, info: Mapping, n_boot: int = N_BOOT
) -> None:
    """``results.csv``, ``results.md`` and ``label_efficiency.png`` in ``output_dir``."""
    rows = sorted(rows, key=_row_order)
    with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "label_subjects": " ".join(r.get("label_subjects", []))})
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(render_markdown(rows, pretrains, info, n_boot))
    plot(rows, os.path.join(output_dir, "label_efficiency.png"))
