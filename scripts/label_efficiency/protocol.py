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
from dataclasses import dataclass
from typing import Any

from .checks import check_output_dir, check_splits
from .plan import ROOT, VARIANTS, BenchmarkError, Grid, Job, as_list, plan_jobs, resolve_grid
from .report import fmt_number, write_reports
from .results import (
    check_init,
    finetune_validation,
    last_losses,
    last_validation,
    read_init,
    read_json,
    read_selection,
    read_test_metrics,
    recorded_settings,
    testing_subject_ids,
)
from .runner import BundleRunner
from .stats import SUBJECT_KEYS, finite_float
from .timing import Timing, estimate_text, measure_timings, run_iterations, run_timing, timings_of

__all__ = ["run_benchmark"]

#: the loss terms of pre-training, with the config id of their weight
LOSS_WEIGHTS = {
    "adversarial": "lambda_adversarial",
    "cycle": "lambda_cycle",
    "pix2pix": "lambda_pix2pix",
    "contrastive": "lambda_contrastive",
    "local_contrastive": "lambda_local_contrastive",
    "identity": "lambda_identity",
}
#: run paths and the dataset location are not part of a run's settings (the resume check compares the rest)
_PATH_IDS = ("bundle_root", "ckpt_dir", "output_dir", "pretrained_ckpt", "default_pretrained_ckpt")
#: pre-training's last validation metrics copied into every result row of its fine-tunings
_PRETRAIN_METRICS = (
    "val_psnr_ab",
    "val_psnr_ba",
    "val_psnr_identity",
    "val_mae_ab",
    "val_mae_ba",
    "val_mae_identity",
    "val_ssim_ab",
    "val_ssim_identity",
)


@dataclass
class _Setup:
    """What every run of one benchmark invocation shares."""

    output_dir: str
    pre_common: dict[str, Any]
    ft_common: dict[str, Any]
    runner: Any
    test_subjects: Sequence[str] = ()
    report_only: bool = False


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


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _read_marker(job: Job, run_dir: str) -> dict[str, Any] | None:
    """The marker of a finished run (``done.json`` beside its ``generators.pt``, or ``result.json``), else None."""
    if job.kind == "pretrain":
        finished = os.path.isfile(os.path.join(run_dir, "ckpt", "generators.pt"))
        path = os.path.join(run_dir, "done.json")
    else:
        finished, path = True, os.path.join(run_dir, "result.json")
    return read_json(path) if finished and os.path.isfile(path) else None


