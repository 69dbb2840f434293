"""The label-efficiency benchmark (scripts/benchmark.py, scripts/label_efficiency/): planning, checks, the cluster
bootstrap on synthetic data, reading a run's outputs, aggregation and resume with a fake runner, and one tiny real grid
(full Multi-ConDoS + scratch, 2 fractions, 1 seed, 2 epochs) through the configs."""

from __future__ import annotations

import csv
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle.files import sha256_file
from bundle.records import write_record
from conftest import ROOT, TINY_NET
from scripts import benchmark
from scripts.label_efficiency import checks, plan, protocol, report, results, runner, stats, timing


# ---------------------------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------------------------
def test_plan_one_pretraining_per_variant_before_its_first_use():
    jobs = plan.plan_jobs(["scratch", "no_contrastive", "multi_condos"], [1.0, 0.1, 0.5], [1, 0])
    pretrains = [j for j in jobs if j.kind == "pretrain"]
    finetunes = [j for j in jobs if j.kind == "finetune"]
    assert sorted(j.variant for j in pretrains) == ["multi_condos", "no_contrastive"]  # scratch: none
    assert len(finetunes) == 3 * 3 * 2
    assert len({j.name for j in jobs}) == len(jobs)
    for p in pretrains:
        first_use = min(i for i, j in enumerate(jobs) if j.kind == "finetune" and j.variant == p.variant)
        assert jobs.index(p) < first_use
    # seed by seed (first seed as given), fractions ascending, methods in the canonical order
    assert [(j.seed, j.fraction, j.variant) for j in finetunes[:3]] == [
        (1, 0.1, "multi_condos"),
        (1, 0.1, "no_contrastive"),
        (1, 0.1, "scratch"),
    ]
    assert [j.fraction for j in finetunes[:9:3]] == [0.1, 0.5, 1.0]


def test_plan_pretrain_seeds_and_the_cpu_grid():
    jobs = plan.plan_jobs(["multi_condos", "scratch"], [0.1, 0.5], [0, 1], [0, 1])
    pretrains = [j for j in jobs if j.kind == "pretrain"]
    finetunes = [j for j in jobs if j.kind == "finetune"]
    assert [(j.variant, j.pretrain_seed) for j in pretrains] == [("multi_condos", 0), ("multi_condos", 1)]
    assert len(finetunes) == 2 * 2 * 2 + 2 * 2 and len({j.name for j in jobs}) == len(jobs)
    assert {j.pretrain_seed for j in finetunes if j.variant == "scratch"} == {None}  # scratch: no pre-training seed
    for p in pretrains:  # each pre-training before the first fine-tuning that uses it
        first_use = min(
            i
            for i, j in enumerate(jobs)
            if (j.kind, j.variant, j.pretrain_seed) == ("finetune",) + (p.variant, p.pretrain_seed)
        )
        assert jobs.index(p) < first_use
    assert pretrains[1].name == "pretrain/multi_condos/seed_1"
    assert finetunes[1].name == "finetune/multi_condos/pretrain_seed_1/fraction_0.1_seed_0"
    assert finetunes[2].name == "finetune/scratch/fraction_0.1_seed_0"
    assert finetunes[1].describe() == "variant=multi_condos pretrain_seed=1 fraction=0.1 seed=0"
    # --grid cpu: full, w/o contrastive and scratch x 4 fractions x 2 pre-training x 3 fine-tuning seeds
    grid, pre, ft = plan.resolve_grid("cpu")
    assert grid.variants == ["multi_condos", "no_contrastive", "scratch"] and grid.fractions == [0.05, 0.1, 0.5, 1.0]
    assert grid.pretrain_seeds == [0, 1] and grid.seeds == [0, 1, 2] and ft["val_interval"] <= ft["epochs"]
    cpu = plan.plan_jobs(grid.variants, grid.fractions, grid.seeds, grid.pretrain_seeds)
    assert sum(j.kind == "pretrain" for j in cpu) == 4 and sum(j.kind == "finetune" for j in cpu) == 4 * 3 * (2 + 2 + 1)
    assert plan.resolve_grid("cpu", seeds=[5])[0].seeds == [5]  # given values replace the preset's
    assert plan.resolve_grid(quick=True)[0].pretrain_seeds == [0] and plan.resolve_grid()[1] == {}
    with pytest.raises(plan.BenchmarkError, match="unknown --grid"):
        plan.resolve_grid("gpu")
    with pytest.raises(plan.BenchmarkError, match="cannot be combined"):
        plan.resolve_grid("cpu", quick=True)


