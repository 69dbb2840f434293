"""Segmentation inference config (configs/inference.yaml): Model Zoo / MONAI Label properties, masks in the input's
space, label values, direct-forward agreement, user records and clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import BasicUNet

from conftest import ROOT, TINY_NET, config_path

FEATURES = TINY_NET["features"]


def _network(seed: int = 0) -> BasicUNet:
    torch.manual_seed(seed)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=FEATURES).eval()


@pytest.fixture()
def model(tmp_path: Path) -> BasicUNet:
    """Random weights saved as ``tmp_path/models/model.pt`` (a plain state_dict, as train.yaml's CheckpointSaver)."""
    net = _network()
    os.makedirs(tmp_path / "models")
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    return net


@pytest.fixture()
def overrides(tiny_dataset: dict[str, str], tmp_path: Path) -> dict:
    return {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "features": FEATURES,
    }


def _workflow(overrides: dict) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=config_path("inference.yaml"),
        meta_file=config_path("metadata.json"),
        logging_file=config_path("logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    wf.initialize()
    return wf


def _run(overrides: dict) -> ConfigWorkflow:
    wf = _workflow(overrides)
    assert not wf.check_properties()  # no missing required property, no optional one with a wrong id
    wf.run()
    wf.finalize()
    return wf


def _testing_inputs(tiny_dataset: dict[str, str], key: str = "t1") -> list[str]:
    with open(tiny_dataset["data_list_file_path"]) as f:
        records = json.load(f)["testing"]
    return [os.path.join(tiny_dataset["dataset_dir"], r[key]) for r in records]


def _mask_path(output_dir: str, image: str) -> str:
    return os.path.join(output_dir, os.path.basename(image).replace(".nii.gz", "_seg.nii.gz"))


def _normalise(volume: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """train.yaml's image path, independently: z-score over non-zero voxels, clip to +-clip, scale to [-1, 1]."""
    out = volume.astype(np.float64).copy()
    nonzero = out != 0
    out[nonzero] = (out[nonzero] - out[nonzero].mean()) / out[nonzero].std()
    return (np.clip(out, -clip, clip) / clip).astype(np.float32)


def _direct_logits(net: BasicUNet, volume: np.ndarray) -> np.ndarray:
    """``(classes, H, W, D)`` logits of the network on every axial slice of the normalised volume."""
    slices = torch.from_numpy(np.moveaxis(_normalise(volume), -1, 0)[:, None])  # (D, 1, H, W)
    with torch.no_grad():
        logits = net(slices).numpy()  # (D, C, H, W)
    return np.moveaxis(logits, 0, -1)  # (C, H, W, D)


def test_masks_in_input_space_and_equal_to_direct_forward(model, overrides, tiny_dataset):
    wf = _run(overrides)
    assert wf.parser.get_parsed_content("input_key") == "t1"
    inputs = _testing_inputs(tiny_dataset)
    assert len(inputs) == 2
    expected = sorted(os.path.basename(_mask_path(overrides["output_dir"], i)) for i in inputs)
    assert sorted(os.listdir(overrides["output_dir"])) == sorted([*expected, "run_record.json"])
    for image in inputs:
        src, out = nib.load(image), nib.load(_mask_path(overrides["output_dir"], image))
        assert out.shape == src.shape == (32, 32, 16)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
        assert out.get_data_dtype() == np.uint8
        mask = np.asanyarray(out.dataobj)
        assert set(np.unique(mask).tolist()) <= {0, 1}
        # with roi = the whole 32x32 slice, SliceInferer is exactly the network on each slice
        volume = np.asanyarray(src.dataobj)
        logits = _direct_logits(model, volume)
        decided = np.abs(logits[1] - logits[0]) > 1e-4  # ignore float ties
        expected = np.where(volume != 0, logits.argmax(0), 0)  # background outside the head (foreground_only)
        np.testing.assert_array_equal(mask[decided], expected[decided])
        assert decided.mean() > 0.99
    assert {0, 1} <= set(np.unique(np.asanyarray(nib.load(_mask_path(overrides["output_dir"], inputs[0])).dataobj)))


def test_output_label_values_are_written(model, overrides, tiny_dataset, tmp_path):
    plain = _run(overrides)
    mapped = {**overrides, "output_dir": str(tmp_path / "mapped"), "output_label_values": [0, 4]}
    # the class indices themselves need no mapping transform
    steps = {
        name: [type(t).__name__ for t in wf.parser.get_parsed_content("postprocessing").transforms]
        for name, wf in (("plain", plain), ("mapped", _run(mapped)))
    }
    assert "MapLabelValued" not in steps["plain"] and "MapLabelValued" in steps["mapped"]
    for image in _testing_inputs(tiny_dataset):
        classes = np.asanyarray(nib.load(_mask_path(overrides["output_dir"], image)).dataobj)
        values = np.asanyarray(nib.load(_mask_path(mapped["output_dir"], image)).dataobj)
        assert set(np.unique(values).tolist()) <= {0, 4}
        np.testing.assert_array_equal(values, np.where(classes == 1, 4, 0))


@pytest.mark.parametrize(
    ("values", "message"),
    [([0, 1, 2], r"has 3 value\(s\) but num_classes is 2"), ([0, 300], r"integers in \[0, 255\]")],
)
def test_bad_output_label_values_are_rejected(model, overrides, values, message):
    with pytest.raises(SystemExit, match=message):
        _workflow({**overrides, "output_label_values": values})
    assert not os.path.exists(overrides["output_dir"])


def test_source_g_ba_segments_modality_b(model, overrides, tiny_dataset):
    _run({**overrides, "source": "g_ba"})
    inputs = _testing_inputs(tiny_dataset, "t2")
    assert sorted(os.listdir(overrides["output_dir"])) == sorted(
        [*(os.path.basename(_mask_path(overrides["output_dir"], i)) for i in inputs), "run_record.json"]
    )


def test_user_records_with_a_rotated_flipped_affine_keep_shape_and_affine(model, overrides, tmp_path):
    rng = np.random.default_rng(0)
    shape = (40, 36, 10)
    volume = np.zeros(shape, dtype=np.float32)
    volume[5:35, 4:32, 1:9] = rng.uniform(100, 1000, size=(30, 28, 8))
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, 1.1, 2.5])  # rotated, x flipped, anisotropic
    affine[:3, 3] = [12.5, -30.0, 7.25]
    image = str(tmp_path / "user_scan_t1.nii.gz")
    nib.save(nib.Nifti1Image(volume, affine), image)
    one_slice = str(tmp_path / "one_slice_t1.nii.gz")  # 32x32x1: its mask stays 3-D (issue 14)
    nib.save(nib.Nifti1Image(volume[:32, :32, 4:5].copy(), np.eye(4)), one_slice)
    user = {
        **overrides,
        "dataset#data": [{"image": image}, {"image": one_slice}],
        "data_list_file_path": str(tmp_path / "no_datalist.json"),  # not needed once dataset#data is given
    }
    _run(user)
    masks = ["one_slice_t1_seg.nii.gz", "run_record.json", "user_scan_t1_seg.nii.gz"]
    assert sorted(os.listdir(overrides["output_dir"])) == masks
    assert nib.load(_mask_path(overrides["output_dir"], one_slice)).shape == (32, 32, 1)
    out = nib.load(_mask_path(overrides["output_dir"], image))
    assert out.shape == shape
    np.testing.assert_allclose(out.affine, nib.load(image).affine, atol=1e-5)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(affine)
    assert set(np.unique(np.asanyarray(out.dataobj)).tolist()) <= {0, 1}


def test_missing_model_stops_first_with_a_clear_message(tmp_path):
    # a fresh bundle root: no model.pt and no demo dataset; nothing may be generated or written
    overrides = {"bundle_root": str(tmp_path), "image_size": 32, "features": FEATURES}
    expected = os.path.join(str(tmp_path), "models", "model.pt")
    with pytest.raises(SystemExit, match=f"{expected} not found: fine-tune first \\(configs/train.yaml\\)"):
        _workflow(overrides)
    assert os.listdir(tmp_path) == []


def test_model_not_fitting_the_network_is_rejected(model, overrides):
    with pytest.raises(SystemExit, match="does not fit network_def"):
        _workflow({**overrides, "features": [32, 32, 64, 128, 256, 32]})
    assert not os.path.exists(overrides["output_dir"])


def test_monai_label_ids_parse_without_datalist_or_model(tmp_path):
    """MONAI Label instantiates network_def, preprocessing, inferer and postprocessing alone on {"image": path}."""
    parser = ConfigParser()
    parser.read_config(config_path("inference.yaml"))
    parser.update({"bundle_root": str(tmp_path), "image_size": 32, "features": FEATURES})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, BasicUNet) and net.final_conv.out_channels == 2
    for name in ("preprocessing", "inferer", "postprocessing"):
        assert parser.get_parsed_content(name) is not None
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("num_workers, expected", [(0, "cuda:1"), (2, "cpu")])
def test_intensity_rule_runs_on_the_inference_device_unless_loader_workers(tmp_path, num_workers, expected):
    """The volume moves to the inference device just before the intensity rule (a GPU normalises it, not the CPU);
    with loader worker processes it stays on the CPU (CUDA cannot start in forked workers)."""
    parser = ConfigParser()
    parser.read_config(config_path("inference.yaml"))
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "image_size": 32,
            "features": FEATURES,
            "num_workers": num_workers,
            "device": "$torch.device('cuda:1')",
        }
    )
    chain = parser.get_parsed_content("preprocessing").transforms
    names = [type(t).__name__ for t in chain]
    move = chain[names.index("ModalityIntensityd") - 1]
    assert type(move).__name__ == "EnsureTyped" and list(move.keys) == ["image"]
    assert torch.device(move.converter.device) == torch.device(expected)
    assert names.index("LoadImaged") < names.index("Orientationd") < names.index("ModalityIntensityd")


