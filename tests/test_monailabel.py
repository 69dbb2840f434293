"""MONAI Label: replay, through MONAI's own bundle API, exactly what MONAI Label 0.8.5's ``BundleTrainTask`` and
``BundleInferTask`` (``monailabel/tasks/{train,infer}/bundle.py``, ``tasks/infer/basic_infer.py``) do with this
bundle, on a fresh copy of the bundle in a temporary folder (MONAI Label writes ``models/model.pt`` under the bundle
root). A second set of tests drives the real ``monailabel`` tasks; it is skipped unless ``monailabel`` imports
(a separate environment: see docs/README.md, "MONAI Label").

Beside MONAI Label's own overrides, the replays set only tiny sizes (``TINY``) so that they take seconds on CPU.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.data import partition_dataset
from monai.inferers import SliceInferer
from monai.networks.nets import BasicUNet
from monai.transforms import Compose, SaveImaged, Spacingd

from conftest import ROOT, TINY_NET

BUNDLE_NAME = "multi_condos_mri_segmentation"  # MONAI Label guesses the task type from the folder name
#: tiny sizes (not MONAI Label overrides): 32x32 slices, a small network, 2 iterations of 4 slices per epoch
TINY = {
    "image_size": 32,
    "features": TINY_NET["features"],
    "epoch_length": 2,
    "samples_per_subject": 2,
    "batch_size": 4,
}
TINY_TRAIN = {**TINY, "val_interval": 1}


def _copy_bundle(dest: Path) -> Path:
    """A fresh bundle as MONAI Label gets it (configs, code, docs, LICENSE; no models/, data/ or outputs/)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("configs", "bundle", "scripts", "docs"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    shutil.copy2(ROOT / "LICENSE", dest / "LICENSE")
    return dest


@pytest.fixture()
def fresh_bundle(tmp_path: Path) -> Path:
    return _copy_bundle(tmp_path / BUNDLE_NAME)


@pytest.fixture(scope="module")
def records(tiny_dataset: dict[str, str]) -> list[dict[str, str]]:
    """MONAI Label's datastore items: ``{"image", "label"}``, one file each (modality A, as the bundle expects)."""
    with open(tiny_dataset["data_list_file_path"]) as f:
        training = json.load(f)["training"]
    base = tiny_dataset["dataset_dir"]
    return [{"image": os.path.join(base, r["t1"]), "label": os.path.join(base, r["label"])} for r in training]


def monailabel_train(bundle_path: Path, records: list[dict], max_epochs: int = 1, val_split: float = 0.2, **tiny):
    """``BundleTrainTask.__call__`` (single GPU/CPU path) with ``request = {"max_epochs", "val_split",
    "pretrained": True, "device": "cpu"}``; ``tiny`` holds the size overrides added for the test."""
    path = str(bundle_path)
    config_file = os.path.join(path, "configs", "train.yaml")
    bundle_config = ConfigParser()  # BundleTrainTask._load_bundle_config
    bundle_config.read_config(config_file)
    bundle_config.config.update({"bundle_root": path})
    train_ds, val_ds = partition_dataset(records, ratios=[1 - val_split, val_split], shuffle=False)
    train_handlers = bundle_config.get("train#handlers", [])
    model_pytorch = os.path.join(path, "models", "model.pt")
    if os.path.exists(model_pytorch):  # BundleTrainTask._load_checkpoint (pretrained=True)
        if not [t for t in train_handlers if t.get("_target_") == "CheckpointLoader"]:
            loader = {"_target_": "CheckpointLoader", "load_path": model_pytorch, "load_dict": {"model": "$@network"}}
            train_handlers.insert(0, {**loader, "strict": False})
    overrides = {
        "bundle_root": path,
        "train#trainer#max_epochs": max_epochs,
        "train#dataset#data": train_ds,
        "device": torch.device("cpu"),
        "train#handlers": train_handlers,
        "validate#dataset#data": val_ds,  # set whenever val_split >= 0 (default 0.2)
    }
    sys.path.insert(0, path)
    try:
        monai.bundle.run(
            run_id="run",
            init_id=None,
            final_id=None,
            meta_file=os.path.join(path, "configs", "metadata.json"),
            config_file=config_file,
            **overrides,
            **tiny,
        )
    finally:
        sys.path.remove(path)
    return overrides


def monailabel_infer(bundle_path: Path, image: str, **tiny) -> dict:
    """``BundleInferTask`` + ``BasicInferTask.__call__`` for one auto-segmentation request ``{"image": path}``:
    returns the data dict after the post transforms (without MONAI Label's final ``Restored`` and writer)."""
    path = str(bundle_path)
    sys.path.insert(0, path)
    try:
        config = ConfigParser()
        config.read_config(os.path.join(path, "configs", "inference.yaml"))
        config.config.update({"bundle_root": path, "device": "cpu", **tiny})
        with open(os.path.join(path, "configs", "metadata.json")) as f:
            metadata = json.load(f)
        key_image, image_fmt = next(iter(metadata["network_data_format"]["inputs"].items()))
        key_pred, pred_fmt = next(iter(metadata["network_data_format"]["outputs"].items()))
        labels = {v.lower(): int(k) for k, v in pred_fmt.get("channel_def", {}).items() if v.lower() != "background"}
        dimension = len(image_fmt["spatial_shape"]) if image_fmt.get("spatial_shape") else 3
        selectable = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "models", "*.pt")))

        network = config.get_parsed_content("network_def", instantiate=True)
        checkpoint = torch.load(os.path.join(path, "models", "model.pt"), map_location="cpu")
        state = checkpoint.get("model", checkpoint)
        assert set(state) == set(network.state_dict())  # otherwise MONAI Label warns and loads non-strictly
        network.load_state_dict(state, strict=False)
        network.eval()

        data = {"image": image, "image_path": image, "device": "cpu", "model": BUNDLE_NAME}
        pre = config.get_parsed_content("preprocessing", instantiate=True)
        pre = list(pre.transforms) if isinstance(pre, Compose) else pre
        for t in pre:  # run_transforms(..., use_compose=False)
            data = t(data)
        inferer = config.get_parsed_content("inferer", instantiate=True)
        with torch.no_grad():
            data[key_pred] = inferer(data[key_image][None], network)[0]  # run_inferer, convert_to_batch
        post = config.get_parsed_content("postprocessing", instantiate=True)
        post = [
            t for t in (list(post.transforms) if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)
        ]
        for t in post:
            data = t(data)
    finally:
        sys.path.remove(path)
    return {
        "data": data,
        "network": network,
        "pre": pre,
        "inferer": inferer,
        "labels": labels,
        "dimension": dimension,
        "keys": (key_image, key_pred),
        "selectable": selectable,
    }


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, records: list[dict]) -> dict:
    """One MONAI Label training of a fresh bundle (no models/, no generators.pt), shared by the tests below."""
    path = _copy_bundle(tmp_path_factory.mktemp("monailabel") / BUNDLE_NAME)
    before = set(os.listdir(path))
    overrides = monailabel_train(path, records, **TINY_TRAIN)
    return {"path": path, "before": before, "after": set(os.listdir(path)), "overrides": overrides}