def test_wall_time_estimate_from_measured_runs():
    runs = [
        {"wall_s": 30.0, "train_s": 20.0, "n_iterations": 100},
        {"wall_s": 50.0, "train_s": 30.0, "n_iterations": 100},
    ]
    pre = timing.Timing.from_runs(runs + [{"wall_s": 9.0, "train_s": None, "n_iterations": 10}])  # the last: unknown
    assert (pre.s_per_iteration, pre.fixed_s, pre.n_runs) == pytest.approx((0.25, 15.0, 2))
    assert timing.Timing.from_runs([{}]) is None
    jobs = plan.plan_jobs(["multi_condos", "scratch"], [1.0], [0, 1])  # 1 pre-training, 4 fine-tunings
    ft = timing.Timing(0.5, 10.0, 1)
    iterations = {"pretrain": 100, "finetune": 20}
    expected = 15 + 100 * 0.25 + 4 * (10 + 20 * 0.5)
    assert timing.estimate_wall_s(jobs, iterations, {"pretrain": pre, "finetune": ft}) == pytest.approx(expected)
    assert timing.estimate_wall_s(jobs, iterations, {"finetune": ft}) is None  # no pre-training measured yet
    assert timing.estimate_wall_s(jobs, {"pretrain": None, "finetune": 20}, {"pretrain": pre, "finetune": ft}) is None
    assert timing.fmt_duration(40) == "40 s" and timing.fmt_duration(3900) == "1 h 05 min"


def test_plan_rejects_bad_grids():
    with pytest.raises(plan.BenchmarkError, match="unknown variant"):
        plan.plan_jobs(["multi_condos", "simclr"], [0.1], [0])
    with pytest.raises(plan.BenchmarkError, match=r"\(0, 1\]"):
        plan.plan_jobs(["scratch"], [0.0, 0.5], [0])
    with pytest.raises(plan.BenchmarkError, match="integers"):
        plan.plan_jobs(["scratch"], [0.5], [0.5])
    with pytest.raises(plan.BenchmarkError, match="empty"):
        plan.plan_jobs(["scratch"], [], [0])
    with pytest.raises(plan.BenchmarkError, match="pretrain_seeds must be integers"):
        plan.plan_jobs(["multi_condos"], [0.5], [0], [0.5])
    assert len(plan.plan_jobs("scratch", 0.5, 0)) == 1  # fire may pass a scalar


def test_quick_grid_and_defaults():
    assert set(plan.QUICK["variants"]) >= {"multi_condos", "scratch"} and len(plan.QUICK["variants"]) == 3
    assert list(plan.QUICK["fractions"]) == [0.1, 0.5, 1.0] and len(plan.QUICK["seeds"]) == 1
    assert plan.QUICK["finetune"]["val_interval"] <= plan.QUICK["finetune"]["epochs"]
    assert list(plan.DEFAULT_FRACTIONS) == [0.05, 0.1, 0.5, 1.0] and len(plan.DEFAULT_SEEDS) == 3
    assert plan.VARIANTS["no_contrastive"][1] == {"lambda_contrastive": 0.0}
    assert plan.VARIANTS["no_sharing"][1] == {"shared_blocks": []}
    assert plan.VARIANTS["pix2pix_only"][1] == {"lambda_cycle": 0.0}
    assert plan.VARIANTS["cyclegan_only"][1] == {"lambda_pix2pix": 0.0}
    assert plan.VARIANTS["scratch"][1] is None


# ---------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------
def test_init_check(tmp_path):
    gen = tmp_path / "pretrain" / "generators.pt"
    gen.parent.mkdir()
    torch.save({"g_ab": {}, "g_ba": {}}, gen)
    good = {"kind": "pretrained", "file": str(gen), "sha256": sha256_file(gen), "transfer": "full"}
    assert results.check_init({"kind": "scratch"}, "scratch", None) == "scratch"
    assert results.check_init(good, "multi_condos", str(gen)).startswith(f"pretrained from {gen} (sha256 ")
    with pytest.raises(plan.BenchmarkError, match="scratch run"):
        results.check_init(good, "scratch", None)
    with pytest.raises(plan.BenchmarkError, match="did not load"):
        results.check_init({"kind": "scratch"}, "no_sharing", str(gen))
    with pytest.raises(plan.BenchmarkError, match="another file"):
        results.check_init(good, "multi_condos", str(tmp_path / "other" / "generators.pt"))
    torch.save({"g_ab": {"w": torch.ones(1)}, "g_ba": {}}, gen)  # the file was replaced after the fine-tuning
    with pytest.raises(plan.BenchmarkError, match="other weights"):
        results.check_init(good, "multi_condos", str(gen))
    with pytest.raises(plan.BenchmarkError, match="did not load"):
        results.check_init({}, "multi_condos", str(gen))
    with pytest.raises(plan.BenchmarkError, match="initialisation is unknown"):
        results.read_init(str(tmp_path / "no_models"))


def _row(method, fraction, seed, subjects, validation=("v1",), dice=0.5):
    return {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "label_subjects": list(subjects),
        "validation_subjects": list(validation),
        "test_dice": dice,
    }


