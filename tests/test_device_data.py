"""The device cache and its batched samplers (bundle/device_data.py) against the configs' per-sample chains."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset
from monai.transforms import Compose, Rotate

from bundle import batch_augmentation, device_data
from bundle.batch_augmentation import BatchAugmentation
from bundle.demo_data import generate_demo_dataset
from bundle.device_data import LabelSliceSampler, PairedSliceSampler
from conftest import config_path, make_workflow, run_workflow, scratch_finetune_overrides, tiny_overrides

SIZE = 32


def _config_transforms(config: str, *ids: str, **overrides) -> list:
    """The configs' own transforms (no workflow: nothing is read)."""
    parser = ConfigParser()
    parser.read_config(config_path(config))
    for key, value in {"image_size": SIZE, "pretrained_ckpt": "$None", "inherit_model_record": False, **overrides}.items():
        parser[key] = value
    return [t for i in ids for t in parser.get_parsed_content(i)]


def _after_cache(transforms: list) -> list:
    """The transforms after the cache (from UncachedCastd on), as the dataset applies them to a cached item."""
    names = [type(t).__name__ for t in transforms]
    return transforms[names.index("UncachedCastd") :]


def _paired_volumes() -> list[dict]:
    """Compact pre-training volumes: t1 = subject * 32 + slice + 1 everywhere, t2 = -t1; foreground patterns that
    tell the weighting rules apart (centre voxel, off-centre only, none)."""
    volumes = []
    for s, depth in enumerate((6, 9, 4, 7, 5)):
        z = torch.arange(depth, dtype=torch.float16) + s * 32 + 1
        t1 = z.view(1, 1, 1, -1).expand(1, SIZE, SIZE, depth).clone()
        fg = torch.zeros(1, SIZE, SIZE, depth, dtype=torch.uint8)
        if s < 4:
            fg[0, 10:20, 10:20, 1::2] = 1  # around the centre voxel (16, 16): odd slices
            fg[0, :5, :5, 0] = 1  # a corner only: never weighted by RandWeightedCropd
            fg[0, 10:20, 10:20, -1] = 1  # the last slice: outside MONAI's valid range
        volumes.append({"t1": t1, "t2": -t1, "foreground": fg})  # s = 4: no foreground at all (uniform)
    return volumes


