# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The benchmark's loop: plan the grid, run or resume each pre-training and fine-tuning + evaluation (markers
``done.json`` / ``result.json`` with the settings they ran with), check every run, write the reports."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .checks import check_output_dir, check_splits
from .plan import (
    DEFAULT_FRACTIONS,
    DEFAULT_SEEDS,
    DEFAULT_VARIANTS,
    PRETRAIN_SEED,
    QUICK,
    ROOT,
    VARIANTS,
    BenchmarkError,
    Job,
    as_list,
    normalise_grid,
    plan_jobs,
)
from .report import fmt_number, write_reports
from .results import (
    check_init_line,
    generator_features,
    last_losses,
    last_validation,
    read_json,
    read_metrics_summary,
    testing_subject_ids,
)
from .runner import BundleRunner, config_defaults, iterations
from .stats import finite_float

__all__ = ["run_benchmark"]

#: the loss terms of pre-training, with the config id of their weight
LOSS_WEIGHTS = {
    "adversarial": "lambda_adversarial",
    "cycle": "lambda_cycle",
    "pix2pix": "lambda_pix2pix",
    "contrastive": "lambda_contrastive",
    "identity": "lambda_identity",
}
#: run paths and the dataset location are not part of a run's settings (the resume check compares the rest)
_PATH_IDS = ("bundle_root", "ckpt_dir", "output_dir", "pretrained_ckpt", "default_pretrained_ckpt")