def test_split_checks():
    rows = [
        _row("multi_condos", 0.1, 0, ["a"]),
        _row("scratch", 0.1, 0, ["a"]),
        _row("multi_condos", 0.5, 0, ["a", "b", "c"]),
        _row("scratch", 0.5, 0, ["c", "b", "a"]),
        _row("scratch", 0.5, 1, ["d", "e"]),  # another seed: another subset
    ]
    checks.check_splits(rows, ["t1", "t2"])
    with pytest.raises(plan.BenchmarkError, match="different labeled"):
        checks.check_splits(rows + [_row("no_sharing", 0.1, 0, ["b"])], [])
    with pytest.raises(plan.BenchmarkError, match="different labeled"):
        checks.check_splits(rows + [_row("no_sharing", 0.1, 0, ["a"], validation=["v2"])], [])
    with pytest.raises(plan.BenchmarkError, match="not inside"):
        checks.check_splits([_row("scratch", 0.1, 0, ["z"]), _row("scratch", 0.5, 0, ["a", "b"])], [])
    with pytest.raises(plan.BenchmarkError, match="test subjects"):
        checks.check_splits(rows, ["b"])
    # every pre-training seed of a method sees the same split; nesting is checked per pre-training seed
    seeded = [
        {**_row("no_sharing", f, 0, subjects), "pretrain_seed": p}
        for p in (0, 1)
        for f, subjects in ((0.1, ["a"]), (0.5, ["a", "b", "c"]))
    ]
    checks.check_splits(rows + seeded, [])
    with pytest.raises(plan.BenchmarkError, match="pre-training seed 1"):
        checks.check_splits(rows + seeded + [{**_row("no_sharing", 1.0, 0, ["b", "c"]), "pretrain_seed": 1}], [])


def test_output_dir_inside_repository_is_refused(capsys):
    for inside in (ROOT, os.path.join(ROOT, "outputs", "bench"), os.path.join(ROOT, "models", "..", "x")):
        with pytest.raises(plan.BenchmarkError, match="inside the repository"):
            checks.check_output_dir(inside)
    with pytest.raises(SystemExit) as e:
        benchmark.main(output_dir=os.path.join(ROOT, "bench_out"), dry_run=True)
    assert e.value.code == 1 and "inside the repository" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(ROOT, "bench_out"))


# ---------------------------------------------------------------------------------------------------------------
# aggregation and statistics
# ---------------------------------------------------------------------------------------------------------------
def test_aggregate_mean_std():
    rows = [_row("multi_condos", 0.1, s, ["a"], dice=d) for s, d in enumerate([0.6, 0.7, 0.8])]
    rows += [_row("scratch", 0.1, 0, ["a"], dice=float("nan"))]
    agg = stats.aggregate(rows)
    assert agg[("multi_condos", 0.1)]["mean"] == pytest.approx(0.7)
    assert agg[("multi_condos", 0.1)]["std"] == pytest.approx(0.1)  # sample std (ddof 1)
    assert agg[("multi_condos", 0.1)]["n"] == 3 and agg[("multi_condos", 0.1)]["seeds"] == [0, 1, 2]
    assert agg[("scratch", 0.1)]["mean"] is None and agg[("scratch", 0.1)]["n"] == 0
    single = stats.aggregate(rows[:1])[("multi_condos", 0.1)]
    assert single["mean"] == pytest.approx(0.6) and single["std"] is None
    assert report._cell(agg[("multi_condos", 0.1)]) == "0.700 ± 0.100"
    assert report._cell(single, n_expected=3) == "0.600 (n=1)"


def _synthetic(rng, n_subjects, effect=0.05, n_pretrain=3, n_seeds=3, pretrain_sd=0.005, seed_sd=0.02):
    """
    (A, B) on the same subjects: B = scratch (one row), A = B's subject baseline + a per-subject gain of mean
    ``effect`` (the true difference) + a pre-training-seed effect + run noise.
    """
    subjects = rng.normal(0.6, 0.1, n_subjects)
    gain = effect + rng.normal(0, 0.03, n_subjects)
    a = subjects + gain + rng.normal(0, pretrain_sd, (n_pretrain, 1, 1))
    a = a + rng.normal(0, seed_sd, (n_pretrain, n_seeds, n_subjects))
    b = subjects + rng.normal(0, seed_sd, (1, n_seeds, n_subjects))
    return a, b


def test_cluster_bootstrap_covers_the_true_difference_and_shrinks_with_subjects():
    rng = np.random.default_rng(0)
    widths, covered = {10: [], 80: []}, 0
    for trial in range(40):
        for n in widths:
            d = stats.paired_difference(*_synthetic(rng, n), n_boot=500, seed=trial)
            widths[n].append(d.high - d.low)
            covered += n == 80 and d.low <= 0.05 <= d.high
            assert d.low <= d.mean <= d.high and (d.n_pretrain_seeds, d.n_seeds, d.n_subjects) == (3, 3, n)
    assert covered >= 33  # 95% nominal (92% measured over 200 data sets; percentile intervals are a bit short)
    assert np.mean(widths[80]) < 0.6 * np.mean(widths[10])  # ~ 1/sqrt(8) for the subject part
    a, b = _synthetic(rng, 20)
    assert stats.paired_difference(a, b) == stats.paired_difference(a, b)  # seeded
    same = stats.paired_difference(a, a)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)


