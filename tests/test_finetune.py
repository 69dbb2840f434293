"""Fine-tuning: weight transfer, scratch/missing-file rules, label-fraction selection, train/evaluate configs."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import BasicUNet

from bundle.data import load_datalist
from bundle.files import sha256_file
from bundle.finetune import initialise_network, load_pretrained, select_finetune_records, select_source
from bundle.records import fingerprint
from bundle.transforms import MapLabelsd
from conftest import TINY_NET, config_path, run_workflow, scratch_finetune_overrides

TRAIN = config_path("train.yaml")
EVALUATE = [config_path("train.yaml"), config_path("evaluate.yaml")]


def _seg_net(features=TINY_NET["features"], out_channels=2) -> BasicUNet:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=out_channels, features=features)


def test_full_transfer_copies_every_tensor_but_the_output_conv(tiny_generators, tmp_path):
    state = select_source(load_pretrained(tiny_generators), "g_ab")
    torch.manual_seed(1)
    net = _seg_net()
    fresh_final = net.final_conv.weight.detach().clone()
    initialise_network(net, state, "full", str(tmp_path))
    sd = net.state_dict()
    for key in ("conv_0.conv_0.conv.weight", "down_4.convs.conv_1.conv.weight", "upcat_1.convs.conv_0.conv.weight"):
        assert torch.equal(sd[key], state["state_dict"][key]), key
    assert torch.equal(net.final_conv.weight, fresh_final)  # re-initialised output conv (2 classes, not 1)
    line = (tmp_path / "init.txt").read_text()
    assert line.startswith(f"init: pretrained ({len(sd) - 2}/{len(sd)} tensors from {tiny_generators}")


def test_encoder_transfer_leaves_the_decoder_random(tiny_generators, tmp_path):
    state = select_source(load_pretrained(tiny_generators), "g_ba")
    net = _seg_net()
    decoder_before = net.upcat_2.convs.conv_0.conv.weight.detach().clone()
    initialise_network(net, state, "encoder", str(tmp_path))
    assert torch.equal(net.down_2.convs.conv_0.conv.weight, state["state_dict"]["down_2.convs.conv_0.conv.weight"])
    assert torch.equal(net.upcat_2.convs.conv_0.conv.weight, decoder_before)
    assert "transfer=encoder" in (tmp_path / "init.txt").read_text()


def test_topology_mismatch_fails_clearly(tiny_generators):
    state = select_source(load_pretrained(tiny_generators))
    with pytest.raises(ValueError, match=r"only \d+/\d+ expected tensors"):
        initialise_network(_seg_net(features=[16, 16, 32, 32, 64, 16]), state, "full")


@pytest.mark.parametrize("value", [None, "none", "None", "scratch", "null"])
def test_scratch_values(value, tmp_path):
    assert load_pretrained(value) is None
    initialise_network(_seg_net(), None, "full", str(tmp_path))
    assert (tmp_path / "init.txt").read_text() == "init: scratch\n"


def test_missing_default_warns_and_missing_explicit_fails(tmp_path, caplog):
    default = str(tmp_path / "models" / "pretrain" / "generators.pt")
    with caplog.at_level(logging.WARNING, logger="multi_condos"):
        assert load_pretrained(default, default) is None
    assert "FROM SCRATCH" in caplog.text
    with pytest.raises(FileNotFoundError, match="pretrained_ckpt not found"):
        load_pretrained(str(tmp_path / "elsewhere.pt"), default)
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="not a generators file"):
        load_pretrained(str(bad))


def test_label_fractions_are_nested_seeded_subject_level_and_exclude_tests(tiny_dataset):
    dl = load_datalist(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], ["t1", "label"])
    test_subjects = {
        r["subject"]
        for r in load_datalist(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], ["t1"], ["testing"])[
            "testing"
        ]
    }
    chosen = {}
    for fraction in (0.05, 0.1, 0.5, 1.0):
        sel = select_finetune_records(dl, "t1", fraction, 0.25, seed=3)
        chosen[fraction] = {r["subject"] for r in sel["training"]}
        val = {r["subject"] for r in sel["validation"]}
        assert not chosen[fraction] & val and not (chosen[fraction] | val) & test_subjects
        assert all(set(r) == {"image", "label", "subject"} for r in sel["training"])
        assert val == {r["subject"] for r in select_finetune_records(dl, "t1", 1.0, 0.25, seed=3)["validation"]}
    assert len(chosen[0.05]) == 1 and len(chosen[1.0]) == 6
    assert chosen[0.05] <= chosen[0.1] <= chosen[0.5] <= chosen[1.0]
    again = select_finetune_records(dl, "t1", 0.5, 0.25, seed=3)
    assert {r["subject"] for r in again["training"]} == chosen[0.5]
    with pytest.raises(ValueError, match="label_fraction"):
        select_finetune_records(dl, "t1", 0.0)


def test_label_map_rejects_unknown_values():
    label = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    out = MapLabelsd("label", {1: 1, 2: 1, 4: 1}, num_classes=2)({"label": label})["label"]
    assert out.tolist() == [[[0, 1], [1, 1]]]
    with pytest.raises(ValueError, match=r"label values \[4\] are not in label_map"):
        MapLabelsd("label", {1: 1, 2: 1}, num_classes=2)({"label": label})
    with pytest.raises(ValueError, match="outside"):
        MapLabelsd("label", {1: 2}, num_classes=2)


def test_train_config_finetunes_from_the_generator_and_saves_the_model(train_overrides):
    wf = run_workflow(TRAIN, {**train_overrides, "label_fraction": 0.5}, workflow_type="train")
    assert not wf.check_properties()
    out, models = train_overrides["output_dir"], train_overrides["ckpt_dir"]
    assert Path(out, "init.txt").read_text().startswith("init: pretrained (")
    subjects = json.loads(Path(out, "label_subjects.json").read_text())
    assert len(subjects["training_subjects"]) == 3 and subjects["label_fraction"] == 0.5
    assert [f for f in os.listdir(models) if f.endswith(".pt")] == ["model.pt"]  # the only top-level models/*.pt
    assert os.path.isfile(os.path.join(models, "checkpoints", "checkpoint_final.pt"))  # resume state, in a sub-folder
    state = torch.load(os.path.join(models, "model.pt"))
    _seg_net().load_state_dict(state)
    # run_record.json: the settings of run_config.json, the generator file read with its SHA-256, the files written
    record = json.loads(Path(out, "run_record.json").read_text())
    assert record["workflow"] == "fine-tuning" and record["fingerprint"] == fingerprint(record["settings"])
    assert record["fingerprint"] == json.loads(Path(out, "run_config.json").read_text())["fingerprint"]
    generators = train_overrides["pretrained_ckpt"]
    assert [(m["file"], m["sha256"]) for m in record["models"]] == [(generators, sha256_file(generators))]
    written = {os.path.join(models, "model.pt"), "train_log.txt", "init.txt", "label_subjects.json"}
    assert written <= set(record["outputs"])


def test_scratch_from_the_cli_form(train_overrides):
    wf = run_workflow(TRAIN, {**train_overrides, "pretrained_ckpt": "$None"}, workflow_type="train")
    assert Path(train_overrides["output_dir"], "init.txt").read_text() == "init: scratch\n"
    assert wf.parser.get_parsed_content("init_state") is None
    assert json.loads(Path(train_overrides["output_dir"], "run_record.json").read_text())["models"] == []


def test_missing_explicit_pretrained_file_stops_before_training(train_overrides):
    wf = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", **{**train_overrides, "pretrained_ckpt": "/nonexistent/gen.pt"}
    )
    with pytest.raises(SystemExit, match="pretrained_ckpt not found: /nonexistent/gen.pt"):
        wf.initialize()
    assert not os.path.exists(train_overrides["ckpt_dir"])


def test_a_schedule_without_validation_is_rejected(train_overrides):
    wf = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **{**train_overrides, "val_interval": 2})
    with pytest.raises(SystemExit, match="validation .* would never run"):
        wf.initialize()


def test_monai_label_style_records_still_train(train_overrides, tiny_dataset):
    dl = load_datalist(tiny_dataset["data_list_file_path"], tiny_dataset["dataset_dir"], ["t1", "label"])
    plain = [{"image": r["t1"], "label": r["label"]} for r in dl["training"]]
    overrides = {**train_overrides, "train#dataset#data": plain[:3], "validate#dataset#data": plain[3:4]}
    wf = run_workflow(TRAIN, overrides, workflow_type="train")
    assert wf.parser.get_parsed_content("train#trainer").state.iteration >= 1
    assert os.path.isfile(os.path.join(train_overrides["ckpt_dir"], "model.pt"))
    used = json.loads(Path(train_overrides["output_dir"], "label_subjects.json").read_text())
    assert used["training_subjects"] == ["demo_000", "demo_001", "demo_002"]  # the records used, named by file


def test_existing_model_is_kept_as_a_backup(train_overrides):
    os.makedirs(train_overrides["ckpt_dir"])
    old = os.path.join(train_overrides["ckpt_dir"], "model.pt")
    torch.save({"old": torch.zeros(1)}, old)
    out = Path(train_overrides["output_dir"])
    out.mkdir()
    earlier = {"train_log.txt": "earlier log\n", "validation_metrics.csv": "epoch,val_mean_dice\n1,0.5\n"}
    earlier.update({"run_record.json": "{}\n", "notes.txt": "the user's\n"})  # notes.txt: not a run's file
    for name, text in earlier.items():
        (out / name).write_text(text)
    run_workflow(TRAIN, train_overrides, workflow_type="train")
    (stamp,) = os.listdir(os.path.join(train_overrides["ckpt_dir"], "previous"))
    backup = torch.load(os.path.join(train_overrides["ckpt_dir"], "previous", stamp, "model.pt"))
    assert "old" in backup and "old" not in torch.load(old)  # kept aside, then rewritten in place
    # the earlier run's files in output_dir are moved aside too (no --overwrite: MONAI Label retrains in place)
    (stamp,) = os.listdir(out / "previous")
    assert {p.name: p.read_text() for p in (out / "previous" / stamp).iterdir()} == {
        k: v for k, v in earlier.items() if k != "notes.txt"
    }
    assert (out / "notes.txt").read_text() == "the user's\n" and "earlier" not in (out / "train_log.txt").read_text()
    assert [line[:2] for line in open(out / "validation_metrics.csv")][1:] == ["1,"]  # this run's rows only
    assert json.loads((out / "run_record.json").read_text())["workflow"] == "fine-tuning"


def test_evaluate_overlay_writes_per_subject_metrics(train_overrides, tmp_path, monkeypatch):
    from bundle.evaluation import SegmentationReportHandler

    run_workflow(TRAIN, train_overrides, workflow_type="train")
    overrides = {**train_overrides, "output_dir": str(tmp_path / "eval")}
    run_workflow(EVALUATE, overrides)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["subject"] for r in rows) == ["demo_008", "demo_009"]  # the testing subjects
    for r in rows:
        assert 0 <= float(r["dice"]) <= 1 and float(r["label_voxels"]) > 0
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["n_subjects"] == 2
    for name in ("dice", "iou", "hd95", "sensitivity", "precision"):
        assert summary[name]["n"] + summary[name]["n_excluded"] == 2
    # run_record.json beside the metrics: models/model.pt and its SHA-256, the settings, the testing subjects' files
    record = json.loads((tmp_path / "eval" / "run_record.json").read_text())
    model = os.path.join(train_overrides["ckpt_dir"], "model.pt")
    assert record["workflow"] == "evaluation" and record["outputs"] == ["metrics.csv", "metrics_summary.json"]
    assert [(m["file"], m["sha256"]) for m in record["models"]] == [(model, sha256_file(model))]
    assert record["settings"]["data_section"] == "testing" and record["fingerprint"] == fingerprint(record["settings"])
    assert record["settings"]["speed"] == {"amp": False, "group_norm_kernel": True}  # the evaluation's own
    assert record["data"]["n_files"] == 4  # 2 testing subjects: image and label
    # a second evaluation into the folder is refused before anything runs, naming the folder and the earlier files
    kept = {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()}
    with pytest.raises(SystemExit, match=r"eval already holds the outputs of an earlier evaluation \(3 file\(s\): "
                       r"metrics.csv, metrics_summary.json, run_record.json\)"):
        run_workflow(EVALUATE, overrides)
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()} == kept
    # --overwrite True: the earlier files are moved to previous/<time>/ first, so a failed evaluation loses none

    def fail(self, *args, **kwargs):
        raise RuntimeError("evaluation failed (simulated)")

    monkeypatch.setattr(SegmentationReportHandler, "subject_metrics", fail)
    with pytest.raises(RuntimeError) as err:
        run_workflow(EVALUATE, {**overrides, "overwrite": True})
    assert "evaluation failed (simulated)" in str(err.value.__cause__ or err.value)
    (stamp,) = os.listdir(tmp_path / "eval" / "previous")
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval" / "previous" / stamp).iterdir()} == kept
    assert not any((tmp_path / "eval" / name).exists() for name in kept)  # and the failed run wrote no record


def test_evaluation_reports_empty_predictions(tmp_path):
    from bundle.evaluation import SegmentationReportHandler, summarise

    handler = SegmentationReportHandler(str(tmp_path))
    label = torch.zeros(2, 8, 8, 4)
    label[0] = 1
    label[0, 2:5, 2:5, 1:3], label[1, 2:5, 2:5, 1:3] = 0, 1
    empty_pred = torch.zeros_like(label)
    empty_pred[0] = 1
    perfect = handler.subject_metrics(label.clone(), label)
    assert perfect["dice"] == pytest.approx(1.0) and perfect["hd95"] == pytest.approx(0.0)
    empty = handler.subject_metrics(empty_pred, label)
    assert empty["dice"] == 0.0 and not torch.isfinite(torch.tensor(empty["hd95"]))
    summary = summarise([{"dice": 1.0, "hd95": 0.0}, {"dice": 0.0, "hd95": empty["hd95"]}], ["dice", "hd95"])
    assert summary["hd95"] == {"mean": 0.0, "std": 0.0, "n": 1, "n_excluded": 1}
    assert summary["dice"]["mean"] == 0.5
    json.dumps(summary, allow_nan=False)


def test_train_config_ids_for_monai_label():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    for key in ("bundle_root", "dataset_dir", "data_list_file_path", "ckpt_dir", "output_dir", "device", "epochs"):
        assert key in parser.config
    assert parser["validate"]["handlers"][-1]["key_metric_filename"] == "model.pt"


@pytest.mark.parametrize(
    ("schedule", "half", "end"), [("poly", 0.5**0.9, 0.0), ("cosine", 0.5, 0.0), ("constant", 1.0, 1.0)]
)
def test_lr_schedules(schedule, half, end):
    from bundle.recipe import lr_lambda

    factor = lr_lambda(schedule, 100)
    assert factor(0) == pytest.approx(1.0)
    assert factor(50) == pytest.approx(half)
    assert factor(100) == pytest.approx(end) and factor(150) == pytest.approx(end)
    assert factor(25) >= factor(50) >= factor(75)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        lr_lambda("step", 100)


def test_lr_decays_per_iteration_and_early_stopping_records_best_and_last_epoch(tiny_dataset, tmp_path):
    # min_delta 1: no validation can improve on the first, so training stops after `patience` more validations
    overrides = scratch_finetune_overrides(
        tiny_dataset, tmp_path / "models", tmp_path / "out", epochs=6, patience=2, min_delta=1.0, learning_rate=0.01
    )
    wf = run_workflow(TRAIN, overrides, workflow_type="train")
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (3, 6)  # stopped at epoch 3 of 6 (2 iterations each)
    # stepped every iteration over the whole budget (6 x 2): poly factor (1 - 6/12)^0.9, not (1 - 3/12)^0.9
    lr = wf.parser.get_parsed_content("optimizer").param_groups[0]["lr"]
    assert lr == pytest.approx(0.01 * 0.5**0.9)
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    curve = summary["validation_curve"]
    assert [epoch for epoch, _ in curve] == [1, 2, 3]
    best = max(range(3), key=lambda i: (curve[i][1], -i))
    assert summary["best_epoch"] == curve[best][0] and summary["best_metric"] == pytest.approx(curve[best][1])
    assert (summary["last_epoch"], summary["max_epochs"], summary["stopped_early"]) == (3, 6, True)
    with open(tmp_path / "out" / "validation_metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    training = json.loads((tmp_path / "models" / "model.json").read_text())["training"]
    assert (training["best_epoch"], training["last_epoch"], training["stopped_early"]) == (summary["best_epoch"], 3, True)
    assert training["epoch"] == training["best_epoch"]  # the record still describes the best weights
    assert training["settings"]["lr_schedule"] == "poly" and training["settings"]["patience"] == 2


def test_bad_recipe_values_stop_before_anything_is_written(tiny_dataset, tmp_path):
    overrides = scratch_finetune_overrides(
        tiny_dataset, tmp_path / "models", tmp_path / "out", lr_schedule="step", patience=-1, crop_pos=0, crop_neg=0
    )
    wf = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **overrides)
    with pytest.raises(SystemExit, match=r"lr_schedule must be one of .*patience must be .*crop_pos \+ crop_neg"):
        wf.initialize()
    assert not os.path.exists(tmp_path / "models") and not os.path.exists(tmp_path / "out")