def _copy_trained(trained_bundle: dict, dest: Path, keep_models: bool = True) -> Path:
    """A copy of the trained bundle (its data/ included, as MONAI Label's bundle folder keeps it)."""
    shutil.copytree(trained_bundle["path"], dest)
    if not keep_models:
        shutil.rmtree(dest / "models")
        shutil.rmtree(dest / "outputs")
    return dest


def _selectable(bundle_path: Path) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(str(bundle_path / "models" / "*.pt")))


def test_fresh_bundle_trains_from_scratch(trained_bundle):
    path, overrides = trained_bundle["path"], trained_bundle["overrides"]
    assert len(overrides["train#dataset#data"]) == 6 and len(overrides["validate#dataset#data"]) == 2
    assert not (path / "models" / "pretrain").exists()  # no generators.pt: warned, trained from scratch
    assert (path / "outputs" / "train" / "init.txt").read_text() == "init: scratch\n"
    model = BasicUNet(2, 1, 2, features=TINY["features"])
    model.load_state_dict(torch.load(path / "models" / "model.pt"))  # a plain state dict
    assert _selectable(path) == ["model.pt"]  # what MONAI Label offers as model_filename


def test_auto_segmentation_of_3d_volumes_slice_by_slice(trained_bundle, records, tmp_path):
    rng = np.random.default_rng(0)
    odd = np.zeros((40, 36, 10), dtype=np.float32)  # another in-plane size than the slices trained on
    odd[4:36, 3:33, 1:9] = rng.uniform(100, 1000, size=(32, 30, 8))
    odd_path = str(tmp_path / "odd_t1.nii.gz")
    nib.save(nib.Nifti1Image(odd, np.diag([0.9, 1.1, 2.5, 1.0])), odd_path)
    for image in (records[0]["image"], odd_path):
        out = monailabel_infer(trained_bundle["path"], image, **TINY)
        assert out["keys"] == ("image", "pred") and out["labels"] == {"lesion": 1} and out["dimension"] == 2
        assert out["selectable"] == ["model.pt"]
        assert not [t for t in out["pre"] if isinstance(t, Spacingd)]  # MONAI 1.6 Spacingd breaks on image_path
        assert isinstance(out["inferer"], SliceInferer)
        shape = nib.load(image).shape
        pred = out["data"]["pred"]
        assert tuple(pred.shape) == (1, *shape)  # the input's shape: one channel of class indices
        assert set(torch.unique(torch.as_tensor(pred)).tolist()) <= {0, 1}
        if shape[:2] == (32, 32):  # roi = the whole slice: exactly the network on each axial slice
            volume = torch.as_tensor(out["data"]["image"])[0]  # preprocessed (H, W, D)
            with torch.no_grad():
                logits = out["network"](volume.permute(2, 0, 1)[:, None])  # (D, 2, H, W)
            inside = volume.permute(2, 0, 1) != 0  # mri: outside the input's foreground the mask is background
            decided = (logits[:, 1] - logits[:, 0]).abs() > 1e-4
            direct = torch.where(inside, logits.argmax(1), 0)
            mask = torch.as_tensor(pred)[0].permute(2, 0, 1)
            assert torch.equal(mask[decided].long(), direct[decided]) and decided.float().mean() > 0.99