def test_cluster_bootstrap_resamples_pretraining_seeds_and_subjects_not_rows():
    # two pre-training seeds +0.1 and -0.1 above scratch on every one of 200 subjects: a resample draws seed 0
    # twice, seed 1 twice or both, so the replicates are exactly +0.1, -0.1 or 0; resampling the 400 (seed,
    # subject) rows as independent would put them all near 0
    a = np.zeros((2, 1, 200))
    a[0], a[1] = 0.1, -0.1
    replicates = stats.bootstrap_differences(a, np.zeros((1, 1, 200)), n_boot=400, seed=0)
    assert set(np.round(replicates, 12)) == {-0.1, 0.0, 0.1}
    d = stats.paired_difference(a, np.zeros((1, 1, 200)))
    assert d.mean == pytest.approx(0) and d.low == pytest.approx(-0.1) and d.high == pytest.approx(0.1)
    # fine-tuning seeds are averaged within, not resampled: a seed effect that cancels leaves no interval
    a = np.full((2, 2, 30), 0.5)
    a[:, 0] += 0.3
    a[:, 1] -= 0.3
    d = stats.paired_difference(a, np.full((1, 2, 30), 0.5))
    assert (d.mean, d.low, d.high) == pytest.approx((0.0, 0.0, 0.0))
    # subjects are resampled: a subject-level difference gives an interval around its mean
    a = np.broadcast_to(np.linspace(0, 0.2, 30), (1, 1, 30))
    d = stats.paired_difference(a, np.zeros((1, 1, 30)))
    assert d.low < 0.1 - 0.01 and d.high > 0.1 + 0.01 and d.mean == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same fine-tuning"):
        stats.paired_difference(np.zeros((2, 3, 5)), np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match="pre-training seeds or one"):
        stats.paired_difference(np.zeros((2, 1, 5)), np.zeros((3, 1, 5)))


def _subject_row(method, fraction, seed, dice, pretrain_seed=None):
    return {**_row(method, fraction, seed, ["a"]), "pretrain_seed": pretrain_seed, "test_subject_dice": dice}


def test_compare_rows_pairs_seeds_and_subjects():
    subjects = {"s1": 0.5, "s2": 0.7, "s3": 0.6}
    rows = [_subject_row("scratch", 1.0, s, subjects) for s in (0, 1)]
    # Multi-ConDoS@10%: +0.1 on every subject, from two pre-trainings; subject s3 undefined in one run
    for p in (0, 1):
        for s in (0, 1):
            dice = {j: v + 0.1 for j, v in subjects.items()}
            rows.append(_subject_row("multi_condos", 0.1, s, {**dice, "s3": None} if (p, s) == (1, 1) else dice, p))
    rows.append(_subject_row("multi_condos", 0.1, 2, subjects, 0))  # a seed scratch lacks: left out
    d = stats.compare(rows, ("multi_condos", 0.1), ("scratch", 1.0))
    assert (d.n_pretrain_seeds, d.n_seeds, d.n_subjects) == (2, 2, 2)  # s3 left out everywhere
    assert (d.mean, d.low, d.high) == pytest.approx((0.1, 0.1, 0.1))
    assert d.a_mean == pytest.approx(0.7) and d.b_mean == pytest.approx(0.6)
    assert stats.compare(rows, ("multi_condos", 0.05), ("scratch", 0.5)) is None
    # two pre-trained methods are paired by pre-training seed
    rows += [_subject_row("no_contrastive", 0.1, s, subjects, 0) for s in (0, 1)]
    d = stats.compare(rows, ("multi_condos", 0.1), ("no_contrastive", 0.1))
    assert d.n_pretrain_seeds == 1 and d.mean == pytest.approx(0.1)
    text = "\n".join(report.headline(rows))
    assert (
        "| Multi-ConDoS@10% vs scratch@100% | 0.700 | 0.600 | +0.100 [+0.100, +0.100] | Multi-ConDoS higher "
        "| 2 × 2 × 2 | — |"
        in text
    )
    assert "Multi-ConDoS@5% vs scratch@50% | — | — | not in this grid | — | — | — |" in text


def test_compare_hd95_per_subject_and_refuse_an_unknown_metric():
    rows = [
        {**_subject_row("scratch", 0.1, s, {"s1": 0.5, "s2": 0.6}), "test_subject_hd95": {"s1": 9.0, "s2": 7.0}}
        for s in (0, 1)
    ]
    rows += [
        {
            **_subject_row("multi_condos", 0.1, s, {"s1": 0.6, "s2": 0.7}, 0),
            "test_subject_hd95": {"s1": 6.0, "s2": None},
        }
        for s in (0, 1)
    ]
    d = stats.compare(rows, ("multi_condos", 0.1), ("scratch", 0.1), metric="hd95")
    assert d.n_subjects == 1 and d.mean == pytest.approx(-3.0)  # s2 has no HD95 (an empty mask): left out
    assert stats.compare(rows, ("multi_condos", 0.1), ("scratch", 0.1)).mean == pytest.approx(0.1)
    assert report.fmt_difference(d, 2) == "-3.00 [-3.00, -3.00]"
    with pytest.raises(ValueError, match="hd95"):
        stats.compare(rows, ("multi_condos", 0.1), ("scratch", 0.1), metric="iou")


