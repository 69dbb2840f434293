# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The benchmark's reports: ``results.csv`` (one row per run) and ``results.md`` (tables and comparisons)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .plan import PRETRAIN_SEED, VARIANTS, pct
from .plots import plot
from .stats import aggregate, finite_float, paired_difference

__all__ = ["CSV_FIELDS", "fmt_number", "headline", "render_markdown", "write_reports"]

#: results.csv columns (every key of a result row, in this order)
CSV_FIELDS = [
    "method",
    "label",
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
    "best_val_epoch",
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


def headline(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paper's headline checks: Multi-ConDoS@5% vs scratch@50%, Multi-ConDoS@10% vs scratch@100%."""
    lines = [
        "| comparison | Multi-ConDoS Dice | scratch Dice | difference (paired over seeds) | seeds where Multi-ConDoS is higher |",
        "|---|---|---|---|---|",
    ]
    for fa, fb in ((0.05, 0.5), (0.1, 1.0)):
        name = f"Multi-ConDoS@{pct(fa)} vs scratch@{pct(fb)}"
        d = paired_difference(rows, ("multi_condos", fa), ("scratch", fb))
        if d is None:
            lines.append(f"| {name} | — | — | not in this grid | — |")
            continue
        diff = f"{d['diff_mean']:+.3f}" + (f" ± {d['diff_std']:.3f}" if d["diff_std"] is not None else "")
        lines.append(f"| {name} | {d['a']:.3f} | {d['b']:.3f} | {diff} | {d['wins']}/{d['n']} |")
    return lines


def render_markdown(
    rows: Sequence[Mapping[str, Any]],
    pretrains: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
) -> str:
    """``results.md``: settings, Dice and HD95 tables (rows: methods, columns: fractions), comparisons, pre-training."""
    methods = [m for m in VARIANTS if any(r["method"] == m for r in rows)]
    fractions = sorted({float(r["fraction"]) for r in rows})
    n_seeds = len(info.get("seeds") or []) or None
    out = [
        "# Label-efficiency benchmark results",
        "",
        f"Written by `scripts/benchmark.py` on {info.get('written', '')}. Command: `{info.get('command', '')}`",
        "",
        f"- grid: methods {info.get('variants')}, label fractions {info.get('fractions')}, seeds {info.get('seeds')} "
        f"({len(rows)} fine-tuning runs finished)",
        f"- data: `{info.get('data_list_file_path')}` (modalities {info.get('modalities')}); "
        f"{info.get('n_test_subjects')} test subjects, never used by pre-training or fine-tuning",
        f"- pre-training overrides (besides the variant's): `{info.get('pretrain_overrides')}`; one run per variant, "
        f"seed {PRETRAIN_SEED}",
        f"- fine-tuning overrides: `{info.get('finetune_overrides')}`",
        f"- device: {info.get('device')}; torch {info.get('torch')}, monai {info.get('monai')}",
        f"- wall time of the runs: {info.get('wall_total_s', 0):.0f} s in all (pre-training "
        f"{sum(float(p.get('wall_s') or 0) for p in pretrains.values()):.0f} s, fine-tuning + evaluation "
        f"{sum(float(r.get('finetune_wall_s') or 0) + float(r.get('eval_wall_s') or 0) for r in rows):.0f} s)",
        "",
    ]
    for metric, title, digits in (
        ("test_dice", "Test Dice (3-D, per subject, mean over test subjects)", 3),
        ("test_hd95", "Test HD95 in mm (mean over test subjects with non-empty masks)", 1),
    ):
        agg = aggregate(rows, metric)
        out += [f"## {title}: mean ± std over seeds", ""]
        out.append("| method | " + " | ".join(f"{pct(f)} labels" for f in fractions) + " |")
        out.append("|---|" + "---|" * len(fractions))
        for m in methods:
            cells = [_cell(agg.get((m, f)), digits, n_seeds) for f in fractions]
            out.append(f"| {VARIANTS[m][0]} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Headline comparisons (the paper's claim)", ""] + headline(rows) + [""]
    pretrained = [m for m in methods if VARIANTS[m][1] is not None]
    if "scratch" in methods and pretrained:
        out += [
            "## Pre-trained minus scratch at the same label fraction (test Dice, paired over seeds)",
            "",
            "Each cell: mean ± std of the per-seed difference, and in how many seeds the pre-trained model was higher.",
            "",
            "| method | " + " | ".join(f"{pct(f)} labels" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions),
        ]
        for m in pretrained:
            cells = []
            for f in fractions:
                d = paired_difference(rows, (m, f), ("scratch", f))
                if d is None:
                    cells.append("—")
                else:
                    std = f" ± {d['diff_std']:.3f}" if d["diff_std"] is not None else ""
                    cells.append(f"{d['diff_mean']:+.3f}{std} ({d['wins']}/{d['n']})")
            out.append(f"| {VARIANTS[m][0]} | " + " | ".join(cells) + " |")
        out.append("")
    if pretrains:
        out += [
            "## Pre-training (last validation on held-out training subjects; last logged losses)",
            "",
            "PSNR in dB and MAE on [-1, 1] intensities of G_AB(A) vs B and G_BA(B) vs A, beside the identity mapping "
            "(A vs B). Loss columns: raw value × weight = contribution to the generator loss.",
            "",
            "| variant | PSNR A→B | PSNR B→A | PSNR identity | MAE A→B | MAE identity | adversarial | cycle | pix2pix "
            "| contrastive | iterations | wall |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in pretrained:
            p = pretrains.get(m)
            if not p:
                continue
            v, losses, weights = p.get("validation", {}), p.get("losses", {}), p.get("weights", {})
            loss_cells = []
            for term in ("adversarial", "cycle", "pix2pix", "contrastive"):
                raw, w = losses.get(term), weights.get(term)
                if raw is None:
                    loss_cells.append("—")
                else:
                    loss_cells.append(f"{raw:.3g} × {w:g} = {raw * w:.3g}" if w is not None else f"{raw:.3g}")
            out.append(
                f"| {VARIANTS[m][0]} | {fmt_number(v.get('val_psnr_ab'), '.2f')} | {fmt_number(v.get('val_psnr_ba'), '.2f')} | "
                f"{fmt_number(v.get('val_psnr_identity'), '.2f')} | {fmt_number(v.get('val_mae_ab'), '.4f')} | "
                f"{fmt_number(v.get('val_mae_identity'), '.4f')} | "
                + " | ".join(loss_cells)
                + f" | {p.get('iterations', '—')} | "
                f"{fmt_number(p.get('wall_s'), '.0f')} s |"
            )
        out.append("")
    walls = aggregate(rows, "finetune_wall_s")
    evals = aggregate(rows, "eval_wall_s")
    out += [
        "## Wall time per run (s, mean over seeds): fine-tuning / evaluation",
        "",
        "| method | " + " | ".join(f"{pct(f)} labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for m in methods:
        cells = [
            f"{fmt_number((walls.get((m, f)) or {}).get('mean'), '.0f')} / {fmt_number((evals.get((m, f)) or {}).get('mean'), '.0f')}"
            for f in fractions
        ]
        out.append(f"| {VARIANTS[m][0]} | " + " | ".join(cells) + " |")
    out += ["", "![Dice vs label fraction](label_efficiency.png)", ""]
    return "\n".join(out)


def write_reports(
    output_dir: str, rows: Sequence[Mapping[str, Any]], pretrains: Mapping[str, Mapping[str, Any]], info: Mapping
) -> None:
    rows = sorted(rows, key=lambda r: (list(VARIANTS).index(r["method"]), float(r["fraction"]), int(r["seed"])))
    with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "label_subjects": " ".join(r.get("label_subjects", []))})
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(render_markdown(rows, pretrains, info))
    plot(rows, os.path.join(output_dir, "label_efficiency.png"))
