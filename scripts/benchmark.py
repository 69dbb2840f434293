"""
Label-efficiency benchmark: the paper's protocol (spec ``method.md`` sections 5-7) with one command, driven
entirely by the bundle configs (``configs/pretrain.yaml``, ``configs/train.yaml``, ``configs/evaluate.yaml``, run
in-process through ``monai.bundle.ConfigWorkflow``).

    python scripts/benchmark.py --output_dir /tmp/bench_quick --quick True
    python scripts/benchmark.py --output_dir /tmp/bench_cpu --grid cpu --dry_run True --measure True
    python scripts/benchmark.py --output_dir /tmp/bench_cpu --grid cpu --threads 1
    python scripts/benchmark.py --output_dir /tmp/bench --seeds "[0,1,2]" --pretrain_seeds "[0,1]"
    python scripts/benchmark.py --output_dir /tmp/bench --dataset_dir D --data_list_file_path D/datalist.json \\
        --modalities "['flair','t2']" --pretrain_overrides "{'image_size': 160}" --finetune_overrides "{'image_size': 160}"
    python scripts/benchmark.py --output_dir /tmp/bench --dataset_dir D --data_list_file_path D/datalist.json \\
        --modalities "['flair','t2']" --preset brats

For each pre-training variant (``multi_condos``, the ablations ``no_contrastive``, ``no_sharing``, ``pix2pix_only``,
``cyclegan_only``, and the location-level contrastive options ``local_contrastive`` / ``both_contrastive``) one pre-training per pre-training seed (``--pretrain_seeds``, default ``[0]``)
is run and reused for every fraction and fine-tuning seed; each variant (from each of its pre-trainings) and the
``scratch`` baseline (no pre-training seed) are then fine-tuned at every label fraction and fine-tuning seed (the
same seeded, nested, subject-level splits and the same recipe for every method) and evaluated on the datalist's
``testing`` subjects. A fine-tuning job is (method, pre-training seed, fraction, fine-tuning seed).

Grids: the default (all eight methods, fractions ``[0.05, 0.1, 0.5, 1.0]``, fine-tuning seeds ``[0, 1, 2]``, one
pre-training seed, the configs' schedules: a GPU job), ``--quick True`` (3 methods x 3 fractions x 1 seed, short
schedules, < 20 min on 2 CPU cores), and ``--grid cpu``: full Multi-ConDoS, ``no_contrastive`` and scratch x
``[0.05, 0.1, 0.5, 1.0]`` x 2 pre-training seeds x 3 fine-tuning seeds (4 pre-trainings of 6 x 25 iterations, 60
fine-tunings with the default recipe over at most 60 x 10 iterations; an estimated 3-4 h, not measured, on 2
free CPU cores as two invocations). ``--variants``, ``--fractions``,
``--seeds`` and ``--pretrain_seeds`` replace a preset's own. The first progress line gives the planned runs and an
estimated wall time from measured per-iteration times: of the runs already finished in ``--output_dir``, or, with
``--measure True``, of short timing runs with the grid's settings (a pre-training and a fine-tuning + evaluation of
2 iterations per epoch, deleted afterwards); every later line gives the time left.

Statistics (``results.md``): paired differences on the per-subject test Dice (each evaluation's ``metrics.csv``),
fine-tuning seeds averaged per subject, with 95% intervals from a two-level cluster bootstrap that resamples the
pre-training seeds and the test subjects (``label_efficiency/stats.py``); the headline comparisons
Multi-ConDoS@5% vs scratch@50% and @10% vs scratch@100%, and per fraction every pre-trained method minus scratch.

Checks that abort the benchmark: a run's recorded ``init:`` line that does not match its method (a scratch run that
loaded weights, a pre-trained one that did not or loaded another file), test subjects among a run's labeled or
validation subjects, label subsets that differ between methods or are not nested across fractions.

Written to ``--output_dir`` (refused inside the repository): ``results.csv`` (one row per method x pre-training seed
x fraction x seed, with ``best_epoch`` and ``last_epoch`` of its validation history), ``results.md`` (mean ± std
over runs; paired differences with intervals), ``label_efficiency.png``, ``progress.log`` and one folder per run
(``pretrain/<variant>/seed_<p>/``, ``finetune/<method>/pretrain_seed_<p>/fraction_<f>_seed_<s>/``, for scratch
``finetune/scratch/fraction_<f>_seed_<s>/``, with the workflow log, the checkpoints, ``init.txt``,
``label_subjects.json`` and ``metrics.csv``). Re-running the same command skips every finished run (marker
``done.json`` / ``result.json``); an unfinished one is deleted and run again.

This file is the CLI; the benchmark itself is the package ``scripts/label_efficiency/`` (plan, runner, results,
checks, stats, timing, report, plots, protocol).
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
    pretrain_seeds: Sequence[int] | None = None,
    quick: bool = False,
    grid: str | None = None,
    pretrain_overrides: dict | None = None,
    finetune_overrides: dict | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    measure: bool = False,
    threads: int | None = None,
    verbose: bool = False,
    preset: str | None = None,
) -> None:
    """
    Run the label-efficiency benchmark (see the module docstring).

    Args:
        output_dir: where everything is written (required; not inside the repository).
        dataset_dir, data_list_file_path, modalities: the data (default: the embedded demo dataset, [t1, t2]).
        variants: methods among multi_condos, no_contrastive, no_sharing, pix2pix_only, cyclegan_only, local_contrastive,
            both_contrastive, scratch
            (default: all eight; --quick: multi_condos, scratch, no_contrastive; --grid cpu: multi_condos,
            no_contrastive, scratch).
        fractions: label fractions (default and --grid cpu [0.05, 0.1, 0.5, 1.0]; --quick: [0.1, 0.5, 1.0]).
        seeds: fine-tuning seeds (default and --grid cpu [0, 1, 2]; --quick: [0]).
        pretrain_seeds: pre-training seeds, one pre-training per variant and seed (default and --quick [0];
            --grid cpu [0, 1]); scratch has none.
        quick: --grid quick: a small grid with short schedules (pre-training 6 x 25 iterations, fine-tuning 10 x 15).
        grid: a grid preset: quick, or cpu (the statistics grid for 2 CPU cores; fine-tuning at most 60 x 10).
        pretrain_overrides, finetune_overrides: other config ids, e.g. "{'epochs': 20}" (fine-tuning ones also
            apply to the evaluation).
        dry_run: print the planned runs and the estimated wall time only.
        report_only: run nothing; write the reports from the runs of the grid finished so far (e.g. while another
            invocation is still running, or to merge grids run separately into one output folder).
        measure: estimate the wall time from short timing runs first (otherwise from finished runs, if any).
        threads: torch CPU threads (default: torch's choice; 1 can be faster on a CPU shared with other jobs).
        verbose: show the workflows' logs on the console (default: into each run's workflow.log).
        preset: a dataset preset merged on top of every workflow, e.g. ``brats`` (configs/brats.yaml: image size,
            intensity rules, region and paper-scale schedule; pass the matching --modalities).
    """
    # every argument but the CLI's own goes to run_benchmark as it is
    options = {k: v for k, v in locals().items() if k not in ("threads", "verbose", "preset")}
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        run_benchmark(
            **options,
            runner=BundleRunner(verbose=bool(verbose), preset=preset),
            command="python scripts/benchmark.py " + " ".join(sys.argv[1:]),
            echo=lambda text: print(text, flush=True),
        )
    except (BenchmarkError, RuntimeError) as e:
        print(f"benchmark stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