# ---------------------------------------------------------------------------------------------------------------
# reading what a run wrote
# ---------------------------------------------------------------------------------------------------------------
def _write_history(train_dir, history):
    """Validation Dice per epoch as the fine-tuning's TensorBoard handler writes it."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(train_dir)
    for epoch, value in history:
        writer.add_scalar(results.VALIDATION_TAG, value, epoch)
    writer.close()


def test_results_read_the_validation_history_timing_and_subject_metrics(tmp_path):
    _write_history(str(tmp_path), [(2, 0.4), (4, 0.6), (6, 0.6), (8, 0.5)])
    assert [e for e, _ in results.validation_history(str(tmp_path))] == [2, 4, 6, 8]
    summary = results.finetune_validation(str(tmp_path))
    assert summary == pytest.approx({"best_val_dice": 0.6, "best_epoch": 4, "last_val_dice": 0.5, "last_epoch": 8})
    assert results.finetune_validation(str(tmp_path / "none"))["best_epoch"] is None
    log = tmp_path / "train_log.txt"
    log.write_text(
        "t INFO: Epoch: 1/2, Iter: 1/2 -- train_loss: 1.0\nt INFO: Epoch[1] Complete. Time taken: 00:00:02.500\n"
        "t INFO: Epoch[2] Complete. Time taken: 00:01:01.500\n"
    )
    assert results.train_loop_seconds(str(log)) == pytest.approx(64.0)
    assert results.train_loop_seconds(str(tmp_path / "missing.txt")) is None
    (tmp_path / "metrics.csv").write_text("subject,dice,iou,hd95\ns1,0.5,0.3,4.5\ns2,nan,nan,nan\n")
    (tmp_path / "metrics_summary.json").write_text(json.dumps({"n_subjects": 2, "dice": {"mean": 0.5}}))
    metrics = results.read_test_metrics(str(tmp_path))
    assert metrics["test_subject_dice"] == {"s1": 0.5, "s2": None} and metrics["test_dice"] == 0.5
    assert metrics["test_subject_hd95"] == {"s1": 4.5, "s2": None}


# ---------------------------------------------------------------------------------------------------------------
# the whole loop with a fake runner: files the configs write, init checks, resume
# ---------------------------------------------------------------------------------------------------------------
#: the validation history the fake fine-tunings write: best at epoch 2 of 3
FAKE_HISTORY = [(1, 0.3), (2, 0.5), (3, 0.4)]


class FakeRunner(runner.BundleRunner):
    """Writes what the configs write (generators.pt, validation_metrics.csv, the trainers' logs, init.txt,
    label_subjects.json, the validation history, metrics.csv, metrics_summary.json), using the bundle's own subject
    selection; ``inits`` forces a recorded initialisation. Schedules and config values are the real configs'."""

    def __init__(self, datalist_path: str, dataset_dir: str, inits: dict | None = None) -> None:
        super().__init__()
        self.datalist_path, self.dataset_dir = datalist_path, dataset_dir
        self.inits = inits or {}
        self.calls: list[tuple[str, dict]] = []

    def pretrain(self, o, log_file):
        self.calls.append(("pretrain", dict(o)))
        os.makedirs(o["ckpt_dir"])
        os.makedirs(o["output_dir"])
        legacy = {"network_args": {"features": TINY_NET["features"]}, "g_ab": {}, "g_ba": {}}  # a 0.2.0 file
        torch.save(legacy, os.path.join(o["ckpt_dir"], "generators.pt"))
        with open(os.path.join(o["output_dir"], "validation_metrics.csv"), "w") as f:
            f.write(
                "epoch,val_mae_ab,val_psnr_ab,val_mae_identity,val_psnr_identity\n1,0.05,30,0.1,20\n2,0.04,31,0.1,20\n"
            )
        with open(os.path.join(o["output_dir"], "losses.csv"), "w") as f:
            f.write("epoch,iteration,g_total,adversarial,cycle,pix2pix,contrastive\n2,4,5.0,0.5,0.03,0.02,2.0\n")
        with open(os.path.join(o["output_dir"], "pretrain_log.txt"), "w") as f:
            f.write("x INFO: Epoch[1] Complete. Time taken: 00:00:30.000\n")

    def finetune(self, o, log_file):
        from bundle.data import load_datalist
        from bundle.finetune import select_finetune_records

        self.calls.append(("finetune", dict(o)))
        datalist = load_datalist(self.datalist_path, self.dataset_dir, ["t1", "label"])
        select_finetune_records(datalist, "t1", o["label_fraction"], 0.25, o["seed"], o["output_dir"])
        ckpt = o["pretrained_ckpt"]
        init = (
            {"kind": "scratch"} if ckpt is None else {"kind": "pretrained", "file": ckpt, "sha256": sha256_file(ckpt)}
        )
        init = self.inits.get((o["label_fraction"], ckpt is None), init)
        os.makedirs(o["ckpt_dir"], exist_ok=True)
        torch.save({"w": torch.zeros(1)}, os.path.join(o["ckpt_dir"], "model.pt"))
        write_record(os.path.join(o["ckpt_dir"], "model.pt"), {"kind": "segmentation", "training": {"init": init}})
        with open(os.path.join(o["output_dir"], "train_log.txt"), "w") as f:
            f.write("x INFO: Epoch[1] Complete. Time taken: 00:00:10.000\n")
        _write_history(o["output_dir"], FAKE_HISTORY)

    def evaluate(self, o, log_file):
        self.calls.append(("evaluate", dict(o)))
        os.makedirs(o["output_dir"])
        dice = 0.5 + 0.3 * o["label_fraction"] + (0.05 if o["pretrained_ckpt"] else 0.0) + 0.01 * o["seed"]
        summary = {"n_subjects": 2, "dice": {"mean": dice, "std": 0.05, "n": 2, "n_excluded": 0}}
        summary["hd95"] = {"mean": 5.0, "std": 1.0, "n": 1, "n_excluded": 1}
        with open(os.path.join(o["output_dir"], "metrics_summary.json"), "w") as f:
            json.dump(summary, f)
        with open(os.path.join(o["output_dir"], "metrics.csv"), "w") as f:
            hd95 = 9.0 - 2.0 * o["label_fraction"] - (1.0 if o["pretrained_ckpt"] else 0.0)
            f.write(f"subject,dice,hd95\ndemo_008,{dice + 0.05},{hd95}\ndemo_009,{dice - 0.05},nan\n")  # mean: dice


