"""Real-dataset layouts through the bundle: presets merged on the workflow configs, one batch of paired slices per
layout, the per-modality intensity rules, 4-D MSD channels, CT/PET on different grids, compact caching and
inference back in the input's space."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureTyped

import layouts
from bundle.data import cached_dataset
from bundle.datasets import prepare_datalist
from bundle.records import load_generators, read_record
from bundle.transforms import (
    ModalityIntensityd,
    ResizeWithBackgroundd,
    SelectChanneld,
    UncachedCastd,
    background_value,
    check_preprocessing,
)
from conftest import ROOT, TINY_NET, config_path, make_workflow, run_workflow, tiny_overrides

PRESET = {"brats2021": "brats.yaml", "brats2023": "brats.yaml", "msd": "brats.yaml", "hecktor": "hecktor.yaml"}
MAKERS = {
    "brats2021": layouts.make_brats2021,
    "brats2023": layouts.make_brats2023,
    "msd": layouts.make_msd,
    "hecktor": layouts.make_hecktor,
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """One small fake folder per layout and its datalist (6 subjects: 4 training, 1 validation, 1 testing)."""
    out = {}
    for layout, make in MAKERS.items():
        root = make(tmp_path_factory.mktemp(layout), n_subjects=6)
        datalist = os.path.join(str(tmp_path_factory.mktemp(f"{layout}_list")), "datalist.json")
        prepare_datalist(root, datalist, test_fraction=0.2, val_fraction=0.2, seed=0)
        out[layout] = {"dataset_dir": str(root), "data_list_file_path": datalist}
    return out


@pytest.mark.parametrize("layout", list(MAKERS))
def test_one_batch_of_paired_slices_per_layout(layout: str, datasets: dict, tmp_path: Path) -> None:
    wf = make_workflow(
        [config_path("pretrain.yaml"), config_path(PRESET[layout])], tiny_overrides(datasets[layout], tmp_path)
    )
    keys = wf.parser.get_parsed_content("modality_keys")
    assert keys == (["ct", "pet"] if layout == "hecktor" else ["flair", "t2"])
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    a, b = batch[keys[0]], batch[keys[1]]
    assert a.shape == b.shape == (2, 1, 32, 32) and a.dtype == b.dtype == torch.float32
    for image in (a, b):
        assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.05
    assert not torch.equal(a, b)
    # the cache holds cropped, compact volumes: float16 images and a uint8 mask
    cached = wf.parser.get_parsed_content("train#dataset")._cache[0]
    assert cached[keys[0]].dtype == torch.float16 and cached["foreground"].dtype == torch.uint8
    assert cached[keys[0]].shape == cached[keys[1]].shape == cached["foreground"].shape
    assert cached[keys[0]].shape[1:3] == (32, 32)
    val = next(iter(wf.parser.get_parsed_content("validate#dataloader")))
    assert val[keys[0]].dtype == torch.float32 and val[keys[0]].shape[1:] == (1, 32, 32)


def test_ct_and_pet_background_is_minus_one_and_the_air_is_cropped(datasets: dict, tmp_path: Path) -> None:
    wf = make_workflow(
        [config_path("pretrain.yaml"), config_path("hecktor.yaml")], tiny_overrides(datasets["hecktor"], tmp_path)
    )
    item = wf.parser.get_parsed_content("train#dataset")._cache[0]
    ct, pet, mask = item["ct"].float(), item["pet"].float(), item["foreground"].bool()
    assert torch.all(ct[~mask] == -1.0) and torch.all(pet[~mask] == -1.0)  # outside the body: air / no uptake
    assert ct[mask].max() > -1.0 and pet.max() > 0.5  # tissue in the HU window, the hot spot
    # the PET (a coarser grid) was resampled onto the CT grid, then both to 1 mm in-plane
    assert wf.parser.get_parsed_content("resampled_keys") == ["pet"]


def test_different_grids_are_an_input_error_without_resample_to(datasets: dict, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="differs from 'ct'"):
        make_workflow(
            [config_path("pretrain.yaml"), config_path("hecktor.yaml")],
            tiny_overrides(datasets["hecktor"], tmp_path, resample_to="$None"),
        )


@pytest.mark.parametrize(
    ("layout", "region", "expected"), [("brats2021", "tc", {1: 1, 2: 0, 4: 1}), ("msd", "tc", {1: 0, 2: 1, 3: 1})]
)
def test_fine_tuning_region_through_the_label_convention(
    layout: str, region: str, expected: dict, datasets: dict, tmp_path: Path
) -> None:
    overrides = tiny_overrides(datasets[layout], tmp_path, region=region, pretrained_ckpt="$None", batch_size=4)
    overrides.update(samples_per_subject=2)
    wf = make_workflow([config_path("train.yaml"), config_path("brats.yaml")], overrides)
    assert wf.parser.get_parsed_content("label_map") == expected
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == batch["label"].shape == (4, 1, 32, 32)
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    cached = wf.parser.get_parsed_content("train#dataset")._cache[0]
    assert cached["image"].dtype == torch.float16 and cached["label"].dtype == torch.uint8
    assert cached["image"].shape == (1, 32, 32, 12)  # cropped in-plane only: every axial slice stays
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    # validation: whole volumes (not cropped), the channel of a 4-D MSD file
    val = next(iter(wf.parser.get_parsed_content("validate#dataloader")))
    assert val["image"].shape[:2] == (1, 1) and val["image"].shape[2:] == val["label"].shape[2:]
    assert val["label"].max() == 1


def test_select_channel_of_a_4d_file() -> None:
    image = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 3, 3, 2).clone()
    out = SelectChanneld(["flair", "t2"])({"flair": image, "t2": image, "channels": {"flair": 0, "t2": 3}})
    assert "channels" not in out and out["flair"].shape == (1, 3, 3, 2)
    assert torch.all(out["flair"] == 0) and torch.all(out["t2"] == 3)
    with pytest.raises(ValueError, match="4 channels but the record gives no channel index for 'flair'"):
        SelectChanneld("flair")({"flair": image})
    with pytest.raises(ValueError, match="channel index 7"):
        SelectChanneld("flair")({"flair": image, "channels": {"flair": 7}})
    single = torch.ones(1, 3, 3, 2)
    assert SelectChanneld("flair")({"flair": single})["flair"] is single


def test_intensity_rules() -> None:
    ct = torch.tensor([[-1000.0, -200.0, 25.0, 250.0, 1200.0]])
    pet = torch.tensor([[0.0, 5.0, 10.0, 30.0]])
    mri = torch.tensor([[0.0, 0.0, 100.0, 200.0, 300.0]])
    out = ModalityIntensityd(["ct", "pet", "mri"], {"ct": "ct", "pet": "pet", "mri": "mri"}, ct_window=(-200, 250))(
        {"ct": ct, "pet": pet, "mri": mri}
    )
    np.testing.assert_allclose(out["ct"].numpy(), [[-1.0, -1.0, 0.0, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(out["pet"].numpy(), [[-1.0, 0.0, 1.0, 1.0]], atol=1e-6)
    z = (np.array([100.0, 200.0, 300.0]) - 200.0) / np.std([100.0, 200.0, 300.0])
    np.testing.assert_allclose(out["mri"].numpy(), [[0.0, 0.0, *(z / 5.0)]], atol=1e-6)  # background stays 0
    assert background_value("mri") == 0.0 and background_value({"image": "ct"}) == -1.0
    with pytest.raises(ValueError, match="unknown intensity rule 'xray'"):
        ModalityIntensityd("a", "xray")
    with pytest.raises(ValueError, match="names no rule for modality 'pet'"):
        check_preprocessing(["ct", "pet"], {"ct": "ct"})
    with pytest.raises(ValueError, match="resample_to must be one of"):
        check_preprocessing(["ct", "pet"], "mri", resample_to="mr")
    with pytest.raises(ValueError, match="spacing must be null or three numbers"):
        check_preprocessing(["ct", "pet"], "mri", spacing=[1.0, 1.0])


def test_padding_uses_each_modality_background() -> None:
    data = {"ct": -torch.ones(1, 2, 2, 1) * 0.5, "mask": torch.ones(1, 2, 2, 1)}
    out = ResizeWithBackgroundd(["ct", "mask"], (4, 4, -1), {"ct": -1.0})(data)
    assert out["ct"].shape == (1, 4, 4, 1)
    assert out["ct"][0, 0, 0, 0] == -1.0 and out["ct"][0, 1, 1, 0] == -0.5
    assert out["mask"][0, 0, 0, 0] == 0.0 and out["mask"].sum() == 4


def test_compact_cache_memory_and_disk(tmp_path: Path) -> None:
    records = [{"image": np.full((1, 4, 4, 3), i, np.float64)} for i in range(3)]
    transform = Compose([EnsureTyped("image", dtype=torch.float16, track_meta=False), UncachedCastd("image")])
    memory = cached_dataset(records, transform, {"cache": "memory"})
    assert isinstance(memory, CacheDataset) and memory._cache[0]["image"].dtype == torch.float16  # compact cache
    assert memory[2]["image"].dtype == torch.float32 and float(memory[2]["image"].max()) == 2.0
    disk = cached_dataset(records, transform, {"cache": "disk", "cache_dir": tmp_path / "cache"})
    assert [float(disk[i]["image"].max()) for i in range(3)] == [0.0, 1.0, 2.0]
    assert disk[0]["image"].dtype == torch.float32
    cached = [torch.load(f, weights_only=True) for f in sorted((tmp_path / "cache").glob("*.pt"))]
    assert len(cached) == 3 and all(c["image"].dtype == torch.float16 for c in cached)
    assert cached_dataset(records, transform, {"cache": "none"})[1]["image"].dtype == torch.float32
    with pytest.raises(ValueError, match="needs a cache_dir"):
        cached_dataset(records, transform, {"cache": "disk"})
    with pytest.raises(ValueError, match="cache must be 'memory', 'disk' or 'none'"):
        cached_dataset(records, transform, {"cache": "ram"})


def test_pretrain_finetune_inference_on_a_brats_folder(datasets: dict, tmp_path: Path) -> None:
    """The BraTS preset end to end on the LPS-oriented BraTS layout; the masks come back in the input's space."""
    dataset = datasets["brats2021"]
    run_workflow(
        [config_path("pretrain.yaml"), config_path("brats.yaml")],
        tiny_overrides(dataset, tmp_path, ckpt_dir=str(tmp_path / "models" / "pretrain"), epoch_length=2),
    )
    generators = tmp_path / "models" / "pretrain" / "generators.pt"
    record = load_generators(generators)[1]["preprocessing"]
    assert record["intensity"] == {"flair": "mri", "t2": "mri"} and record["orientation"] == "RAS"
    finetune = tiny_overrides(
        dataset, tmp_path, ckpt_dir=str(tmp_path / "models"), pretrained_ckpt=str(generators), epoch_length=2
    )
    # fine-tuning must preprocess its input as the pre-training did (no domain shift between the stages)
    with pytest.raises(
        SystemExit,
        match=r"intensity_clip: given 3.0, .*generators.json has 5.0; orientation: given 'LPS', .*generators.json has 'RAS'",
    ):
        make_workflow(
            [config_path("train.yaml"), config_path("brats.yaml")],
            {**finetune, "intensity_clip": 3.0, "orientation": "LPS"},
        )
    run_workflow(
        [config_path("train.yaml"), config_path("brats.yaml")], {**finetune, "output_dir": str(tmp_path / "t")}
    )
    assert (tmp_path / "models" / "model.pt").is_file()
    run_workflow(
        [config_path("train.yaml"), config_path("evaluate.yaml"), config_path("brats.yaml")],
        {**finetune, "output_dir": str(tmp_path / "e")},
    )
    rows = (tmp_path / "e" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("BraTS20_Training_")  # the one testing subject, by file name
    out_dir = tmp_path / "inference"
    run_workflow(
        [config_path("inference.yaml"), config_path("brats.yaml")],
        {**finetune, "output_dir": str(out_dir), "features": TINY_NET["features"]},
    )
    masks = sorted(out_dir.glob("*_seg.nii.gz"))
    assert len(masks) == 1
    source = next(Path(dataset["dataset_dir"]).rglob(masks[0].name.replace("_flair_seg", "_flair")))
    mask, image = nib.load(masks[0]), nib.load(source)
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)  # LPS in, LPS out


