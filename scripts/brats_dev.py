# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The real-BraTS experiment on the 8 development subjects of BraTS 2018 (``../shared/data/brats2018_dev``, read in
place): the datalist (``bundle.datasets.prepare_datalist``, as ``scripts/prepare_datalist.py``: 5 training, 1
validation and 2 held-out testing subjects), Multi-ConDoS pre-training FLAIR <-> T2 on the training subjects' images
(one per ``--pretrain_seeds``), fine-tuning on FLAIR (whole tumour) with 1 labelled subject and with all 5, from each
pre-training and (``--scratch True``) from scratch, for every ``--seeds`` (the seed also picks the labelled subject),
and evaluation of each model on every held-out subject. The configs are the bundle's (``pretrain.yaml``,
``train.yaml``, ``evaluate.yaml`` with the ``brats.yaml`` preset), run in-process.

    nice -n 10 python scripts/brats_dev.py --scale cpu                 # ~20 min on 2 CPU cores
    python scripts/brats_dev.py --scale gpu --seeds "[0,1,2]"         # one GPU
    python scripts/brats_dev.py --scale gpu --copy_data_to data/brats2018_dev   # the GPU machine: FLAIR, T2, seg only
    python scripts/brats_dev.py --scale gpu --pretrain_overrides "{'epochs': 12}" --finetune_overrides "{'epochs': 8}"

Scales: ``smoke`` (the slow test's: 32x32, tiny widths, 2 iterations), ``cpu`` (64x64, the paper's widths, 500
pre-training and 500 fine-tuning iterations) and ``gpu`` (the preset's 160x160 and fine-tuning schedule; 60 x 200
pre-training iterations, long enough for the translation to beat the identity mapping clearly: the script reports
whether validation PSNR beats it by >= 3 dB). ``--pretrain_overrides`` / ``--finetune_overrides`` set config ids on
top of a scale's (a bounded run; docs/results.md gives the one made on one GPU). Pre-training batches hold at most
one slice per subject, so the 5 training subjects allow batch 4 at every scale.

Printed: per pre-training, the last validation PSNR of G_AB(FLAIR) vs T2 and G_BA(T2) vs FLAIR beside the identity
mapping (FLAIR vs T2); per fine-tuning, every held-out subject's Dice, HD95 (mm), precision, sensitivity and voxel
counts; then per (init, labelled subjects) and subject the mean over seeds. Written to ``--output_dir`` (default
``outputs/brats_dev/<scale>``, ignored by git; a folder inside the repository must be ignored): ``datalist.json``,
``pretraining.csv``, ``results.csv`` (one row per run and held-out subject) and one folder per run with its log,
checkpoints and metrics. Re-running skips finished runs (``done.json``); an unfinished run folder is replaced.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bundle.datasets import prepare_datalist  # noqa: E402
from scripts.label_efficiency.results import last_validation  # noqa: E402
from scripts.label_efficiency.runner import BundleRunner  # noqa: E402

__all__ = ["SCALES", "main", "scale_config"]

#: the development folder beside the repository (see its SOURCE.md)
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "brats2018_dev")
#: the pair and the split of the experiment (8 subjects: 5 training, 1 validation, 2 testing)
MODALITIES = ("flair", "t2")
SPLIT = {"test_fraction": 0.25, "val_fraction": 0.125, "seed": 0}
#: what each scale overrides; ``pretrain``/``finetune`` go to that workflow only, ``common`` to both
_TINY = {"features": [8, 8, 16, 16, 32, 8]}
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "common": {"image_size": 32, "cache_num_workers": 2, **_TINY},
        "pretrain": {"batch_size": 4, "epochs": 1, "epoch_length": 2, "val_slices_per_subject": 2,
                     "image_pool_size": 2, "discriminator_channels": 8, "projection_dim": 16, "log_interval": 1},
        "finetune": {"batch_size": 4, "samples_per_subject": 2, "epochs": 1, "epoch_length": 2, "val_interval": 1},
    },
    "cpu": {
        "common": {"image_size": 64},
        # 500 pre-training and 500 fine-tuning iterations (100 left every run at its last epoch, over-segmenting);
        # a validation (one 240x240x155 volume, foreground box only) takes about 20 s on one core
        "pretrain": {"batch_size": 4, "epochs": 10, "epoch_length": 50, "save_interval": 5, "log_interval": 10},
        "finetune": {"batch_size": 8, "samples_per_subject": 4, "epochs": 20, "epoch_length": 25, "val_interval": 4},
    },
    "gpu": {
        "common": {"amp": True},  # the preset's image_size (160) and fine-tuning schedule
        "pretrain": {"batch_size": 4, "epochs": 60, "epoch_length": 200, "save_interval": 20, "log_interval": 50},
        "finetune": {},
    },
}
#: the translation must beat the identity mapping by this much at the gpu scale (issue 15)
PSNR_GAIN_DB = 3.0
RESULT_FIELDS = (
    "init", "labelled", "seed", "subject", "dice", "hd95", "precision", "sensitivity", "pred_voxels", "label_voxels",
    "labelled_subjects", "best_val_dice_epoch",
)