def run_benchmark(
    output_dir: str,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
    modalities: Sequence[str] = ("t1", "t2"),
    variants: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    pretrain_seeds: Sequence[int] | None = None,
    quick: bool = False,
    grid: str | None = None,
    pretrain_overrides: Mapping[str, Any] | None = None,
    finetune_overrides: Mapping[str, Any] | None = None,
    runner: Any = None,
    dry_run: bool = False,
    report_only: bool = False,
    measure: bool = False,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """
    Plan the grid, run what is not finished yet, check every run, write the reports; returns the result rows.
    Arguments as ``scripts/benchmark.py``'s (``runner``: a ``BundleRunner`` or one that writes the same files;
    ``echo``: where the progress lines go).
    """
    output_dir = check_output_dir(output_dir)
    chosen, pre_schedule, ft_schedule = resolve_grid(grid, quick, variants, fractions, seeds, pretrain_seeds)
    jobs = plan_jobs(chosen.variants, chosen.fractions, chosen.seeds, chosen.pretrain_seeds)
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
    ft_common = {**common, **ft_schedule, **dict(finetune_overrides or {})}
    if "epochs" in ft_common and "val_interval" not in ft_common:
        ft_common["val_interval"] = min(2, int(ft_common["epochs"]))  # the config's 2, at most the epochs
    setup = _Setup(
        output_dir=output_dir,
        pre_common={**common, **pre_schedule, **dict(pretrain_overrides or {})},
        ft_common=ft_common,
        runner=runner or BundleRunner(),
        report_only=bool(report_only),
    )
    if measure or not dry_run:
        os.makedirs(output_dir, exist_ok=True)
        if data_list_file_path == os.path.abspath(os.path.join(ROOT, "data", "demo", "datalist.json")):
            from bundle.demo_data import ensure_demo_dataset

            ensure_demo_dataset(dataset_dir, data_list_file_path)
    iterations = {
        "pretrain": run_iterations(setup.runner, "pretrain", setup.pre_common)[1],
        "finetune": run_iterations(setup.runner, "finetune", setup.ft_common)[1],
    }
    timings, source = _start_timings(setup, jobs, chosen, measure, echo)
    if dry_run:
        for k, job in enumerate(jobs, 1):
            echo(f"[{k}/{len(jobs)}] {job.describe()} (planned: {os.path.join(output_dir, job.name)})")
        echo(_plan_line(jobs, _unfinished(jobs, output_dir), iterations, timings, source, output_dir))
        return []

    setup.test_subjects = testing_subject_ids(data_list_file_path, dataset_dir, modalities)
    if not setup.test_subjects:
        raise BenchmarkError(f"{data_list_file_path} has no 'testing' records: the benchmark evaluates on them.")
    info = _run_info(setup, common, chosen, bool(quick), grid, command)
    recorded = os.path.join(output_dir, "benchmark_config.json")
    if not report_only:
        _write_json(info, recorded)
    else:  # the device the runs had (written by the invocation that ran them), not the report process's threads
        info["device"] = (
            read_json(recorded).get("device", info["device"]) if os.path.isfile(recorded)
            else f"unknown (no benchmark_config.json; this report process: {info['device']})"
        )
    progress_log = os.path.join(output_dir, "progress.log")

    def say(text: str) -> None:
        echo(text)
        with open(progress_log, "a") as f:
            f.write(f"{_now()} {text}\n")

    say(_plan_line(jobs, _unfinished(jobs, output_dir), iterations, timings, source, output_dir))
    rows: list[dict[str, Any]] = []
    pretrains: dict[tuple[str, int], dict[str, Any]] = {}
    wall_total = 0.0
    try:
        for k, job in enumerate(jobs, 1):
            run_dir = os.path.join(output_dir, job.name)
            if job.kind == "pretrain":
                record, skipped, wall = _pretrain(job, run_dir, setup)
            else:
                pre = pretrains.get((job.variant, job.pretrain_seed))
                record, skipped, wall = _finetune(job, run_dir, setup, pre)
            if record is None:
                say(f"[{k}/{len(jobs)}] {job.describe()} not finished (report only)")
                continue
            if job.kind == "pretrain":
                pretrains[(job.variant, job.pretrain_seed)] = record
            else:
                rows.append(record)
                check_splits(rows, setup.test_subjects)
            wall_total += wall
            when = "skipped (finished earlier)" if skipped else f"done in {wall:.1f}s"
            if not skipped:
                timings = {**timings, **timings_of({"pretrain": pretrains.values(), "finetune": rows})}
                source = "the runs finished so far"
            left = None if skipped else estimate_text(jobs[k:], iterations, timings, source)
            say(
                f"[{k}/{len(jobs)}] {job.describe()} {when}, {_run_summary(job, record)}"
                + (f"; left: {left}" if left else "")
            )
    finally:
        info = {**info, "wall_total_s": wall_total, "written": _now()}
        if rows or pretrains:
            write_reports(output_dir, rows, pretrains, info)
    say(f"benchmark finished: {os.path.join(output_dir, 'results.md')}")
    return rows


def _plan_line(
    jobs: Sequence[Job],
    unfinished: Sequence[Job],
    iterations: Mapping[str, int | None],
    timings: Mapping[str, Timing],
    source: str,
    output_dir: str,
) -> str:
    """The planned runs, and the estimated wall time of those not finished yet."""
    n_pre = sum(j.kind == "pretrain" for j in jobs)
    line = f"benchmark: {len(jobs)} runs ({n_pre} pre-trainings, {len(jobs) - n_pre} fine-tunings) into {output_dir}"
    if not unfinished:
        return line + "; all finished"
    estimate = estimate_text(unfinished, iterations, timings, source)
    return line + f"; estimated wall time {estimate or 'after the first runs (or with --measure True)'}"


def _unfinished(jobs: Sequence[Job], output_dir: str) -> list[Job]:
    return [j for j in jobs if _read_marker(j, os.path.join(output_dir, j.name)) is None]


def _start_timings(
    setup: _Setup, jobs: Sequence[Job], grid: Grid, measure: bool, echo: Callable[[str], None]
) -> tuple[dict[str, Timing], str]:
    """The timings to estimate with before the first run: measured now (``measure``), else from finished runs."""
    if measure:
        echo("measuring the time per iteration (short timing runs of each kind) ...")
        work_dir = os.path.join(setup.output_dir, "timing_runs")
        timings = measure_timings(setup.runner, setup.pre_common, setup.ft_common, grid, work_dir)
        return timings, "timing runs of this grid's settings"
    finished: dict[str, list[dict[str, Any]]] = {"pretrain": [], "finetune": []}
    for job in jobs:
        marker = _read_marker(job, os.path.join(setup.output_dir, job.name))
        if marker is not None:
            finished[job.kind].append(marker)
    return timings_of(finished), "the finished runs in this folder"


def _run_info(
    setup: _Setup, common: Mapping[str, Any], grid: Grid, quick: bool, grid_name: str | None, command: str
) -> dict[str, Any]:
    """``benchmark_config.json`` and the settings of ``results.md``."""
    import monai
    import torch

    return {
        "command": command or "run_benchmark(...)",
        "grid": "quick" if quick else grid_name,
        "variants": grid.variants,
        "fractions": grid.fractions,
        "seeds": grid.seeds,
        "pretrain_seeds": grid.pretrain_seeds,
        "quick": quick,
        "data_list_file_path": common["data_list_file_path"],
        "modalities": common["modalities"],
        "n_test_subjects": len(setup.test_subjects),
        "pretrain_overrides": _settings({k: v for k, v in setup.pre_common.items() if k not in common}),
        "finetune_overrides": _settings({k: v for k, v in setup.ft_common.items() if k not in common}),
        "device": f"cuda ({torch.cuda.get_device_name(0)})"
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "started": _now(),
    }


def _run_summary(job: Job, record: Mapping[str, Any]) -> str:
    """The end of a run's progress line: its main numbers."""
    if job.kind == "pretrain":
        ab, ba, identity = (fmt_number(record["validation"].get(k), ".2f") for k in _PRETRAIN_METRICS[:3])
        return f"val PSNR A→B {ab} dB, B→A {ba} dB (identity {identity} dB)"
    return (
        f"test Dice {fmt_number(record.get('test_dice'))} (HD95 {fmt_number(record.get('test_hd95'), '.1f')} mm), "
        f"best epoch {record.get('best_epoch')} of {record.get('last_epoch')}"
    )


def _pretrain(job: Job, run_dir: str, setup: _Setup) -> tuple[dict | None, bool, float]:
    overrides = {**setup.pre_common, **VARIANTS[job.variant][1], "seed": int(job.pretrain_seed)}
    settings = _settings(overrides)
    marker = _read_marker(job, run_dir)
    if marker is not None:
        _check_settings(marker, settings, run_dir)
        return marker, True, float(marker.get("wall_s") or 0)
    if setup.report_only:
        return None, False, 0.0
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # an unfinished run of ours: start it again
    overrides.update({"ckpt_dir": os.path.join(run_dir, "ckpt"), "output_dir": os.path.join(run_dir, "out")})
    start = time.perf_counter()
    setup.runner.pretrain(overrides, os.path.join(run_dir, "workflow.log"))
    wall = time.perf_counter() - start
    generators_file = os.path.join(run_dir, "ckpt", "generators.pt")
    if not os.path.isfile(generators_file):
        raise BenchmarkError(f"pre-training {job.variant} finished without {generators_file}.")
    used = recorded_settings(overrides["ckpt_dir"])
    configured = setup.runner.config_values("pretrain", overrides, list(LOSS_WEIGHTS.values()))
    weights = {term: finite_float(used.get(key, configured.get(key))) for term, key in LOSS_WEIGHTS.items()}
    schedule, n_iterations = run_iterations(setup.runner, "pretrain", overrides)
    record = {
        "variant": job.variant,
        "pretrain_seed": int(job.pretrain_seed),
        "settings": settings,
        "generators_file": generators_file,
        "validation": last_validation(overrides["output_dir"]),
        "losses": last_losses(overrides["output_dir"]),
        "weights": weights,
        "iterations": schedule,
        "wall_s": wall,
        "timing": run_timing("pretrain", overrides["output_dir"], wall, n_iterations),
        "finished": _now(),
    }
    _write_json(record, os.path.join(run_dir, "done.json"))
    return record, False, wall


def _finetune(job: Job, run_dir: str, setup: _Setup, pre: Mapping[str, Any] | None) -> tuple[dict | None, bool, float]:
    pretrained = VARIANTS[job.variant][1] is not None
    if pretrained and pre is None and setup.report_only:
        return None, False, 0.0
    if pretrained and pre is None:
        raise BenchmarkError(f"{job.name}: no pre-training of {job.variant} (planning error).")
    overrides = {**setup.ft_common, "label_fraction": float(job.fraction), "seed": int(job.seed)}
    settings = _settings(overrides)
    settings["pretraining"] = pre["settings"] if pretrained else None
    marker = _read_marker(job, run_dir)
    if marker is not None:
        _check_settings(marker, settings, run_dir)
        if not set(SUBJECT_KEYS.values()) <= set(marker):  # written before the per-subject results were kept
            marker.update(
                {
                    **read_test_metrics(os.path.join(run_dir, "eval")),
                    **finetune_validation(os.path.join(run_dir, "train")),
                }
            )
        return marker, True, float(marker.get("finetune_wall_s") or 0) + float(marker.get("eval_wall_s") or 0)
    if setup.report_only:
        return None, False, 0.0
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    generators_file = pre["generators_file"] if pretrained else None
    train_dir = os.path.join(run_dir, "train")
    overrides.update(
        {
            "pretrained_ckpt": generators_file,  # None: from scratch (checked through the model record below)
            "ckpt_dir": os.path.join(run_dir, "models"),
            "output_dir": train_dir,
        }
    )
    log_file = os.path.join(run_dir, "workflow.log")
    start = time.perf_counter()
    setup.runner.finetune(overrides, log_file)
    finetune_wall = time.perf_counter() - start
    init = check_init(read_init(overrides["ckpt_dir"], run_dir), job.variant, generators_file, run_dir)
    selection = read_selection(train_dir)
    # the evaluation takes the fine-tuned topology and preprocessing from the model record
    eval_overrides = {**overrides, "output_dir": os.path.join(run_dir, "eval")}
    start = time.perf_counter()
    setup.runner.evaluate(eval_overrides, log_file)
    eval_wall = time.perf_counter() - start
    validation = pre.get("validation", {}) if pretrained else {}
    schedule, n_iterations = run_iterations(setup.runner, "finetune", overrides)
    record = {
        "method": job.variant,
        "label": VARIANTS[job.variant][0],
        "pretrain_seed": job.pretrain_seed,
        "fraction": float(job.fraction),
        "seed": int(job.seed),
        "n_label_subjects": len(selection["training_subjects"]),
        "label_subjects": sorted(selection["training_subjects"]),
        "validation_subjects": sorted(selection.get("validation_subjects", [])),
        "init": init,
        **read_test_metrics(eval_overrides["output_dir"]),
        **finetune_validation(train_dir),
        **{f"pretrain_{k}": validation.get(k) for k in _PRETRAIN_METRICS},
        "pretrain_wall_s": pre.get("wall_s") if pretrained else None,
        "finetune_wall_s": finetune_wall,
        "eval_wall_s": eval_wall,
        "finetune_iterations": schedule,
        "timing": run_timing("finetune", train_dir, finetune_wall + eval_wall, n_iterations),
        "settings": settings,
        "finished": _now(),
    }
    leaked = sorted(set(setup.test_subjects) & (set(record["label_subjects"]) | set(record["validation_subjects"])))
    if leaked:
        raise BenchmarkError(f"{run_dir}: test subjects {leaked} were used for fine-tuning.")
    _write_json(record, os.path.join(run_dir, "result.json"))
    return record, False, finetune_wall + eval_wall