def _fake_benchmark(tiny_dataset, out, runner, **kwargs):
    lines: list[str] = []
    grid = {"variants": ["multi_condos", "scratch", "no_sharing"], "fractions": [1.0, 0.5], "seeds": [0, 1]}
    rows = protocol.run_benchmark(str(out), **tiny_dataset, runner=runner, echo=lines.append, **{**grid, **kwargs})
    return rows, lines


def test_fake_grid_reports_and_resume(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    runner = FakeRunner(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"])
    rows, lines = _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 1})
    assert [c[0] for c in runner.calls].count("pretrain") == 2
    assert [c[0] for c in runner.calls].count("finetune") == 12 == len(rows)
    progress = [line for line in lines if line.startswith("[")]
    assert (
        lines[0].startswith("benchmark: 14 runs (2 pre-trainings, 12 fine-tunings)") and "after the first" in lines[0]
    )
    assert len(progress) == 14 and progress[0].startswith(
        "[1/14] pretrain variant=multi_condos pretrain_seed=0 done in"
    )
    assert "variant=no_sharing pretrain_seed=0 fraction=0.5 seed=0 done in" in progress[3]
    assert "test Dice 0.700" in progress[3] and "best epoch 2 of 3" in progress[3]
    # the time left, from the measured runs: 0.1 s/iteration of pre-training (30 s for 10 x 30), 10 s a fine-tuning
    assert progress[1].endswith("; left: ~2 min for 12 run(s) (timing from the runs finished so far)")
    # the overrides the configs got: the variant's switch, scratch as None, val_interval at most the epochs
    pre = {c[1]["ckpt_dir"]: c[1] for c in runner.calls if c[0] == "pretrain"}
    assert pre[str(out / "pretrain" / "no_sharing" / "seed_0" / "ckpt")]["shared_blocks"] == []
    assert {o["seed"] for o in pre.values()} == {0}  # the pre-training seed
    fts = [c[1] for c in runner.calls if c[0] == "finetune"]
    assert all(o["val_interval"] == 1 and o["epochs"] == 1 for o in fts)
    assert sum(o["pretrained_ckpt"] is None for o in fts) == 4
    evals = [c[1] for c in runner.calls if c[0] == "evaluate"]
    # evaluation reads the fine-tuned model's topology and preprocessing from its record: no features override
    assert all("features" not in o and o["ckpt_dir"] == o["output_dir"].replace("/eval", "/models") for o in evals)
    # results.csv: one row per method x fraction x seed, nested subject sets, same subjects for every method
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and set(table[0]) == set(report.CSV_FIELDS)
    by = {(r["method"], float(r["fraction"]), int(r["seed"])): r for r in table}
    assert by[("scratch", 0.5, 1)]["label_subjects"] == by[("no_sharing", 0.5, 1)]["label_subjects"]
    assert set(by[("scratch", 0.5, 0)]["label_subjects"].split()) < set(
        by[("scratch", 1.0, 0)]["label_subjects"].split()
    )
    assert by[("scratch", 1.0, 0)]["init"] == "scratch" and by[("scratch", 1.0, 0)]["pretrain_val_psnr_ab"] == ""
    assert float(by[("multi_condos", 1.0, 1)]["pretrain_val_psnr_ab"]) == 31  # the last validation row
    assert float(by[("multi_condos", 1.0, 1)]["pretrain_val_psnr_identity"]) == 20
    assert float(by[("multi_condos", 1.0, 1)]["test_hd95_n_excluded"]) == 1
    assert by[("multi_condos", 1.0, 1)]["pretrain_seed"] == "0" and by[("scratch", 1.0, 1)]["pretrain_seed"] == ""
    # the validation history: best Dice 0.5 at epoch 2, last validation at epoch 3
    assert {(r["best_epoch"], r["last_epoch"]) for r in table} == {("2", "3")}
    assert {round(float(r["best_val_dice"]), 6) for r in table} == {0.5}  # TensorBoard keeps float32
    assert {round(float(r["last_val_dice"]), 6) for r in table} == {0.4}
    # results.md: mean ± std over the seeds (dice = 0.5 + 0.3 f + 0.05 pretrained + 0.01 seed)
    md = (out / "results.md").read_text()
    std = f"{math.sqrt(0.5 * 0.01**2):.3f}"
    assert f"| Multi-ConDoS | 0.705 ± {std} | 0.855 ± {std} |" in md
    assert f"| scratch (random init.) | 0.655 ± {std} | 0.805 ± {std} |" in md
    assert "Multi-ConDoS@10% vs scratch@100% | — | — | not in this grid" in md  # fractions 0.5 and 1 only
    assert "| Multi-ConDoS | +0.050 [+0.050, +0.050] | +0.050 [+0.050, +0.050] |" in md  # pre-trained - scratch
    hd95 = md.split("label fraction: HD95 difference")[1]  # one subject with an HD95, 1 mm lower pre-trained
    assert "| Multi-ConDoS | -1.00 [-1.00, -1.00] | -1.00 [-1.00, -1.00] |" in hd95
    assert "One pre-training seed: these intervals leave out" in md
    assert "at the last validated epoch (model.pt from the end of the schedule" in md and "in 0 of 12" in md
    assert "0.02 × 100 = 2" in md  # the loss balance of pre-training
    assert (out / "label_efficiency.png").stat().st_size > 1000

    # resume: nothing runs again; a deleted result is redone alone
    calls = len(runner.calls)
    rows2, lines2 = _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 1})
    assert len(runner.calls) == calls and len(rows2) == 12 and lines2[0].endswith("; all finished")
    assert sum("skipped (finished earlier)" in line for line in lines2) == 14
    os.remove(out / "finetune" / "scratch" / "fraction_0.5_seed_1" / "result.json")
    _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 1})
    assert [c[0] for c in runner.calls[calls:]] == ["finetune", "evaluate"]
    # report only: a larger grid reports what has finished and runs nothing
    calls = len(runner.calls)
    rows3, lines3 = _fake_benchmark(
        tiny_dataset, out, runner, finetune_overrides={"epochs": 1}, seeds=[0, 1, 2], report_only=True
    )
    assert len(runner.calls) == calls and len(rows3) == 12
    assert sum("not finished (report only)" in line for line in lines3) == 6
    # the device line is the runs' (benchmark_config.json), not the report process's
    config = json.loads((out / "benchmark_config.json").read_text())
    assert f"- device: {config['device']};" in (out / "results.md").read_text()
    config["device"] = "cpu (7 threads)"
    (out / "benchmark_config.json").write_text(json.dumps(config))
    _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 1}, seeds=[0, 1, 2], report_only=True)
    assert "- device: cpu (7 threads);" in (out / "results.md").read_text()
    assert "| 0.705 ± 0.007 (n=2) |" in (out / "results.md").read_text()
    # finished runs with other settings are not silently mixed in
    with pytest.raises(plan.BenchmarkError, match="other settings"):
        _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 2})