def _ids(values: torch.Tensor) -> list[tuple[int, int]]:
    """(subject, slice) of each t1 value subject * 32 + slice + 1."""
    v = values.round().long() - 1
    return list(zip((v // 32).tolist(), (v % 32).tolist()))


def _distribution(slices: list[int]) -> dict[int, float]:
    return {z: c / len(slices) for z, c in Counter(slices).items()}


def _total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _config_crop(transforms: list, name: str, num_samples: int):
    """The config's crop transform, drawing ``num_samples`` crop centres per call (its ``randomize`` only: the
    centres are the decision compared here; cropping them one by one would take seconds)."""
    crop = next(t for t in transforms if type(t).__name__ == name)
    crop.set_random_state(0)
    crop.cropper.num_samples = num_samples
    return crop.cropper


def test_pretraining_sampler_draws_one_weighted_slice_per_subject_like_the_config_chain():
    volumes = _paired_volumes()
    transforms = _config_transforms("pretrain.yaml", "train#slice_transforms", "train#augmentation")
    cropper = _config_crop(transforms, "RandWeightedCropd", 600)
    host = []
    for v in volumes:
        cropper.randomize(weight_map=v["foreground"].float())
        host.append(_distribution([int(c[2]) for c in cropper.centers]))
    sampler = PairedSliceSampler(volumes, ["t1", "t2"], batch_size=2, device="cpu", augmentation=transforms[-2:])
    assert len(sampler) == 2  # 5 subjects, batches of 2, the incomplete one dropped
    drawn: list[tuple[int, int]] = []
    for _ in range(750):
        for batch in sampler:
            assert batch["t1"].shape == (2, 1, SIZE, SIZE) and batch["t1"].dtype == torch.float32
            ids = _ids(batch["t1"][:, 0, 0, 0])
            assert ids[0][0] != ids[1][0]  # one slice per subject
            drawn += ids
    subjects = Counter(s for s, _ in drawn)
    assert set(subjects) == set(range(5)) and min(subjects.values()) > 500  # shuffled per pass, 4 of 5 per pass
    for s in range(5):
        p, q = host[s], _distribution([z for t, z in drawn if t == s])
        support = set(range(1, volumes[s]["t1"].shape[-1] - 1, 2)) if s < 4 else {0, 1, 2, 3}
        assert set(q) == set(p) == support, (s, p, q)  # centre voxel weighted; last slice never; uniform if empty
        assert _total_variation(p, q) < 0.08, (s, p, q)


def test_pretraining_flips_are_shared_by_both_modalities():
    ramp = ((torch.arange(SIZE).view(-1, 1) * SIZE + torch.arange(SIZE)) / 1024).to(torch.float16)
    volumes = [
        {"t1": ramp.view(1, SIZE, SIZE, 1).expand(1, SIZE, SIZE, 3).clone(),
         "foreground": torch.ones(1, SIZE, SIZE, 3, dtype=torch.uint8)}
        for _ in range(4)
    ]
    for v in volumes:
        v["t2"] = -v["t1"]  # B = f(A) voxel by voxel: only a flip of one modality alone can break it
    flips = _config_transforms("pretrain.yaml", "train#augmentation")
    sampler = PairedSliceSampler(volumes, ["t1", "t2"], batch_size=4, device="cpu", augmentation=flips, seed=3)
    corners = Counter()
    for _ in range(25):
        batch = next(iter(sampler))
        assert torch.equal(batch["t2"], -batch["t1"])
        for a in batch["t1"][:, 0]:
            corners[divmod(int(a.flatten().argmin()), SIZE)] += 1  # where the ramp's origin went
    assert set(corners) == {(0, 0), (0, SIZE - 1), (SIZE - 1, 0), (SIZE - 1, SIZE - 1)}  # each flip combination
    assert min(corners.values()) > 10


def _label_volumes() -> list[dict]:
    """Fine-tuning volumes: image = subject * 32 + slice + 1, labels of different areas per slice."""
    volumes = []
    for s, depth in enumerate((8, 6, 5)):
        z = torch.arange(depth, dtype=torch.float16) + s * 32 + 1
        label = torch.zeros(1, SIZE, SIZE, depth, dtype=torch.uint8)
        if s < 2:
            label[0, 4:12, 4:12, 1] = 1
            label[0, :, :, 2] = 2  # a slice all label: never a negative
            label[0, 0:3, 0:3, 3] = 1
        volumes.append({"image": z.view(1, 1, 1, -1).expand(1, SIZE, SIZE, depth).clone(), "label": label})
    return volumes  # subject 2: no label (negatives only)


def test_finetuning_sampler_balances_positives_and_negatives_like_the_config_chain():
    volumes = _label_volumes()
    cropper = _config_crop(_config_transforms("train.yaml", "train#crop_transforms"), "RandCropByPosNegLabeld", 600)
    host = []
    for v in volumes:
        cropper.randomize(label=v["label"].float())  # UncachedCastd's float32 (a uint8 label counts all as background)
        host.append([int(c[2]) for c in cropper.centers])
    sampler = LabelSliceSampler(volumes, batch_size=8, samples_per_subject=4, device="cpu", pos=1, neg=1)
    assert len(sampler) == 2  # 2 subjects per batch, the last batch smaller (no drop_last, as the DataLoader)
    drawn: list[tuple[int, int]] = []
    positive = {s: [] for s in range(3)}
    for _ in range(300):
        sizes = []
        for batch in sampler:
            sizes.append(batch["image"].shape[0])
            assert batch["label"].shape == batch["image"].shape and batch["label"].dtype == torch.float32
            ids = _ids(batch["image"][:, 0, 0, 0])
            assert all(ids[i][0] == ids[i - i % 4][0] for i in range(len(ids)))  # 4 slices per subject
            drawn += ids
            for (s, _), has_label in zip(ids, batch["label"].flatten(1).amax(1).gt(0).tolist()):
                positive[s].append(has_label)
        assert sorted(sizes) == [4, 8]
    for s in range(3):
        p, q = _distribution(host[s]), _distribution([z for t, z in drawn if t == s])
        assert _total_variation(p, q) < 0.08, (s, p, q)
        label_slices = {z for z in range(volumes[s]["label"].shape[-1]) if volumes[s]["label"][..., z].any()}
        host_positive = np.mean([z in label_slices for z in host[s]])
        assert abs(host_positive - np.mean(positive[s])) < 0.06, (s, host_positive, np.mean(positive[s]))
    assert np.mean(positive[2]) == 0 and 0.5 < np.mean(positive[0]) < 0.8  # pos 1 : neg 1, plus negatives in labels
    with pytest.raises(ValueError, match="crop_pos and crop_neg"):
        LabelSliceSampler(volumes, 8, 4, "cpu", pos=0, neg=0)


def _windowed_volumes() -> list[dict]:
    """Fine-tuning volumes larger in-plane than the SIZE window, of three sizes; every image voxel holds its own
    code ((subject * 16 + slice) * 64 + row) * 64 + column, so a window tells where it was cut from."""
    volumes = []
    for s, (h, w, depth) in enumerate(((40, 48, 6), (SIZE + 4, SIZE, 5), (SIZE, 45, 4))):
        z, y, x = torch.meshgrid(torch.arange(depth), torch.arange(h), torch.arange(w), indexing="ij")
        code = (((s * 16 + z) * 64 + y) * 64 + x).permute(1, 2, 0).float()
        label = torch.zeros(1, h, w, depth, dtype=torch.uint8)
        label[0, h - 6 : h - 1, 2:9, 1:3] = 1  # near a corner: its centres need moving inwards
        label[0, 10:14, w - 3 :, 3] = 2
        volumes.append({"image": code[None], "label": label})
    return volumes


def _window_origin(window: torch.Tensor) -> tuple[int, int, int, int]:
    """(subject, slice, row, column) of a window's first voxel (``_windowed_volumes``' codes)."""
    code = int(window[0, 0].round())
    return code // (16 * 64 * 64), code // (64 * 64) % 16, code // 64 % 64, code % 64


def test_finetuning_sampler_crops_windows_like_the_config_chain():
    volumes = _windowed_volumes()
    cropper = _config_crop(_config_transforms("train.yaml", "train#crop_transforms"), "RandCropByPosNegLabeld", 1200)
    host = []
    for v in volumes:
        cropper.randomize(label=v["label"].float())
        host.append([(int(c[2]), int(c[0]) - SIZE // 2, int(c[1]) - SIZE // 2) for c in cropper.centers])
    sampler = LabelSliceSampler(volumes, 8, 4, "cpu", pos=1, neg=1, seed=1, spatial_size=(SIZE, SIZE))
    drawn = {s: [] for s in range(3)}
    for _ in range(300):
        for batch in sampler:
            assert batch["image"].shape[1:] == (1, SIZE, SIZE) == batch["label"].shape[1:]
            for image, label in zip(batch["image"][:, 0], batch["label"][:, 0]):
                s, z, y, x = _window_origin(image)
                volume = volumes[s]
                # a whole window of one slice of the subject's own voxels (never the padding), label aligned
                assert torch.equal(image, volume["image"][0, y : y + SIZE, x : x + SIZE, z])
                assert torch.equal(label, volume["label"][0, y : y + SIZE, x : x + SIZE, z].float())
                drawn[s].append((z, y, x))
    for s in range(3):
        assert len(drawn[s]) == 1200
        for axis in range(3):  # slice, row and column of the window: the same distributions as MONAI's
            p = _distribution([c[axis] for c in host[s]])
            q = _distribution([c[axis] for c in drawn[s]])
            assert _total_variation(p, q) < 0.08, (s, axis, p, q)  # sampling noise at 1200 draws: about 0.05
    assert {y for _, y, _ in drawn[0]} == set(range(40 - SIZE + 1))  # every row the window can start at
    with pytest.raises(ValueError, match=r"fine-tuning volume 1 is \(36, 32\) in-plane, smaller than the \(40, 40\)"):
        LabelSliceSampler(volumes, 8, 4, "cpu", spatial_size=(40, 40))


@pytest.mark.parametrize("mode,padding", [("bilinear", "border"), ("nearest", "zeros")])
@pytest.mark.parametrize("align_corners", [False, True])
def test_batched_rotation_equals_monai_rotate(mode, padding, align_corners):
    x = torch.rand(3, 1, SIZE, SIZE + 4, generator=torch.Generator().manual_seed(0))
    angle = torch.tensor([0.2, -0.25, 0.3])
    out = batch_augmentation._rotate(x, angle, torch.tensor([True, True, False]), mode, padding, align_corners)
    for i in range(2):  # each sample with its own angle
        rotate = Rotate(float(angle[i]), keep_size=True, mode=mode, padding_mode=padding, align_corners=align_corners)
        torch.testing.assert_close(out[i], torch.as_tensor(rotate(x[i])), atol=1e-5, rtol=0)
    assert torch.equal(out[2], x[2])  # not drawn: unchanged


def _quadrant_means(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.stack([x[..., :h, :h].mean(), x[..., :h, h:].mean(), x[..., h:, :h].mean(), x[..., h:, h:].mean()])


def test_batched_augmentation_matches_the_config_chain_in_distribution():
    augmentation = _config_transforms("train.yaml", "train#augmentation")
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    image = ((yy + 3 * xx) / (4 * SIZE)).float().view(1, SIZE, SIZE) + 0.5  # asymmetric, non-zero background
    label = ((yy - 8) ** 2 + (xx - 20) ** 2 < 36).float().view(1, SIZE, SIZE)
    host = Compose(augmentation).set_random_state(0)
    outs = [host({"image": image.clone(), "label": label.clone()}) for _ in range(150)]
    n = 2000
    batch = {"image": image.expand(n, 1, SIZE, SIZE).clone(), "label": label.expand(n, 1, SIZE, SIZE).clone()}
    out = BatchAugmentation(augmentation)(batch, torch.Generator().manual_seed(1))
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}  # nearest for labels
    for key, tolerance in (("image", 0.04), ("label", 0.02)):
        host_x = torch.stack([torch.as_tensor(o[key]) for o in outs])
        # each flip moves mass between quadrants, rotations and intensity changes move the rest
        assert (_quadrant_means(host_x) - _quadrant_means(out[key])).abs().max() < tolerance, key
        assert abs(float(host_x.std() - out[key].std())) < tolerance, key
    changed = (out["image"] != batch["image"]).flatten(1).any(1).float().mean()
    assert 0.95 < changed < 0.99  # 1 - 0.5**5 of the samples draw at least one change
    with pytest.raises(ValueError, match="RandGaussianNoised has no batched form"):
        from monai.transforms import RandGaussianNoised

        BatchAugmentation([RandGaussianNoised(keys="image")])


def test_sampler_state_round_trip_continues_the_same_batches():
    volumes = _paired_volumes()
    flips = _config_transforms("pretrain.yaml", "train#augmentation")
    a = PairedSliceSampler(volumes, ["t1", "t2"], batch_size=2, device="cpu", augmentation=flips, seed=5)
    it = iter(a)
    next(it)  # mid-pass: the state holds the pass in progress
    state = a.state_dict()
    expected = [next(it)["t1"]] + [b["t1"] for b in a]  # rest of this pass, then a new one
    b = PairedSliceSampler(volumes, ["t1", "t2"], batch_size=2, device="cpu", augmentation=flips, seed=99)
    b.load_state_dict(state)
    got = [x["t1"] for x in b] + [x["t1"] for x in b]
    assert len(got) == len(expected) == 3 and all(torch.equal(g, e) for g, e in zip(got, expected))


def test_device_cache_decision(monkeypatch):
    with pytest.raises(ValueError, match="device_cache must be auto, True or False, got 'yes'"):
        device_data.check_device_cache("yes")
    # CPU: auto is off, nothing read, unless every volume is in a memory cache (the stacked copy is then as small)
    assert device_data.device_volumes("auto", "cpu", None, ["t1"]) is None
    assert device_data.device_volumes(False, "cpu", None, ["t1"]) is None
    partly = CacheDataset(_paired_volumes(), Compose([]), cache_rate=0.4, progress=False)
    assert device_data.device_volumes("auto", "cpu", partly, ["t1", "t2"]) is None
    full = CacheDataset(_paired_volumes(), Compose([]), progress=False)
    assert len(device_data.device_volumes("auto", "cpu", full, ["t1", "t2"])) == 5
    assert len(device_data.device_volumes("auto", "cpu", full, ["t1", "t2"], in_plane=(SIZE, SIZE))) == 5
    # pre-training's sampler draws whole cached slices: volumes of another in-plane size than image_size keep the
    # per-sample loader under auto and are refused under True, naming the sizes
    mixed = _paired_volumes()
    mixed[1] = {k: torch.cat([v, v[:, :7]], dim=1) for k, v in mixed[1].items()}
    mixed_cache = CacheDataset(mixed, Compose([]), progress=False)
    assert device_data.device_volumes("auto", "cpu", mixed_cache, ["t1", "t2"], in_plane=(SIZE, SIZE)) is None
    with pytest.raises(ValueError, match=rf"2 in-plane size\(s\) \[\({SIZE}, {SIZE}\), \({SIZE + 7}, {SIZE}\)\]"):
        device_data.device_volumes(True, "cpu", mixed_cache, ["t1", "t2"], in_plane=(SIZE, SIZE))
    monkeypatch.setattr(device_data, "_available_memory", lambda device: 1000)  # host memory too small: off
    assert device_data.device_volumes("auto", "cpu", full, ["t1", "t2"]) is None
    with pytest.raises(MemoryError, match=r"need 0\.1 MiB on cpu.*free 0 MiB"):
        device_data.device_volumes(True, "cpu", full, ["t1", "t2"])
    monkeypatch.undo()

    class _Cached:
        transform = Compose([])
        data = _paired_volumes()

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100_000, 200_000))
    with pytest.raises(MemoryError, match=r"need 0\.1 MiB on cuda.*free 0 MiB"):
        device_data.device_volumes(True, "cuda", _Cached(), ["t1", "t2"])
    assert device_data.device_volumes("auto", "cuda", _Cached(), ["t1", "t2"]) is None  # does not fit: off
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**9, 2 * 10**9))
    assert len(device_data.device_volumes("auto", "cuda", _Cached(), ["t1", "t2"])) == 5


def test_padding_with_each_modality_background_on_both_paths(tiny_dataset, tmp_path):
    overrides = tiny_overrides(tiny_dataset, tmp_path, image_size=40, intensity={"t1": "mri", "t2": "ct"},
                               device_cache=True, val_fraction=0.25)
    wf = make_workflow(config_path("pretrain.yaml"), overrides, run_id="training")
    device = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    host = next(iter(wf.parser.get_parsed_content("train#host_dataloader")))
    assert isinstance(wf.parser.get_parsed_content("train#dataloader"), PairedSliceSampler)
    for batch in (device, host):
        border = torch.cat([batch[k][..., :4].flatten() for k in ("t1", "t2")]).view(2, -1)
        assert torch.all(border[0] == 0) and torch.all(border[1] == -1)  # mri 0, ct -1 (32 -> 40: 4 each side)
        assert batch["t2"].gt(-1).any()


def test_pretraining_with_device_cache_completes_and_resume_restores_the_sampler(pretrain_overrides):
    common = {**pretrain_overrides, "epochs": 2, "save_interval": 1, "val_interval": 2, "device_cache": True}
    # "crash" after epoch 1 (2 of the 3 batches of a pass): its sampler then holds what an uninterrupted run draws next
    first = run_workflow(config_path("pretrain.yaml"), {**common, "train#trainer#max_epochs": 1}, run_id="training")
    sampler = first.parser.get_parsed_content("train#dataloader")
    assert isinstance(sampler, PairedSliceSampler) and len(sampler) == 3
    expected = [next(iter(sampler)), next(iter(sampler))]  # the pass's last batch, then a new pass's first
    state = torch.load(os.path.join(common["ckpt_dir"], "checkpoints", "checkpoint_epoch=1.pt"), weights_only=True)
    assert state["sampler"]["cursor"] == 2 and state["sampler"]["generator"].dtype == torch.uint8
    record = json.load(open(os.path.join(common["ckpt_dir"], "run_config.json")))
    assert record["settings"]["device_cache"] is True

    resumed = run_workflow(config_path("pretrain.yaml"), {**common, "resume": True}, run_id="training")
    output = resumed.parser.get_parsed_content("train#trainer").state.output  # the last batch of epoch 2
    assert torch.equal(output["a"], expected[1]["t1"]) and torch.equal(output["b"], expected[1]["t2"])


def test_finetuning_with_device_cache_completes(tmp_path):
    # 48x48 heads cropped to their foreground (wider than the 32x32 windows, of several sizes): the sampler crops
    dataset = {"dataset_dir": str(tmp_path / "data")}
    dataset["data_list_file_path"] = generate_demo_dataset(dataset["dataset_dir"], 6, 1, shape=(48, 48, 16), seed=0)
    overrides = scratch_finetune_overrides(dataset, tmp_path / "models", tmp_path / "out", device_cache=True,
                                           image_size=32)
    wf = run_workflow(config_path("train.yaml"), overrides)
    sampler = wf.parser.get_parsed_content("train#dataloader")
    assert isinstance(sampler, LabelSliceSampler) and sampler.crop and sampler.window == (32, 32)
    assert len(sampler.extent.unique(dim=0)) > 1 and next(iter(sampler))["image"].shape == (4, 1, 32, 32)
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    assert os.path.isfile(tmp_path / "models" / "model.pt")
    assert json.load(open(tmp_path / "models" / "run_config.json"))["settings"]["device_cache"] is True