def test_retraining_loads_models_model_pt_and_rewrites_it_in_place(trained_bundle, records, tmp_path):
    path = _copy_trained(trained_bundle, tmp_path / BUNDLE_NAME)
    torch.manual_seed(3)
    old = BasicUNet(2, 1, 2, features=TINY["features"]).state_dict()
    torch.save(old, path / "models" / "model.pt")
    (path / "models" / "model.json").unlink()  # another model.pt: its record would no longer describe it
    os.utime(path / "models" / "model.pt", ns=(0, 0))
    # learning rate 0: the model saved after one epoch is the one the prepended CheckpointLoader loaded
    overrides = monailabel_train(path, records, **TINY_TRAIN, learning_rate=0.0)
    assert overrides["train#handlers"][0]["_target_"] == "CheckpointLoader"
    assert (path / "models" / "model.pt").stat().st_mtime_ns > 0  # written again by this training
    new = torch.load(path / "models" / "model.pt")
    assert all(torch.equal(new[k], old[k]) for k in old)
    assert _selectable(path) == ["model.pt"]


def test_monailabel_max_epochs_1_with_the_default_val_interval_writes_a_model(trained_bundle, records, tmp_path):
    path = _copy_trained(trained_bundle, tmp_path / BUNDLE_NAME, keep_models=False)
    monailabel_train(path, records, max_epochs=1, **TINY)  # no val_interval override
    assert (path / "models" / "model.pt").is_file()


def test_monailabel_training_writes_only_models_and_outputs(trained_bundle):
    assert trained_bundle["after"] - trained_bundle["before"] == {"models", "outputs"}


