"""The label-efficiency benchmark (scripts/benchmark.py, scripts/label_efficiency/): planning, checks, aggregation
and resume with a fake runner, and one tiny real grid (full Multi-ConDoS + scratch, 2 fractions, 1 seed, 1 epoch) through the configs."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from conftest import ROOT, TINY_NET
from scripts import benchmark
from scripts.label_efficiency import checks, plan, protocol, report, results, runner, stats


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


def test_plan_rejects_bad_grids():
    with pytest.raises(plan.BenchmarkError, match="unknown variant"):
        plan.plan_jobs(["multi_condos", "simclr"], [0.1], [0])
    with pytest.raises(plan.BenchmarkError, match=r"\(0, 1\]"):
        plan.plan_jobs(["scratch"], [0.0, 0.5], [0])
    with pytest.raises(plan.BenchmarkError, match="integers"):
        plan.plan_jobs(["scratch"], [0.5], [0.5])
    with pytest.raises(plan.BenchmarkError, match="empty"):
        plan.plan_jobs(["scratch"], [], [0])
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
def test_init_line_check(tmp_path):
    gen = str(tmp_path / "pretrain" / "generators.pt")
    good = f"init: pretrained (80/82 tensors from {gen}, g_ab, transfer=full)"
    assert results.check_init_line("init: scratch\n", "scratch", None) == "init: scratch"
    assert results.check_init_line(good, "multi_condos", gen) == good
    with pytest.raises(plan.BenchmarkError, match="scratch run"):
        results.check_init_line(good, "scratch", None)
    with pytest.raises(plan.BenchmarkError, match="did not load"):
        results.check_init_line("init: scratch", "no_sharing", gen)
    with pytest.raises(plan.BenchmarkError, match="another file"):
        results.check_init_line(good, "multi_condos", str(tmp_path / "other" / "generators.pt"))
    with pytest.raises(plan.BenchmarkError, match="0/82"):
        results.check_init_line(f"init: pretrained (0/82 tensors from {gen})", "multi_condos", gen)
    with pytest.raises(plan.BenchmarkError, match="did not load"):
        results.check_init_line("", "multi_condos", gen)


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


def test_output_dir_inside_repository_is_refused(capsys):
    for inside in (ROOT, os.path.join(ROOT, "outputs", "bench"), os.path.join(ROOT, "models", "..", "x")):
        with pytest.raises(plan.BenchmarkError, match="inside the repository"):
            checks.check_output_dir(inside)
    with pytest.raises(SystemExit) as e:
        benchmark.main(output_dir=os.path.join(ROOT, "bench_out"), dry_run=True)
    assert e.value.code == 1 and "inside the repository" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(ROOT, "bench_out"))


# ---------------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------------
def test_aggregate_mean_std_and_paired_difference():
    rows = [_row("multi_condos", 0.1, s, ["a"], dice=d) for s, d in enumerate([0.6, 0.7, 0.8])]
    rows += [_row("scratch", 1.0, s, ["a"], dice=d) for s, d in enumerate([0.5, 0.75, 0.7])]
    rows += [_row("scratch", 0.1, 0, ["a"], dice=float("nan"))]
    agg = stats.aggregate(rows)
    assert agg[("multi_condos", 0.1)]["mean"] == pytest.approx(0.7)
    assert agg[("multi_condos", 0.1)]["std"] == pytest.approx(0.1)  # sample std (ddof 1)
    assert agg[("multi_condos", 0.1)]["n"] == 3 and agg[("multi_condos", 0.1)]["seeds"] == [0, 1, 2]
    assert agg[("scratch", 0.1)]["mean"] is None and agg[("scratch", 0.1)]["n"] == 0
    single = stats.aggregate(rows[:1])[("multi_condos", 0.1)]
    assert single["mean"] == pytest.approx(0.6) and single["std"] is None
    d = stats.paired_difference(rows, ("multi_condos", 0.1), ("scratch", 1.0))
    assert d["diffs"] == pytest.approx([0.1, -0.05, 0.1]) and d["wins"] == 2 and d["n"] == 3
    assert d["diff_mean"] == pytest.approx(0.05)
    assert stats.paired_difference(rows, ("multi_condos", 0.05), ("scratch", 0.5)) is None
    text = "\n".join(report.headline(rows))
    assert "Multi-ConDoS@10% vs scratch@100% | 0.700 | 0.650 | +0.050 ± 0.087 | 2/3" in text
    assert "Multi-ConDoS@5% vs scratch@50% | — | — | not in this grid" in text
    assert report._cell(agg[("multi_condos", 0.1)]) == "0.700 ± 0.100"
    assert report._cell(single, n_expected=3) == "0.600 (n=1)"


# ---------------------------------------------------------------------------------------------------------------
# the whole loop with a fake runner: files the configs write, init checks, resume
# ---------------------------------------------------------------------------------------------------------------
class FakeRunner:
    """Writes what the configs write (generators.pt, validation_metrics.csv, init.txt, label_subjects.json,
    metrics_summary.json), using the bundle's own subject selection; ``init_lines`` forces a recorded init line."""

    def __init__(self, datalist_path: str, dataset_dir: str, init_lines: dict | None = None) -> None:
        self.datalist_path, self.dataset_dir = datalist_path, dataset_dir
        self.init_lines = init_lines or {}
        self.calls: list[tuple[str, dict]] = []

    def pretrain(self, o, log_file):
        self.calls.append(("pretrain", dict(o)))
        os.makedirs(o["ckpt_dir"])
        os.makedirs(o["output_dir"])
        torch.save({"network_args": {"features": TINY_NET["features"]}}, os.path.join(o["ckpt_dir"], "generators.pt"))
        with open(os.path.join(o["output_dir"], "validation_metrics.csv"), "w") as f:
            f.write(
                "epoch,val_mae_ab,val_psnr_ab,val_mae_identity,val_psnr_identity\n1,0.05,30,0.1,20\n2,0.04,31,0.1,20\n"
            )
        with open(os.path.join(o["output_dir"], "pretrain_log.txt"), "w") as f:
            f.write(
                "x INFO: Epoch: 2/2, Iter: 2/2 -- adversarial: 0.5 contrastive: 2.0 cycle: 0.03 g_total: 5.0 pix2pix: 0.02 \n"
            )

    def finetune(self, o, log_file):
        from bundle.data import load_datalist
        from bundle.finetune import select_finetune_records

        self.calls.append(("finetune", dict(o)))
        datalist = load_datalist(self.datalist_path, self.dataset_dir, ["t1", "label"])
        select_finetune_records(datalist, "t1", o["label_fraction"], 0.25, o["seed"], o["output_dir"])
        ckpt = o["pretrained_ckpt"]
        line = "init: scratch" if ckpt is None else f"init: pretrained (80/82 tensors from {ckpt}, g_ab, transfer=full)"
        line = self.init_lines.get((o["label_fraction"], ckpt is None), line)
        with open(os.path.join(o["output_dir"], "init.txt"), "w") as f:
            f.write(line + "\n")
        return {"best_val_dice": 0.5, "best_val_epoch": 1}

    def evaluate(self, o, log_file):
        self.calls.append(("evaluate", dict(o)))
        os.makedirs(o["output_dir"])
        dice = 0.5 + 0.3 * o["label_fraction"] + (0.05 if o["pretrained_ckpt"] else 0.0) + 0.01 * o["seed"]
        summary = {"n_subjects": 2, "dice": {"mean": dice, "std": 0.1, "n": 2, "n_excluded": 0}}
        summary["hd95"] = {"mean": 5.0, "std": 1.0, "n": 1, "n_excluded": 1}
        with open(os.path.join(o["output_dir"], "metrics_summary.json"), "w") as f:
            json.dump(summary, f)


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
    assert len(progress) == 14 and progress[0].startswith("[1/14] pretrain variant=multi_condos done in")
    assert "variant=no_sharing fraction=0.5 seed=0 done in" in progress[3] and "test Dice 0.700" in progress[3]
    # the overrides the configs got: the variant's switch, scratch as None, val_interval at most the epochs
    pre = {c[1]["ckpt_dir"]: c[1] for c in runner.calls if c[0] == "pretrain"}
    assert pre[str(out / "pretrain" / "no_sharing" / "ckpt")]["shared_blocks"] == []
    fts = [c[1] for c in runner.calls if c[0] == "finetune"]
    assert all(o["val_interval"] == 1 and o["epochs"] == 1 for o in fts)
    assert sum(o["pretrained_ckpt"] is None for o in fts) == 4
    evals = [c[1] for c in runner.calls if c[0] == "evaluate"]
    assert all(o["features"] == TINY_NET["features"] for o in evals if o["pretrained_ckpt"])  # the generator's
    # results.csv: one row per method x fraction x seed, nested subject sets, same subjects for every method
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and set(table[0]) == set(report.CSV_FIELDS)
    by = {(r["method"], float(r["fraction"]), int(r["seed"])): r for r in table}
    assert by[("scratch", 0.5, 1)]["label_subjects"] == by[("no_sharing", 0.5, 1)]["label_subjects"]
    assert set(by[("scratch", 0.5, 0)]["label_subjects"].split()) < set(
        by[("scratch", 1.0, 0)]["label_subjects"].split()
    )
    assert by[("scratch", 1.0, 0)]["init"] == "init: scratch" and by[("scratch", 1.0, 0)]["pretrain_val_psnr_ab"] == ""
    assert float(by[("multi_condos", 1.0, 1)]["pretrain_val_psnr_ab"]) == 31  # the last validation row
    assert float(by[("multi_condos", 1.0, 1)]["pretrain_val_psnr_identity"]) == 20
    assert float(by[("multi_condos", 1.0, 1)]["test_hd95_n_excluded"]) == 1
    # results.md: mean ± std over the seeds (dice = 0.5 + 0.3 f + 0.05 pretrained + 0.01 seed)
    md = (out / "results.md").read_text()
    std = f"{math.sqrt(0.5 * 0.01**2):.3f}"
    assert f"| Multi-ConDoS | 0.705 ± {std} | 0.855 ± {std} |" in md
    assert f"| scratch (random init.) | 0.655 ± {std} | 0.805 ± {std} |" in md
    assert "Multi-ConDoS@10% vs scratch@100%" in md and "| +0.050 ± 0.000 (2/2) |" in md
    assert "0.02 × 100 = 2" in md  # the loss balance of pre-training
    assert (out / "label_efficiency.png").stat().st_size > 1000

    # resume: nothing runs again; a deleted result is redone alone
    calls = len(runner.calls)
    rows2, lines2 = _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 1})
    assert len(runner.calls) == calls and len(rows2) == 12
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
    assert "| 0.705 ± 0.007 (n=2) |" in (out / "results.md").read_text()
    # finished runs with other settings are not silently mixed in
    with pytest.raises(plan.BenchmarkError, match="other settings"):
        _fake_benchmark(tiny_dataset, out, runner, finetune_overrides={"epochs": 2})


