"""Model records (bundle/records.py): every model file carries its own settings; consumers take them from it, refuse a
contradicting explicit value, accept a forced one, and refuse a record that does not describe its weights."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import bundle
from bundle.records import ModelSource, read_record, record_path, resolve_settings, write_record
from conftest import ROOT, config_path, make_workflow, run_workflow, scratch_finetune_overrides


@pytest.fixture(scope="module")
def preset_model(tiny_dataset: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model fine-tuned from scratch with non-default preprocessing: 48x48 slices, intensity clip 3."""
    root = tmp_path_factory.mktemp("preset_model")
    overrides = scratch_finetune_overrides(
        tiny_dataset, root / "models", root / "train", image_size=48, intensity_clip=3.0
    )
    run_workflow(config_path("train.yaml"), overrides)
    return root / "models"


def _infer(models: Path, tiny_dataset: dict[str, str], out: Path, **kwargs) -> dict[str, np.ndarray]:
    overrides = {"bundle_root": str(ROOT), **tiny_dataset, "ckpt_dir": str(models), "output_dir": str(out), **kwargs}
    run_workflow(config_path("inference.yaml"), overrides)
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


def test_model_json_describes_model_pt(preset_model):
    record = read_record(preset_model / "model.pt", "segmentation", required=True)
    assert record["weights"]["file"] == "model.pt" and len(record["weights"]["sha256"]) == 64
    assert record["bundle_version"] == bundle.__version__
    pre = record["preprocessing"]
    assert pre["image_size"] == [48, 48] and pre["intensity_clip"] == 3.0 and pre["intensity"] == {"t1": "mri"}
    assert pre["modalities"] == ["t1", "t2"] and pre["source"] == "g_ab" and pre["backgrounds"] == {"t1": 0.0}
    assert record["network"]["args"]["features"] == [8, 8, 16, 16, 32, 8]
    assert record["labels"]["names"] == {"0": "background", "1": "lesion"}
    assert record["labels"]["label_map"] == {"1": 1, "2": 1}
    training = record["training"]
    assert training["init"] == {"kind": "scratch"} and training["epoch"] == 1
    assert training["metric"]["name"] == "val_mean_dice" and training["settings"]["label_fraction"] == 1.0
    assert training["fingerprint"] == bundle.records.fingerprint(training["settings"])
    with open(ROOT / "configs" / "metadata.json") as f:
        assert json.load(f)["version"] == bundle.__version__


def test_plain_inference_uses_the_record(preset_model, tiny_dataset, tmp_path):
    plain = _infer(preset_model, tiny_dataset, tmp_path / "plain")
    given = _infer(preset_model, tiny_dataset, tmp_path / "given", image_size=48, intensity_clip=3.0)
    assert plain and plain.keys() == given.keys()
    assert all(np.array_equal(plain[k], given[k]) for k in plain)  # the record's values, as if given
    with pytest.raises(SystemExit, match=r"image_size: given 32, .*model.json has \[48, 48\]"):
        _infer(preset_model, tiny_dataset, tmp_path / "conflict", image_size=32)
    assert not (tmp_path / "conflict").exists()  # stopped before anything was written
    with pytest.raises(SystemExit, match=r"intensity: given 'ct'"):
        _infer(preset_model, tiny_dataset, tmp_path / "conflict", intensity="ct")
    forced = _infer(preset_model, tiny_dataset, tmp_path / "forced", intensity_clip=0.5, force_settings=True)
    assert any(not np.array_equal(plain[k], forced[k]) for k in plain)  # the override is really applied


def test_evaluation_takes_the_record(preset_model, tiny_dataset, tmp_path):
    overrides = {"bundle_root": str(ROOT), **tiny_dataset, "ckpt_dir": str(preset_model), "output_dir": str(tmp_path)}
    wf = make_workflow([config_path("train.yaml"), config_path("evaluate.yaml")], overrides)
    assert list(wf.parser.get_parsed_content("spatial_size")) == [48, 48]
    assert wf.parser.get_parsed_content("settings")["intensity_clip"] == 3.0
    assert wf.parser.get_parsed_content("settings")["features"] == [8, 8, 16, 16, 32, 8]  # not the default features
    conflicts = r"intensity_clip: given 4.0, .*; features: given \[16, 16, 32, 32, 64, 16\], .*has \[8, 8, 16"
    with pytest.raises(SystemExit, match=conflicts):
        make_workflow(
            [config_path("train.yaml"), config_path("evaluate.yaml")],
            {**overrides, "intensity_clip": 4.0, "features": [16, 16, 32, 32, 64, 16]},
        )