def _write_json(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def _settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(
        json.dumps({k: v for k, v in overrides.items() if k not in _PATH_IDS}, sort_keys=True, default=str)
    )


def _check_settings(marker: Mapping[str, Any], settings: Mapping[str, Any], run_dir: str) -> None:
    if marker.get("settings") != settings:
        old = marker.get("settings") or {}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise BenchmarkError(
            f"{run_dir} holds a finished run with other settings ({', '.join(diff)}): use another --output_dir "
            "for these settings (or delete that run folder to redo it)."
        )


def run_benchmark(
    output_dir: str,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
    modalities: Sequence[str] = ("t1", "t2"),
    variants: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    pretrain_overrides: Mapping[str, Any] | None = None,
    finetune_overrides: Mapping[str, Any] | None = None,
    runner: Any = None,
    dry_run: bool = False,
    report_only: bool = False,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Plan the grid, run what is not finished yet, check every run, write the reports; returns the result rows."""
    output_dir = check_output_dir(output_dir)
    variants = list(variants if variants is not None else (QUICK["variants"] if quick else DEFAULT_VARIANTS))
    fractions = list(fractions if fractions is not None else (QUICK["fractions"] if quick else DEFAULT_FRACTIONS))
    seeds = list(seeds if seeds is not None else (QUICK["seeds"] if quick else DEFAULT_SEEDS))
    variants, fractions, seeds = normalise_grid(variants, fractions, seeds)
    jobs = plan_jobs(variants, fractions, seeds)
    modalities = [str(m) for m in as_list(modalities, "modalities")]
    if len(modalities) != 2:
        raise BenchmarkError(f"--modalities needs two datalist keys [A, B], got {modalities}.")
    dataset_dir = os.path.abspath(dataset_dir or os.path.join(ROOT, "data", "demo"))
    data_list_file_path = os.path.abspath(data_list_file_path or os.path.join(dataset_dir, "datalist.json"))

    common = {
        "bundle_root": ROOT,
        "dataset_dir": dataset_dir,
        "data_list_file_path": data_list_file_path,
        "modalities": modalities,
    }
    pre_common = {
        **common,
        "seed": PRETRAIN_SEED,
        **(QUICK["pretrain"] if quick else {}),
        **dict(pretrain_overrides or {}),
    }
    ft_common = {**common, **(QUICK["finetune"] if quick else {}), **dict(finetune_overrides or {})}
    if "epochs" in ft_common and "val_interval" not in ft_common:
        ft_common["val_interval"] = min(2, int(ft_common["epochs"]))  # the config's 2, at most the epochs

    if dry_run:
        for k, job in enumerate(jobs, 1):
            echo(f"[{k}/{len(jobs)}] {job.describe()} (planned: {os.path.join(output_dir, job.name)})")
        return []

    os.makedirs(output_dir, exist_ok=True)
    if os.path.abspath(data_list_file_path) == os.path.abspath(os.path.join(ROOT, "data", "demo", "datalist.json")):
        from bundle.demo_data import ensure_demo_dataset

        ensure_demo_dataset(dataset_dir, data_list_file_path)
    test_subjects = testing_subject_ids(data_list_file_path, dataset_dir, modalities)
    if not test_subjects:
        raise BenchmarkError(f"{data_list_file_path} has no 'testing' records: the benchmark evaluates on them.")

    import monai
    import torch

    info = {
        "command": command or "run_benchmark(...)",
        "variants": variants,
        "fractions": fractions,
        "seeds": seeds,
        "quick": bool(quick),
        "data_list_file_path": data_list_file_path,
        "modalities": modalities,
        "n_test_subjects": len(test_subjects),
        "pretrain_overrides": _settings({k: v for k, v in pre_common.items() if k not in common}),
        "finetune_overrides": _settings({k: v for k, v in ft_common.items() if k not in common}),
        "device": f"cuda ({torch.cuda.get_device_name(0)})"
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if not report_only:
        _write_json(info, os.path.join(output_dir, "benchmark_config.json"))
    runner = runner or BundleRunner()
    progress_log = os.path.join(output_dir, "progress.log")

    def say(text: str) -> None:
        echo(text)
        with open(progress_log, "a") as f:
            f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {text}\n")

    say(f"benchmark: {len(jobs)} runs ({sum(j.kind == 'pretrain' for j in jobs)} pre-trainings) into {output_dir}")
    rows: list[dict[str, Any]] = []
    pretrains: dict[str, dict[str, Any]] = {}
    wall_total = 0.0
    try:
        for k, job in enumerate(jobs, 1):
            run_dir = os.path.join(output_dir, job.name)
            if job.kind == "pretrain":
                record, skipped, wall = _pretrain(job, run_dir, pre_common, runner, report_only)
                if record is None:
                    say(f"[{k}/{len(jobs)}] {job.describe()} not finished (report only)")
                    continue
                pretrains[job.variant] = record
                v = record["validation"]
                summary = (
                    f"val PSNR A→B {fmt_number(v.get('val_psnr_ab'), '.2f')} dB, B→A {fmt_number(v.get('val_psnr_ba'), '.2f')} dB "
                    f"(identity {fmt_number(v.get('val_psnr_identity'), '.2f')} dB)"
                )
            else:
                pre = pretrains.get(job.variant)
                record, skipped, wall = _finetune(job, run_dir, ft_common, pre, runner, test_subjects, report_only)
                if record is None:
                    say(f"[{k}/{len(jobs)}] {job.describe()} not finished (report only)")
                    continue
                rows.append(record)
                check_splits(rows, test_subjects)
                summary = f"test Dice {fmt_number(record.get('test_dice'))} (HD95 {fmt_number(record.get('test_hd95'), '.1f')} mm)"
            wall_total += wall
            when = "skipped (finished earlier)" if skipped else f"done in {wall:.1f}s"
            say(f"[{k}/{len(jobs)}] {job.describe()} {when}, {summary}")
    finally:
        info = {**info, "wall_total_s": wall_total, "written": datetime.datetime.now().isoformat(timespec="seconds")}
        if rows or pretrains:
            write_reports(output_dir, rows, pretrains, info)
    say(f"benchmark finished: {os.path.join(output_dir, 'results.md')}")
    return rows


def _pretrain(
    job: Job, run_dir: str, pre_common: Mapping[str, Any], runner: Any, report_only: bool = False
) -> tuple[dict | None, bool, float]:
    overrides = {**pre_common, **VARIANTS[job.variant][1]}
    settings = _settings(overrides)
    marker_path = os.path.join(run_dir, "done.json")
    generators_file = os.path.join(run_dir, "ckpt", "generators.pt")
    if os.path.isfile(marker_path) and os.path.isfile(generators_file):
        marker = read_json(marker_path)
        _check_settings(marker, settings, run_dir)
        return marker, True, float(marker.get("wall_s") or 0)
    if report_only:
        return None, False, 0.0
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # an unfinished run of ours: start it again
    overrides.update({"ckpt_dir": os.path.join(run_dir, "ckpt"), "output_dir": os.path.join(run_dir, "out")})
    start = time.perf_counter()
    runner.pretrain(overrides, os.path.join(run_dir, "workflow.log"))
    wall = time.perf_counter() - start
    if not os.path.isfile(generators_file):
        raise BenchmarkError(f"pre-training {job.variant} finished without {generators_file}.")
    recorded = os.path.join(overrides["ckpt_dir"], "run_config.json")
    used = read_json(recorded).get("settings", {}) if os.path.isfile(recorded) else {}
    defaults = config_defaults("pretrain.yaml")
    weights = {
        term: finite_float(used.get(key, overrides.get(key, defaults.get(key)))) for term, key in LOSS_WEIGHTS.items()
    }
    record = {
        "variant": job.variant,
        "settings": settings,
        "generators_file": generators_file,
        "validation": last_validation(overrides["output_dir"]),
        "losses": last_losses(overrides["output_dir"]),
        "weights": weights,
        "iterations": iterations(overrides, "pretrain.yaml"),
        "wall_s": wall,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(record, marker_path)
    return record, False, wall


def _finetune(
    job: Job,
    run_dir: str,
    ft_common: Mapping[str, Any],
    pre: Mapping[str, Any] | None,
    runner: Any,
    test_subjects: Sequence[str],
    report_only: bool = False,
) -> tuple[dict | None, bool, float]:
    pretrained = VARIANTS[job.variant][1] is not None
    if pretrained and pre is None and report_only:
        return None, False, 0.0
    if pretrained and pre is None:
        raise BenchmarkError(f"{job.name}: no pre-training of {job.variant} (planning error).")
    overrides = {**ft_common, "label_fraction": float(job.fraction), "seed": int(job.seed)}
    settings = _settings(overrides)
    settings["pretraining"] = pre["settings"] if pretrained else None
    marker_path = os.path.join(run_dir, "result.json")
    if os.path.isfile(marker_path):
        marker = read_json(marker_path)
        _check_settings(marker, settings, run_dir)
        return marker, True, float(marker.get("finetune_wall_s") or 0) + float(marker.get("eval_wall_s") or 0)
    if report_only:
        return None, False, 0.0
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    generators_file = pre["generators_file"] if pretrained else None
    overrides.update(
        {
            "pretrained_ckpt": generators_file,  # None: from scratch (checked through init.txt below)
            "ckpt_dir": os.path.join(run_dir, "models"),
            "output_dir": os.path.join(run_dir, "train"),
        }
    )
    log_file = os.path.join(run_dir, "workflow.log")
    start = time.perf_counter()
    extras = runner.finetune(overrides, log_file) or {}
    finetune_wall = time.perf_counter() - start
    init_path = os.path.join(overrides["output_dir"], "init.txt")
    if not os.path.isfile(init_path):
        raise BenchmarkError(f"{run_dir}: the fine-tuning wrote no init.txt, so its initialisation is unknown.")
    with open(init_path) as f:
        init_line = check_init_line(f.readline(), job.variant, generators_file, run_dir)
    selection = read_json(os.path.join(overrides["output_dir"], "label_subjects.json"))
    # the evaluation network must have the fine-tuned topology: the generator's features when pre-trained
    eval_overrides = {**overrides, "output_dir": os.path.join(run_dir, "eval")}
    if generators_file is not None:
        eval_overrides["features"] = generator_features(generators_file)
    start = time.perf_counter()
    runner.evaluate(eval_overrides, log_file)
    eval_wall = time.perf_counter() - start
    validation = pre.get("validation", {}) if pretrained else {}
    record = {
        "method": job.variant,
        "label": VARIANTS[job.variant][0],
        "fraction": float(job.fraction),
        "seed": int(job.seed),
        "n_label_subjects": len(selection["training_subjects"]),
        "label_subjects": sorted(selection["training_subjects"]),
        "validation_subjects": sorted(selection.get("validation_subjects", [])),
        "init": init_line,
        **read_metrics_summary(eval_overrides["output_dir"]),
        "best_val_dice": extras.get("best_val_dice"),
        "best_val_epoch": extras.get("best_val_epoch"),
        **{
            f"pretrain_{k}": validation.get(k)
            for k in (
                "val_psnr_ab",
                "val_psnr_ba",
                "val_psnr_identity",
                "val_mae_ab",
                "val_mae_ba",
                "val_mae_identity",
                "val_ssim_ab",
                "val_ssim_identity",
            )
        },
        "pretrain_wall_s": pre.get("wall_s") if pretrained else None,
        "finetune_wall_s": finetune_wall,
        "eval_wall_s": eval_wall,
        "finetune_iterations": iterations(overrides, "train.yaml"),
        "settings": settings,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    leaked = sorted(set(test_subjects) & (set(record["label_subjects"]) | set(record["validation_subjects"])))
    if leaked:
        raise BenchmarkError(f"{run_dir}: test subjects {leaked} were used for fine-tuning.")
    _write_json(record, marker_path)
    return record, False, finetune_wall + eval_wall