def scale_config(
    scale: str, pretrain_overrides: Mapping[str, Any] | None = None, finetune_overrides: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """
    The overrides of ``scale`` (``SCALES``) with ``pretrain_overrides`` and ``finetune_overrides`` on top of its
    pre-training and fine-tuning ones.

    Raises:
        SystemExit: an unknown scale, or overrides that are not a mapping (e.g. a string Fire did not parse).
    """
    if scale not in SCALES:
        raise SystemExit(f"ERROR: --scale must be one of {list(SCALES)}, got {scale!r}.")
    for name, value in (("pretrain_overrides", pretrain_overrides), ("finetune_overrides", finetune_overrides)):
        if value is not None and not isinstance(value, Mapping):
            raise SystemExit(f"ERROR: --{name} must be a dict of config ids, e.g. \"{{'epochs': 20}}\", got {value!r}.")
    return {
        "common": dict(SCALES[scale]["common"]),
        "pretrain": {**SCALES[scale]["pretrain"], **(pretrain_overrides or {})},
        "finetune": {**SCALES[scale]["finetune"], **(finetune_overrides or {})},
    }


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def check_output_dir(output_dir: str) -> str:
    """
    The absolute output folder: outside the repository, or inside it only where git ignores it.

    Raises:
        SystemExit: a folder inside the repository that git would track.
    """
    path = os.path.realpath(os.path.abspath(output_dir))
    root = os.path.realpath(ROOT)
    if path == root or path.startswith(root + os.sep):
        probe = os.path.relpath(os.path.join(path, "probe.pt"), root)
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=root, check=False).returncode == 0
        if not ignored:
            raise SystemExit(f"ERROR: --output_dir {output_dir} is inside the repository and not ignored by git.")
    return path


def copy_data(data_dir: str, target: str) -> str:
    """
    Copy FLAIR, T2 and the segmentation of every subject (about 43 MB for the 8 subjects) to ``target`` (e.g. an
    ignored folder that travels to a GPU machine with the working tree); files already there are kept.

    Raises:
        SystemExit: ``target`` inside the repository and not ignored by git.
    """
    target = check_output_dir(target)
    for subject in sorted(os.listdir(data_dir)):
        folder = os.path.join(data_dir, subject)
        if not os.path.isdir(folder):
            continue
        os.makedirs(os.path.join(target, subject), exist_ok=True)
        for suffix in ("flair", "t2", "seg"):
            name = f"{subject}_{suffix}.nii.gz"
            if os.path.isfile(os.path.join(folder, name)) and not os.path.isfile(os.path.join(target, subject, name)):
                shutil.copyfile(os.path.join(folder, name), os.path.join(target, subject, name))
    return target


def write_datalist(data_dir: str, output_dir: str) -> tuple[str, dict]:
    """The experiment's datalist in ``output_dir`` (written once; a later run reuses it)."""
    path = os.path.join(output_dir, "datalist.json")
    if not os.path.isfile(path):
        prepare_datalist(data_dir, path, modalities=list(MODALITIES), **SPLIT)
    with open(path) as f:
        datalist = json.load(f)
    return path, datalist


