# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Label-efficiency benchmark: the paper's protocol (spec ``method.md`` sections 5-7) with one command, driven
entirely by the bundle configs (``configs/pretrain.yaml``, ``configs/train.yaml``, ``configs/evaluate.yaml``, run
in-process through ``monai.bundle.ConfigWorkflow``).

    python scripts/benchmark.py --output_dir /tmp/bench_quick --quick True
    python scripts/benchmark.py --output_dir /tmp/bench --seeds "[0,1,2]" --fractions "[0.05,0.1,0.5,1.0]"
    python scripts/benchmark.py --output_dir /tmp/bench --dataset_dir D --data_list_file_path D/datalist.json \\
        --modalities "['flair','t2']" --pretrain_overrides "{'image_size': 160}" --finetune_overrides "{'image_size': 160}"
    python scripts/benchmark.py --output_dir /tmp/bench --dataset_dir D --data_list_file_path D/datalist.json \\
        --modalities "['flair','t2']" --preset brats

For each pre-training variant (``multi_condos`` and the ablations ``no_contrastive``, ``no_sharing``,
``pix2pix_only``, ``cyclegan_only``) one pre-training (seed 0) is run and reused for every fraction and seed; each
variant and the ``scratch`` baseline are then fine-tuned at every label fraction and seed (the same seeded, nested,
subject-level splits and the same recipe for every method) and evaluated on the datalist's ``testing`` subjects.

Checks that abort the benchmark: a run's recorded ``init:`` line that does not match its method (a scratch run that
loaded weights, a pre-trained one that did not or loaded another file), test subjects among a run's labeled or
validation subjects, label subsets that differ between methods or are not nested across fractions.

Written to ``--output_dir`` (refused inside the repository): ``results.csv`` (one row per method x fraction x seed),
``results.md`` (mean ± std over seeds; headline comparisons), ``label_efficiency.png``, ``progress.log`` and one
folder per run (``pretrain/<variant>/``, ``finetune/<method>/fraction_<f>_seed_<s>/`` with the workflow log, the
checkpoints, ``init.txt``, ``label_subjects.json`` and ``metrics.csv``). Re-running the same command skips every
finished run (marker ``done.json`` / ``result.json``); an unfinished one is deleted and run again.

This file is the CLI; the benchmark itself is the package ``scripts/label_efficiency/`` (plan, runner, results,
checks, stats, report, plots, protocol).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.label_efficiency.plan import BenchmarkError  # noqa: E402
from scripts.label_efficiency.protocol import run_benchmark  # noqa: E402
from scripts.label_efficiency.runner import BundleRunner  # noqa: E402

__all__ = ["main"]


def main(
    output_dir: str = "",
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
    modalities: Sequence[str] = ("t1", "t2"),
    variants: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    pretrain_overrides: dict | None = None,
    finetune_overrides: dict | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    threads: int | None = None,
    verbose: bool = False,
    preset: str | None = None,
) -> None:
    """
    Run the label-efficiency benchmark (see the module docstring).

    Args:
        output_dir: where everything is written (required; not inside the repository).
        dataset_dir, data_list_file_path, modalities: the data (default: the embedded demo dataset, [t1, t2]).
        variants: methods among multi_condos, no_contrastive, no_sharing, pix2pix_only, cyclegan_only, scratch
            (default: all six; --quick: multi_condos, scratch, no_contrastive).
        fractions: label fractions (default [0.05, 0.1, 0.5, 1.0]; --quick: [0.1, 0.5, 1.0]).
        seeds: fine-tuning seeds (default [0, 1, 2]; --quick: [0]).
        quick: a small grid with short schedules (pre-training 6 x 25 iterations, fine-tuning 10 x 15).
        pretrain_overrides, finetune_overrides: other config ids, e.g. "{'epochs': 20}" (fine-tuning ones also
            apply to the evaluation).
        dry_run: print the planned runs only.
        report_only: run nothing; write the reports from the runs of the grid finished so far (e.g. while another
            invocation is still running, or to merge grids run separately into one output folder).
        threads: torch CPU threads (default: torch's choice; 1 can be faster on a CPU shared with other jobs).
        verbose: show the workflows' logs on the console (default: into each run's workflow.log).
        preset: a dataset preset merged on top of every workflow, e.g. ``brats`` (configs/brats.yaml: image size,
            intensity rules, region and paper-scale schedule; pass the matching --modalities).
    """
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:])
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        run_benchmark(
            output_dir,
            dataset_dir=dataset_dir,
            data_list_file_path=data_list_file_path,
            modalities=modalities,
            variants=variants,
            fractions=fractions,
            seeds=seeds,
            quick=bool(quick),
            pretrain_overrides=pretrain_overrides,
            finetune_overrides=finetune_overrides,
            runner=BundleRunner(verbose=bool(verbose), preset=preset),
            dry_run=bool(dry_run),
            report_only=bool(report_only),
            command=command,
            echo=lambda text: print(text, flush=True),
        )
    except (BenchmarkError, RuntimeError) as e:
        print(f"benchmark stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