@pytest.mark.parametrize(
    "forced, message",
    [((0.5, True), "scratch run"), ((1.0, False), "did not load pre-trained weights")],
    ids=["scratch-loaded-weights", "pretrained-loaded-none"],
)
def test_wrong_init_aborts(tiny_dataset, tmp_path, forced, message):
    init = {"kind": "pretrained", "file": "/x/generators.pt"} if forced[1] else {"kind": "scratch"}
    runner = FakeRunner(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], {forced: init})
    with pytest.raises(plan.BenchmarkError, match=message):
        _fake_benchmark(tiny_dataset, tmp_path / "bench", runner)
    assert (tmp_path / "bench" / "results.csv").is_file()  # what finished before is still reported
    bad = plan.Job("finetune", "scratch", 0.5, 0) if forced[1] else plan.Job("finetune", "multi_condos", 1.0, 0, 0)
    assert (tmp_path / "bench" / bad.name / "models" / "model.json").is_file()  # the run that failed the check
    assert not (tmp_path / "bench" / bad.name / "result.json").exists()


def test_dry_run_estimates_the_wall_time_from_timing_runs(tiny_dataset, tmp_path):
    runner = FakeRunner(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"])
    _, lines = _fake_benchmark(tiny_dataset, tmp_path / "bench", runner, dry_run=True)
    assert lines[-1].endswith("estimated wall time after the first runs (or with --measure True)") and not runner.calls
    _, lines = _fake_benchmark(tiny_dataset, tmp_path / "bench", runner, dry_run=True, measure=True)
    assert [c[0] for c in runner.calls] == ["pretrain", "finetune", "evaluate"]
    short = runner.calls[0][1]  # the configs' 10 epochs, 2 iterations each
    assert (short["epochs"], short["epoch_length"]) == (10, 2) and runner.calls[1][1]["pretrained_ckpt"] is None
    # timing runs: 30 s / 20 iterations of pre-training, 10 s / 20 of fine-tuning (its epochs capped at 10);
    # the grid: 2 pre-trainings of 10 x 30 and 12 fine-tunings of the config's full budget (early stopping ignored)
    finetune = ConfigParser.load_config_file("configs/train.yaml")
    iterations = finetune["epochs"] * finetune["epoch_length"]
    assert lines[-1].startswith("benchmark: 14 runs (2 pre-trainings, 12 fine-tunings)")
    assert lines[-1].endswith(
        f"estimated wall time ~{timing.fmt_duration(2 * 300 * 1.5 + 12 * iterations * 0.5)} for 14 run(s) "
        "(timing from timing runs of this grid's settings)"
    )
    assert os.listdir(tmp_path / "bench") == []  # the timing runs are deleted, nothing else is written


# ---------------------------------------------------------------------------------------------------------------
# one tiny real grid through the bundle configs
# ---------------------------------------------------------------------------------------------------------------
def test_tiny_real_grid(tiny_dataset, tmp_path, capsys):
    pretrain = {"image_size": 32, "batch_size": 2, "epochs": 1, "epoch_length": 2, "val_fraction": 0.25}
    pretrain.update({"val_slices_per_subject": 1, "image_pool_size": 4, **TINY_NET})
    finetune = {"image_size": 32, "batch_size": 4, "epochs": 2, "epoch_length": 1, "val_interval": 2}
    finetune["val_fraction"] = 0.25
    finetune.update({"samples_per_subject": 2, "features": TINY_NET["features"]})
    out = tmp_path / "bench"
    rows = protocol.run_benchmark(
        str(out),
        **tiny_dataset,
        variants=["multi_condos", "scratch"],
        fractions=[0.5, 1.0],
        seeds=[0],
        pretrain_overrides=pretrain,
        finetune_overrides=finetune,
    )
    printed = capsys.readouterr().out
    assert [line[:5] for line in printed.splitlines() if line.startswith("[")] == [f"[{k}/5]" for k in range(1, 6)]
    assert "Epoch" not in printed  # the workflows' logs go to each run's workflow.log
    assert len(rows) == 4
    for r in rows:
        assert r["n_test_subjects"] == 2 and 0.0 <= r["test_dice"] <= 1.0
        assert not set(r["label_subjects"]) & {"demo_008", "demo_009"}  # the tiny dataset's testing subjects
        assert r["init"] == "scratch" if r["method"] == "scratch" else r["init"].startswith("pretrained from ")
        assert sorted(r["test_subject_dice"]) == ["demo_008", "demo_009"]
        # one validation, after epoch 2: the history is indexed by the trainer's epoch, not the validation count
        assert r["last_epoch"] == r["best_epoch"] == 2
        history = results.validation_history(
            str(out / plan.Job("finetune", r["method"], r["fraction"], 0, r["pretrain_seed"]).name / "train")
        )
        assert r["best_val_dice"] == max(v for _, v in history) and len(history) == 1
    gen = out / "pretrain" / "multi_condos" / "seed_0" / "ckpt" / "generators.pt"
    assert str(gen) in rows[0]["init"] and rows[0]["pretrain_seed"] == 0
    assert rows[0]["pretrain_val_psnr_identity"] is not None
    assert (out / "finetune" / "scratch" / "fraction_1_seed_0" / "models" / "model.pt").is_file()
    assert "Epoch" in (out / "finetune" / "scratch" / "fraction_1_seed_0" / "workflow.log").read_text()
    for name in ("results.csv", "results.md", "label_efficiency.png", "progress.log"):
        assert (out / name).is_file()
    interval = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]"  # pre-trained minus scratch, with an interval
    assert re.search(rf"\| Multi-ConDoS \| {interval} \| {interval} \|", (out / "results.md").read_text())