def test_hecktor_models_run_with_the_plain_configs(datasets: dict, tmp_path: Path) -> None:
    """CT/PET with the HECKTOR preset (PET onto the CT grid, 1 mm in-plane): the generators translate CT to PET in SUV
    with plain translate.yaml, and a model fine-tuned with the preset segments with plain inference.yaml exactly as
    with the preset."""
    dataset, preset = datasets["hecktor"], config_path("hecktor.yaml")
    pre_dir = tmp_path / "models" / "pretrain"
    run_workflow([config_path("pretrain.yaml"), preset], tiny_overrides(dataset, tmp_path, ckpt_dir=str(pre_dir)))
    translated = tmp_path / "translate"
    run_workflow(
        config_path("translate.yaml"),
        {"bundle_root": str(ROOT), **dataset, "ckpt_dir": str(pre_dir), "output_dir": str(translated)},
    )
    outputs = sorted(translated.glob("*_synthetic_pet.nii.gz"))
    assert len(outputs) == 1
    source = next(Path(dataset["dataset_dir"]).rglob(outputs[0].name.replace("_synthetic_pet", "")))
    suv, ct = nib.load(outputs[0]), nib.load(source)
    assert suv.shape == ct.shape  # in the CT's space, the resampling inverted
    values = np.asarray(suv.dataobj)
    assert values.min() >= 0.0 and values.max() <= 10.0  # the pet rule inverted: SUV in pet_range

    finetune = tiny_overrides(
        dataset, tmp_path, ckpt_dir=str(tmp_path / "models"), pretrained_ckpt=str(pre_dir / "generators.pt")
    )
    run_workflow([config_path("train.yaml"), preset], {**finetune, "output_dir": str(tmp_path / "t")})
    record = read_record(tmp_path / "models" / "model.pt", required=True)["preprocessing"]
    assert record["intensity"] == {"ct": "ct"} and record["spacing"] == [1.0, 1.0, -1.0]  # not the defaults
    masks = {}
    for name, configs in (("plain", [config_path("inference.yaml")]), ("preset", [config_path("inference.yaml"), preset])):
        out = tmp_path / name
        run_workflow(configs, {**finetune, "output_dir": str(out)})
        masks[name] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}
    assert masks["plain"] and masks["plain"].keys() == masks["preset"].keys()
    assert all(np.array_equal(masks["plain"][k], masks["preset"][k]) for k in masks["plain"])