def test_a_record_that_does_not_match_its_weights_is_refused(preset_model, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.json").write_bytes((preset_model / "model.json").read_bytes())
    torch.save({"w": torch.zeros(1)}, models / "model.pt")  # other weights beside the copied record
    with pytest.raises(ValueError, match=r"model.json does not describe .*model.pt: .*SHA-256"):
        read_record(models / "model.pt")


def test_a_weights_file_without_record_loads_with_a_warning(tmp_path, caplog):
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING, logger="multi_condos"):
        assert read_record(tmp_path / "model.pt") is None
    assert "has no model record" in caplog.text
    with pytest.raises(FileNotFoundError, match="has no model record"):
        read_record(tmp_path / "model.pt", required=True)
    path = write_record(tmp_path / "model.pt", {"kind": "segmentation", "preprocessing": {"image_size": [32, 32]}})
    assert path == record_path(tmp_path / "model.pt") and read_record(tmp_path / "model.pt")["kind"] == "segmentation"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"  # readable by others, unlike mkstemp's 0600
    with pytest.raises(ValueError, match="describes a 'segmentation' model, not 'generators'"):
        read_record(tmp_path / "model.pt", "generators")


def test_resolve_settings_fills_compares_and_forces(tmp_path):
    record = {"preprocessing": {"intensity": {"ct": "ct"}, "ct_window": [-200, 250], "intensity_clip": 5.0}}
    source = ModelSource(tmp_path / "m.pt", record)
    given = {"intensity": None, "ct_window": None, "intensity_clip": 2.0, "orientation": None}
    out = resolve_settings(given, [source])  # intensity_clip belongs to the mri rule: not compared for a ct model
    assert out == {"intensity": {"ct": "ct"}, "ct_window": [-200, 250], "intensity_clip": 2.0, "orientation": "RAS"}
    assert resolve_settings({"intensity": "ct", "ct_window": [-200.0, 250.0]}, [source])["intensity"] == "ct"
    with pytest.raises(ValueError, match=r"ct_window: given \[-100, 100\], .*m.json has \[-200, 250\]"):
        resolve_settings({"ct_window": [-100, 100]}, [source])
    assert resolve_settings({"ct_window": [-100, 100]}, [source], force=True)["ct_window"] == [-100, 100]


def test_finetuning_refuses_a_generator_of_other_modalities(train_overrides):
    with pytest.raises(SystemExit, match=r"modalities: given \['t2', 't1'\], .*generators.json has \['t1', 't2'\]"):
        make_workflow(config_path("train.yaml"), {**train_overrides, "modalities": ["t2", "t1"]})


def test_finetuning_refuses_other_features_than_the_generator(train_overrides):
    with pytest.raises(SystemExit, match=r"features: given \[16, 16, 32, 32, 64, 16\], .*generators.json has \[8, 8"):
        make_workflow(config_path("train.yaml"), {**train_overrides, "features": [16, 16, 32, 32, 64, 16]})


def test_finetuning_inherits_the_generator_preprocessing(train_overrides, tiny_generators):
    wf = make_workflow(config_path("train.yaml"), {k: v for k, v in train_overrides.items() if k != "image_size"})
    assert list(wf.parser.get_parsed_content("spatial_size")) == [32, 32]  # the generator's, not the default 64
    settings = wf.parser.get_parsed_content("run_settings")
    assert settings["modalities"] == ["t1", "t2"] and settings["weight_decay"] == 1e-5
    assert {"samples_per_subject", "amp", "val_fraction", "data_list_file_path"} <= set(settings)


def test_a_missing_default_generator_is_resolved_and_reported_once(train_overrides, capfd):
    overrides = {**train_overrides, "pretrained_ckpt": train_overrides["default_pretrained_ckpt"]}
    wf = make_workflow(config_path("train.yaml"), overrides)
    settings = wf.parser.get_parsed_content("run_settings")
    wf.parser.get_parsed_content("model_record")
    assert settings["pretrained_ckpt"] is None  # scratch, recorded as such
    printed = capfd.readouterr()
    assert (printed.out + printed.err).count("FROM SCRATCH") == 1