def test_preset_is_merged_on_top_of_every_workflow(tiny_dataset, tmp_path):
    bundle_runner = runner.BundleRunner(preset="brats")
    assert bundle_runner.presets == [os.path.join(str(ROOT), "configs", "brats.yaml")]
    assert runner.BundleRunner(preset="configs/hecktor.yaml").presets[0].endswith("hecktor.yaml")
    with pytest.raises(plan.BenchmarkError, match="preset not found: mri"):
        runner.BundleRunner(preset="mri")
    # the demo datalist has t1/t2: the preset's FLAIR/T2 pair shows that it was merged into the run
    overrides = {"bundle_root": str(ROOT), **tiny_dataset, "ckpt_dir": str(tmp_path / "ckpt")}
    with pytest.raises(RuntimeError, match=r"(?s)brats\.yaml'\] failed .*missing key\(s\) \['flair'\]"):
        bundle_runner.pretrain(overrides, str(tmp_path / "log"))


def test_brats_dev_overrides_go_on_top_of_the_scale():
    """scripts/brats_dev.py: --pretrain_overrides / --finetune_overrides replace the scale's values for one workflow
    only, leave SCALES untouched, and a bad scale or a non-dict override is refused naming it."""
    from scripts import brats_dev

    before = json.dumps(brats_dev.SCALES, sort_keys=True)
    cfg = brats_dev.scale_config("gpu", {"epochs": 12, "val_interval": 5}, {"epochs": 8})
    gpu = brats_dev.SCALES["gpu"]
    assert cfg["pretrain"] == {**gpu["pretrain"], "epochs": 12, "val_interval": 5}
    assert cfg["pretrain"]["epoch_length"] == gpu["pretrain"]["epoch_length"]
    assert cfg["finetune"] == {"epochs": 8} and cfg["common"] == gpu["common"]
    assert json.dumps(brats_dev.SCALES, sort_keys=True) == before
    assert brats_dev.scale_config("cpu") == {k: dict(v) for k, v in brats_dev.SCALES["cpu"].items()}
    with pytest.raises(SystemExit, match="--scale must be one of"):
        brats_dev.scale_config("tpu")
    with pytest.raises(SystemExit, match="--finetune_overrides must be a dict"):
        brats_dev.scale_config("cpu", None, "epochs=8")