def _fresh(run_dir: str) -> bool:
    """``False`` when ``run_dir`` holds a finished run; an unfinished one is deleted."""
    if os.path.isfile(os.path.join(run_dir, "done.json")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _done(run_dir: str, record: Mapping[str, Any]) -> None:
    with open(os.path.join(run_dir, "done.json"), "w") as f:
        json.dump(dict(record), f, indent=2)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def pretrain(runner: BundleRunner, data: Mapping[str, str], scale: Mapping, run_dir: str, seed: int,
             extra: Mapping[str, Any]) -> dict[str, Any]:
    """One pre-training; returns its last validation (PSNR of both directions and of the identity mapping)."""
    if _fresh(run_dir):
        overrides = {
            "bundle_root": ROOT, **data, **scale["common"], **scale["pretrain"], **extra, "seed": seed,
            "ckpt_dir": os.path.join(run_dir, "ckpt"), "output_dir": os.path.join(run_dir, "out"),
        }
        _say(f"pre-training seed {seed} -> {run_dir}")
        runner.pretrain(overrides, os.path.join(run_dir, "pretrain.log"))
        val = last_validation(os.path.join(run_dir, "out"))
        settings = _read_json(os.path.join(run_dir, "ckpt", "generators.json"))["training"]["settings"]
        iterations = int(settings["epochs"]) * int(settings["epoch_length"])
        _done(run_dir, {"seed": seed, "iterations": iterations, "validation": val})
    done = _read_json(os.path.join(run_dir, "done.json"))
    val = done["validation"]
    return {
        "seed": seed,
        "iterations": done["iterations"],
        **{k: val.get(k) for k in ("val_psnr_ab", "val_psnr_ba", "val_psnr_identity", "val_ssim_ab", "val_ssim_ba")},
        "psnr_gain_ab": val["val_psnr_ab"] - val["val_psnr_identity"],
        "psnr_gain_ba": val["val_psnr_ba"] - val["val_psnr_identity"],
        "generators": os.path.join(run_dir, "ckpt", "generators.pt"),
    }


def finetune_and_evaluate(runner: BundleRunner, data: Mapping[str, str], scale: Mapping, run_dir: str,
                          init: str, generators: str | None, label_fraction: float, seed: int) -> list[dict[str, Any]]:
    """One fine-tuning (FLAIR, whole tumour) and its evaluation; returns one row per held-out subject."""
    ckpt_dir, train_dir, eval_dir = (os.path.join(run_dir, n) for n in ("models", "train", "eval"))
    if _fresh(run_dir):
        overrides = {
            "bundle_root": ROOT, **data, **scale["common"], **scale["finetune"], "seed": seed,
            "label_fraction": label_fraction, "pretrained_ckpt": generators or "none",
            "ckpt_dir": ckpt_dir, "output_dir": train_dir,
        }
        _say(f"fine-tuning {init}, label_fraction {label_fraction:.3g}, seed {seed} -> {run_dir}")
        runner.finetune(overrides, os.path.join(run_dir, "finetune.log"))
        runner.evaluate({**overrides, "output_dir": eval_dir}, os.path.join(run_dir, "evaluate.log"))
        _done(run_dir, {"init": init, "label_fraction": label_fraction, "seed": seed})
    selection = _read_json(os.path.join(train_dir, "label_subjects.json"))
    best_epoch = _best_epoch(train_dir)
    with open(os.path.join(eval_dir, "metrics.csv"), newline="") as f:
        metrics = list(csv.DictReader(f))
    return [
        {
            "init": init, "labelled": len(selection["training_subjects"]), "seed": seed, "subject": m["subject"],
            **{k: float(m[k]) for k in ("dice", "hd95", "precision", "sensitivity")},
            "pred_voxels": int(m["pred_voxels"]), "label_voxels": int(m["label_voxels"]),
            "labelled_subjects": " ".join(selection["training_subjects"]), "best_val_dice_epoch": best_epoch,
        }
        for m in metrics
    ]


def _best_epoch(train_dir: str) -> int | None:
    from scripts.label_efficiency.results import finetune_validation

    try:
        return finetune_validation(train_dir)["best_epoch"]
    except Exception:  # no TensorBoard history (a recipe that logs elsewhere): the column stays empty
        return None


def _write_csv(path: str, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "nan" if value is None or value != value else format(value, spec)


def print_report(pretrainings: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], gain_check: bool) -> None:
    """The pre-trainings' validation PSNR vs identity, then every run's per-subject metrics and their seed means."""
    print("\npre-training validation (last epoch): PSNR in dB, G_AB(FLAIR) vs T2, G_BA(T2) vs FLAIR, identity FLAIR vs T2")
    print(f"{'seed':>4} {'iters':>6} {'PSNR_ab':>8} {'PSNR_ba':>8} {'identity':>8} {'gain_ab':>8} {'gain_ba':>8}")
    for p in pretrainings:
        print(
            f"{p['seed']:>4} {p['iterations']:>6} {_fmt(p['val_psnr_ab'], '8.2f')} {_fmt(p['val_psnr_ba'], '8.2f')} "
            f"{_fmt(p['val_psnr_identity'], '8.2f')} {_fmt(p['psnr_gain_ab'], '+8.2f')} {_fmt(p['psnr_gain_ba'], '+8.2f')}"
            + (f"  {'>=' if p['psnr_gain_ab'] >= PSNR_GAIN_DB else '<'} {PSNR_GAIN_DB:g} dB" if gain_check else "")
        )
    print("\nheld-out subjects, whole tumour (FLAIR): per run")
    print(f"{'init':<18} {'lab':>3} {'seed':>4} {'subject':<22} {'Dice':>6} {'HD95':>7} {'prec':>6} {'sens':>6} "
          f"{'pred_vox':>9} {'label_vox':>9}")
    for r in rows:
        print(
            f"{r['init']:<18} {r['labelled']:>3} {r['seed']:>4} {r['subject']:<22} {_fmt(r['dice'], '6.3f')} "
            f"{_fmt(r['hd95'], '7.1f')} {_fmt(r['precision'], '6.3f')} {_fmt(r['sensitivity'], '6.3f')} "
            f"{r['pred_voxels']:>9} {r['label_voxels']:>9}"
        )
    print("\nper subject, mean over seeds (n seeds): Dice, HD95")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["init"], r["labelled"], r["subject"]), []).append(r)
    for (init, labelled, subject), group in sorted(groups.items()):
        dice = [g["dice"] for g in group if g["dice"] == g["dice"]]
        hd95 = [g["hd95"] for g in group if g["hd95"] == g["hd95"] and g["hd95"] != float("inf")]
        print(f"{init:<18} {labelled:>3} {subject:<22} Dice {_fmt(sum(dice) / len(dice) if dice else None, '6.3f')}  HD95 {_fmt(sum(hd95) / len(hd95) if hd95 else None, '7.1f')}"
              f"  (n={len(group)})")