@pytest.mark.parametrize(
    "forced, message",
    [((0.5, True), "scratch run"), ((1.0, False), "did not load pre-trained weights")],
    ids=["scratch-loaded-weights", "pretrained-loaded-none"],
)
def test_wrong_init_line_aborts(tiny_dataset, tmp_path, forced, message):
    line = (
        "init: pretrained (80/82 tensors from /x/generators.pt, g_ab, transfer=full)" if forced[1] else "init: scratch"
    )
    runner = FakeRunner(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], {forced: line})
    with pytest.raises(plan.BenchmarkError, match=message):
        _fake_benchmark(tiny_dataset, tmp_path / "bench", runner)
    assert (tmp_path / "bench" / "results.csv").is_file()  # what finished before is still reported
    bad = "scratch" if forced[1] else "multi_condos"
    assert not (tmp_path / "bench" / "finetune" / bad / f"fraction_{forced[0]:g}_seed_0" / "result.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# one tiny real grid through the bundle configs
# ---------------------------------------------------------------------------------------------------------------
def test_tiny_real_grid(tiny_dataset, tmp_path, capsys):
    pretrain = {"image_size": 32, "batch_size": 2, "epochs": 1, "epoch_length": 2, "val_fraction": 0.25}
    pretrain.update({"val_slices_per_subject": 1, "image_pool_size": 4, **TINY_NET})
    finetune = {"image_size": 32, "batch_size": 4, "epochs": 1, "epoch_length": 2, "val_fraction": 0.25}
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
        assert r["init"] == "init: scratch" if r["method"] == "scratch" else r["init"].startswith("init: pretrained")
    gen = out / "pretrain" / "multi_condos" / "ckpt" / "generators.pt"
    assert str(gen) in rows[0]["init"]
    assert rows[0]["pretrain_val_psnr_identity"] is not None
    assert (out / "finetune" / "scratch" / "fraction_1_seed_0" / "models" / "model.pt").is_file()
    assert "Epoch" in (out / "finetune" / "scratch" / "fraction_1_seed_0" / "workflow.log").read_text()
    for name in ("results.csv", "results.md", "label_efficiency.png", "progress.log"):
        assert (out / name).is_file()


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