def test_earlier_masks_are_kept_unless_overwrite_and_a_record_names_the_model(model, overrides):
    import json

    from bundle.files import sha256_file

    _run(overrides)
    out = overrides["output_dir"]
    record = json.load(open(os.path.join(out, "run_record.json")))
    model_file = os.path.join(overrides["ckpt_dir"], "model.pt")
    assert record["models"] == [{"file": model_file, "sha256": sha256_file(model_file), "record": None}]
    assert record["workflow"] == "inference" and record["settings"]["features"] == FEATURES
    assert record["settings"]["speed"] == {"amp": False, "group_norm_kernel": True}  # this run's numerics
    assert record["outputs"] == sorted(f for f in os.listdir(out) if f.endswith("_seg.nii.gz"))
    assert record["data"]["n_files"] == 2 and record["bundle_version"]
    masks = {f: open(os.path.join(out, f), "rb").read() for f in record["outputs"]}
    with pytest.raises(SystemExit, match=rf"{out} already holds the outputs of an earlier inference \(3 file\(s\): "):
        _workflow(overrides)
    _run({**overrides, "overwrite": True})
    (stamp,) = os.listdir(os.path.join(out, "previous"))
    kept = os.path.join(out, "previous", stamp)
    assert {f: open(os.path.join(kept, f), "rb").read() for f in masks} == masks
    assert os.path.isfile(os.path.join(kept, "run_record.json")) and os.path.isfile(
        os.path.join(out, "run_record.json")
    )