# ---- the real MONAI Label tasks (separate environment; skipped here unless monailabel imports) ----


def _tiny_configs(bundle_path: Path) -> None:
    """Write the tiny sizes into the copy's train.yaml and inference.yaml (MONAI Label takes no overrides)."""
    for name, values in (("train.yaml", TINY_TRAIN), ("inference.yaml", TINY)):
        path = bundle_path / "configs" / name
        config = yaml.safe_load(path.read_text())
        config.update({k: v for k, v in values.items() if k in config})
        path.write_text(yaml.safe_dump(config, sort_keys=False))


class _Datastore:
    """The one datastore method ``BundleTrainTask`` calls."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def datalist(self) -> list[dict]:
        return [dict(i) for i in self.items]


def test_real_monailabel_bundle_tasks(fresh_bundle, records):
    pytest.importorskip("monailabel", reason="monailabel is not installed (see docs/README.md, 'MONAI Label')")
    from monailabel.tasks.infer.bundle import BundleInferTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    _tiny_configs(fresh_bundle)
    path = str(fresh_bundle)
    assert not BundleInferTask(path, {}).is_valid()  # no models/model.pt yet: MONAI Label ignores the bundle

    train = BundleTrainTask(path, {})
    assert train.is_valid()
    request = {"model": BUNDLE_NAME, "max_epochs": 1, "device": "cpu", "val_split": 0.25, "multi_gpu": False}
    train({**request, "pretrained": True}, _Datastore(records))
    assert (fresh_bundle / "models" / "model.pt").is_file()
    train({**request, "pretrained": True}, _Datastore(records))  # retraining: loads and rewrites model.pt

    infer = BundleInferTask(path, {})
    assert infer.is_valid() and infer.dimension == 2 and infer.labels == {"lesion": 1}
    assert infer.config()["model_filename"] == ["model.pt"]
    result_file, result_json = infer({"image": records[0]["image"], "device": "cpu", "model": BUNDLE_NAME})
    mask = np.asanyarray(nib.load(result_file).dataobj)
    assert mask.shape == nib.load(records[0]["image"]).shape
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert result_json["label_names"] == {"lesion": 1}


def test_a_preset_model_keeps_its_preprocessing_when_served_and_retrained(fresh_bundle, records, tiny_dataset, tmp_path):
    """A model fine-tuned with non-default preprocessing (48x48 slices, 1 mm resampling: Spacingd runs) is served
    by MONAI Label's plain inference.yaml with the record's settings, without the Spacingd/image_path crash, and
    retraining through /train/ (plain train.yaml, CheckpointLoader on model.pt) keeps them in the new record."""
    from conftest import config_path, run_workflow, scratch_finetune_overrides

    trained = {"image_size": 48, "spacing": [1.0, 1.0, 1.0], "intensity_clip": 3.0}
    overrides = scratch_finetune_overrides(tiny_dataset, fresh_bundle / "models", tmp_path / "train", **trained)
    run_workflow(config_path("train.yaml"), overrides)
    out = monailabel_infer(fresh_bundle, records[0]["image"])  # no size override: MONAI Label sets none
    assert [t for t in out["pre"] if isinstance(t, Spacingd)]  # resampling is on, and image_path survived it
    assert out["data"]["image_path"] == records[0]["image"]
    assert list(out["inferer"].roi_size)[:2] == [48, 48]
    assert tuple(out["data"]["pred"].shape[1:]) == nib.load(records[0]["image"]).shape
    retrain = {k: v for k, v in TINY_TRAIN.items() if k not in ("image_size", "features")}
    monailabel_train(fresh_bundle, records, **retrain)
    with open(fresh_bundle / "models" / "model.json") as f:
        record = json.load(f)
    assert record["preprocessing"]["image_size"] == [48, 48] and record["preprocessing"]["spacing"] == [1.0, 1.0, 1.0]
    assert record["preprocessing"]["intensity_clip"] == 3.0
    assert record["network"]["args"]["features"] == TINY_NET["features"]