def main(
    scale: str = "cpu",
    data_dir: str = DEFAULT_DATA_DIR,
    output_dir: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    pretrain_seeds: Sequence[int] = (0,),
    scratch: bool = True,
    contrastive: str = "global",
    copy_data_to: str | None = None,
    pretrain_overrides: Mapping[str, Any] | None = None,
    finetune_overrides: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """
    Run (or resume) the experiment and print its numbers.

    Args:
        scale: ``smoke``, ``cpu`` or ``gpu`` (``SCALES``).
        data_dir: the BraTS 2018 development folder (read in place).
        output_dir: where runs and tables go (default ``outputs/brats_dev/<scale>``).
        seeds: fine-tuning seeds (each also draws the 1 labelled subject).
        pretrain_seeds: one pre-training per seed; every one is fine-tuned from.
        scratch: also fine-tune from scratch (the baseline).
        contrastive: the pre-training's ``contrastive`` (``global``, ``local`` or ``both``).
        copy_data_to: first copy FLAIR, T2 and seg to this (ignored) folder and read them from there.
        pretrain_overrides, finetune_overrides: config ids set on top of the scale's, e.g. a shorter schedule
            ``"{'epochs': 20}"``; recorded in each run's settings like every other override.
        verbose: workflow logs on the console instead of the runs' log files.

    Returns:
        the per-run, per-subject rows of ``results.csv``.
    """
    cfg = scale_config(scale, pretrain_overrides, finetune_overrides)
    if not os.path.isdir(data_dir):
        raise SystemExit(f"ERROR: --data_dir {data_dir} not found (the BraTS 2018 development folder, see SOURCE.md).")
    out = check_output_dir(output_dir or os.path.join(ROOT, "outputs", "brats_dev", scale))
    os.makedirs(out, exist_ok=True)
    if copy_data_to:
        data_dir = copy_data(data_dir, copy_data_to)
    datalist_path, datalist = write_datalist(data_dir, out)
    data = {"dataset_dir": os.path.abspath(data_dir), "data_list_file_path": datalist_path}
    n_train = len(datalist["training"])
    _say(f"{len(datalist['training'])} training, {len(datalist['validation'])} validation, "
         f"{len(datalist['testing'])} testing subjects; scale {scale}; outputs in {out}")
    runner = BundleRunner(ROOT, verbose=verbose, preset="brats")
    pretrainings = [
        pretrain(runner, data, cfg, os.path.join(out, "pretrain", f"seed_{p}"), int(p), {"contrastive": contrastive})
        for p in pretrain_seeds
    ]
    _write_csv(os.path.join(out, "pretraining.csv"), pretrainings, [k for k in pretrainings[0] if k != "generators"])
    inits = [(f"pretrained_seed{p['seed']}", p["generators"]) for p in pretrainings] + ([("scratch", None)] if scratch else [])
    rows: list[dict[str, Any]] = []
    for init, generators in inits:
        for label_fraction, name in ((1.0 / n_train, "1"), (1.0, "all")):
            for seed in seeds:
                run_dir = os.path.join(out, "finetune", init, f"labelled_{name}_seed_{seed}")
                rows += finetune_and_evaluate(runner, data, cfg, run_dir, init, generators, label_fraction, int(seed))
                _write_csv(os.path.join(out, "results.csv"), rows, RESULT_FIELDS)
    print_report(pretrainings, rows, gain_check=scale == "gpu")
    print(f"\nwritten: {os.path.join(out, 'pretraining.csv')}, {os.path.join(out, 'results.csv')}")
    return rows


if __name__ == "__main__":
    import fire

    fire.Fire(main)