def _always_foreground(path: Path) -> None:
    """A network that predicts class 1 everywhere, even on empty input (its output bias decides), saved at ``path``."""
    net = _network()
    with torch.no_grad():
        net.final_conv.weight.zero_()
        net.final_conv.bias.copy_(torch.tensor([-5.0, 5.0]))
    os.makedirs(path.parent, exist_ok=True)
    torch.save(net.state_dict(), path)


@pytest.mark.parametrize(
    ("intensity", "empty", "inside"), [("mri", 0.0, (100.0, 900.0)), ("ct", -1000.0, (-150.0, 200.0))]
)
def test_mask_is_background_outside_the_input_foreground(overrides, tmp_path, intensity, empty, inside):
    # the network predicts the lesion everywhere; the mask must still stop at the input's foreground: non-zero
    # voxels (mri), voxels above the HU window's lower end (ct, whose background is -1 after the rule)
    _always_foreground(tmp_path / "models" / "model.pt")
    rng = np.random.default_rng(0)
    volume = np.full((32, 32, 4), empty, dtype=np.float32)
    volume[6:20, 8:28, 1:3] = rng.uniform(*inside, size=(14, 20, 2))
    image = str(tmp_path / f"scan_{intensity}.nii.gz")
    nib.save(nib.Nifti1Image(volume, np.eye(4)), image)
    user = {**overrides, "intensity": intensity, "dataset#data": [{"image": image}], "keep_largest": True}
    for foreground_only, out in ((True, "fg"), (False, "all")):
        _run({**user, "output_dir": str(tmp_path / out), "foreground_only": foreground_only})
    mask = np.asanyarray(nib.load(_mask_path(str(tmp_path / "fg"), image)).dataobj)
    np.testing.assert_array_equal(mask, (volume != empty).astype(np.uint8))
    assert np.asanyarray(nib.load(_mask_path(str(tmp_path / "all"), image)).dataobj).all()  # the network alone
    record = json.load(open(tmp_path / "fg" / "run_record.json"))
    assert record["settings"]["postprocessing"] == {"foreground_only": True, "keep_largest": True, "min_object_size": 0}


def test_postprocessing_switches_keep_the_largest_and_remove_small_objects():
    from monai.transforms import Compose

    from bundle.inference import segmentation_postprocessing

    image = torch.ones(1, 16, 16, 4)
    image[:, :, 12:] = 0  # the input's background: a band of empty space
    logits = torch.zeros(2, 16, 16, 4)
    logits[1, 1:7, 1:7, :] = 5  # a large object (144 voxels)
    logits[1, 9:11, 2:4, 1:3] = 5  # a small one (8 voxels)
    logits[1, 4:6, 13:15, :] = 5  # predicted in empty space

    def decide(**switches) -> torch.Tensor:
        chain = Compose(segmentation_postprocessing(2, 0.0, **switches))
        return chain({"pred": logits.clone(), "image": image})["pred"][0]

    large, small, outside = torch.zeros(16, 16, 4, dtype=torch.bool), torch.zeros(16, 16, 4, dtype=torch.bool), None
    large[1:7, 1:7, :], small[9:11, 2:4, 1:3] = True, True
    outside = torch.zeros(16, 16, 4, dtype=torch.bool)
    outside[4:6, 13:15, :] = True
    assert torch.equal(decide(foreground_only=False).bool(), large | small | outside)
    assert torch.equal(decide().bool(), large | small)
    assert torch.equal(decide(keep_largest=True).bool(), large)
    assert torch.equal(decide(min_object_size=9).bool(), large)
    assert torch.equal(decide(min_object_size=8).bool(), large | small)  # objects of at least min_object_size stay
    with pytest.raises(ValueError, match="min_object_size must be an integer >= 0"):
        segmentation_postprocessing(2, 0.0, min_object_size=-1)


@pytest.mark.parametrize("background", [0.0, -1.0])
def test_foreground_inferer_runs_only_the_foreground_box(background):
    from monai.data import MetaTensor

    from bundle.inference import OUTSIDE_LOGIT, ForegroundSliceInferer, slice_inferer

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 1)  # pointwise: every window position gives the same values
    windows = []
    net.register_forward_hook(lambda module, args, out: windows.append(args[0].shape[0]))
    volume = torch.full((1, 1, 40, 36, 10), background)
    volume[..., 5:20, 10:30, 2:6] = torch.rand(15, 20, 4) + 0.5
    volume = MetaTensor(volume, affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    plain = slice_inferer([16, 16], 4, background)(volume, net)
    n_plain, windows[:] = sum(windows), []
    cropper = slice_inferer([16, 16], 4, background, crop_to_foreground=True)
    assert isinstance(cropper, ForegroundSliceInferer)
    cropped = cropper(volume, net)
    assert sum(windows) < n_plain / 4  # 1 window per slice of 4 slices, against 9 windows per slice of 10
    assert isinstance(cropped, MetaTensor) and torch.equal(cropped.affine, volume.affine)
    assert cropped.shape == plain.shape == (1, 2, 40, 36, 10)
    # the foreground's box, widened in-plane to one window (15 rows -> 16), slices 2-5 only
    assert cropper.foreground_box(volume) == (slice(5, 21), slice(10, 30), slice(2, 6))
    box = (..., slice(5, 21), slice(10, 30), slice(2, 6))
    torch.testing.assert_close(cropped[box].as_tensor(), plain[box].as_tensor())
    outside = torch.ones(40, 36, 10, dtype=torch.bool)
    outside[5:21, 10:30, 2:6] = False
    assert bool((cropped[0, 0][outside] == 0).all()) and bool((cropped[0, 1][outside] == OUTSIDE_LOGIT).all())
    torch.testing.assert_close(cropper(volume, net), cropped)  # again: SliceInferer made its roi_size 3-D meanwhile


@pytest.mark.parametrize("foreground_only", [True, False])
def test_validation_and_inference_crop_to_the_foreground_with_foreground_only(foreground_only):
    from monai.inferers import SliceInferer

    from bundle.inference import ForegroundSliceInferer

    for config, inferer_id in (("train.yaml", "validate#inferer"), ("inference.yaml", "inferer")):
        parser = ConfigParser()
        parser.read_config(config_path(config))
        parser.update({"bundle_root": str(ROOT), "foreground_only": foreground_only, "background": 0.0})
        inferer = parser.get_parsed_content(inferer_id, instantiate=True)
        assert isinstance(inferer, SliceInferer)
        assert isinstance(inferer, ForegroundSliceInferer) == foreground_only, config


def test_channel_argmax_is_monai_asdiscrete_argmax():
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted, Orientationd

    from bundle.transforms import ChannelArgmaxd

    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 3, (4, 6, 5, 3), generator=generator).float()  # many ties between channels
    affine = torch.diag(torch.tensor([-2.0, 1.0, 3.0, 1.0]))
    pred = Orientationd(keys="pred", axcodes="RAS")({"pred": MetaTensor(values, affine=affine)})["pred"]
    expected = AsDiscreted(keys="pred", argmax=True)({"pred": pred})["pred"]
    out = ChannelArgmaxd(keys="pred")({"pred": pred})["pred"]
    assert out.shape == (1, 6, 5, 3) and out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), expected.as_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(out.affine, expected.affine)
    assert len(out.applied_operations) == len(expected.applied_operations) == 1  # Invertd can still undo them
    assert out.applied_operations[0]["class"] == "Orientation"
