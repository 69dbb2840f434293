"""Modality translation (configs/translate.yaml): outputs in the input's space and scale, both directions, the exact
generator computation, user-given volumes, and clear errors."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import BasicUNet

from bundle.files import sha256_file
from bundle.handlers import GeneratorExportHandler
from bundle.networks import MultiConDoSGenerators
from bundle.records import DEFAULT_SETTINGS, fingerprint, load_generators, preprocessing_record, record_path
from conftest import ROOT, TINY_NET, config_path, run_workflow

CLIP = 5.0


@pytest.fixture(scope="module")
def generators_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A generators.pt as the pre-training writes it (GeneratorExportHandler), random tiny generators of 32x32."""
    torch.manual_seed(0)
    # PyTorch's default init (not N(0, 0.02)) so that the untrained generators give clearly non-constant images
    generators = MultiConDoSGenerators(features=TINY_NET["features"], projection_dim=16, init_std=None)
    path = str(tmp_path_factory.mktemp("translate_ckpt") / "generators.pt")
    settings = {**DEFAULT_SETTINGS, "image_size": 32, "intensity_clip": CLIP}
    handler = GeneratorExportHandler(generators, path, preprocessing_record(settings, ["t1", "t2"], ["t1", "t2"]))
    handler(types.SimpleNamespace(state=types.SimpleNamespace(epoch=3, iteration=30)))
    return path


@pytest.fixture()
def overrides(tiny_dataset: dict[str, str], generators_file: str, tmp_path: Path) -> dict:
    return {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": os.path.dirname(generators_file),
        "output_dir": str(tmp_path / "translate"),
        "device": "$torch.device('cpu')",
        "batch_size": 4,
    }


def _translate(overrides: dict) -> ConfigWorkflow:
    return run_workflow(config_path("translate.yaml"), overrides)


def _testing_files(tiny_dataset: dict[str, str], key: str) -> list[str]:
    with open(tiny_dataset["data_list_file_path"]) as f:
        testing = json.load(f)["testing"]
    return [os.path.join(tiny_dataset["dataset_dir"], r[key]) for r in testing]


def _stem(path: str) -> str:
    return os.path.basename(path)[: -len(".nii.gz")]


def _expected_translation(volume: np.ndarray, state: dict, generator: str, z: int) -> np.ndarray:
    """Slice ``z`` translated by a plain BasicUNet + tanh on the pre-training normalisation, mapped back."""
    x = torch.from_numpy(volume.astype(np.float32))
    fg = x != 0
    mean, std = x[fg].mean(), x[fg].std(unbiased=False)
    normed = torch.where(fg, (x - mean) / std, torch.zeros(())).clamp(-CLIP, CLIP) / CLIP
    weights, record = load_generators(state)
    net = BasicUNet(**record["network"]["args"])
    net.load_state_dict(weights[generator])
    net.eval()
    with torch.no_grad():
        y = torch.tanh(net(normed[None, None, :, :, z]))[0, 0]
    return torch.where(fg[:, :, z], y * CLIP * std + mean, torch.zeros(())).numpy()


def _check_output(src: str, out: str) -> tuple[np.ndarray, np.ndarray]:
    ref, syn = nib.load(src), nib.load(out)
    assert syn.shape == ref.shape
    np.testing.assert_allclose(syn.affine, ref.affine, atol=1e-5)
    assert syn.get_data_dtype() == np.float32
    x, y = np.asarray(ref.dataobj, dtype=np.float32), np.asarray(syn.dataobj)
    fg = x != 0
    assert fg.any() and (~fg).any()
    assert np.all(y[~fg] == 0)  # zero outside the input's foreground
    # on the input's scale: y in [-1, 1] maps into mean +- clip * std of the input's non-zero voxels
    mean, std = x[fg].mean(), x[fg].std()
    assert y[fg].min() >= mean - CLIP * std - 1e-2 and y[fg].max() <= mean + CLIP * std + 1e-2
    assert abs(y[fg].mean() - mean) < CLIP * std and y[fg].std() > 0
    return x, y


@pytest.mark.parametrize(
    ("direction", "source", "target", "generator"), [("a_to_b", "t1", "t2", "g_ab"), ("b_to_a", "t2", "t1", "g_ba")]
)
def test_translates_testing_volumes_in_input_space(
    overrides, tiny_dataset, generators_file, direction, source, target, generator, capsys
):
    wf = _translate({**overrides, "direction": direction})
    out_dir = overrides["output_dir"]
    # the run says which generator of which file writes where (logging.conf's handler writes to stdout)
    printed = capsys.readouterr().out
    assert f"with {generator.upper()} of {generators_file}" in printed and os.path.abspath(out_dir) in printed
    sources = _testing_files(tiny_dataset, source)
    expected = sorted(f"{_stem(s)}_synthetic_{target}.nii.gz" for s in sources)
    # one output per testing subject, named after the source file, and the record of what produced them
    assert sorted(os.listdir(out_dir)) == sorted([*expected, "run_record.json"])
    record = json.load(open(os.path.join(out_dir, "run_record.json")))
    assert record["workflow"] == "translation" and record["outputs"] == expected
    assert record["settings"]["direction"] == direction and record["fingerprint"] == fingerprint(record["settings"])
    assert record["settings"]["speed"] == {"amp": False, "group_norm_kernel": True}
    assert record["models"] == [
        {"file": generators_file, "sha256": sha256_file(generators_file), "record": record_path(generators_file)}
    ]
    assert record["data"]["n_files"] == len(sources)
    assert wf.parser.get_parsed_content("source_modality") == source
    state = generators_file
    for src in sources:
        x, y = _check_output(src, os.path.join(out_dir, f"{_stem(src)}_synthetic_{target}.nii.gz"))
        # the SliceInferer roi is the full 32x32 slice: the output is the generator's own computation
        z = int(np.argmax((x != 0).sum(axis=(0, 1))))
        np.testing.assert_allclose(y[:, :, z], _expected_translation(x, state, generator, z), rtol=1e-4, atol=1e-2)


def test_user_volume_replaces_the_datalist(overrides, tmp_path):
    """dataset#data with one absolute path: a non-square, oblique volume larger (and smaller) than the 32x32 roi."""
    rng = np.random.default_rng(0)
    volume = np.zeros((44, 24, 3), dtype=np.float32)
    volume[4:40, 3:21] = rng.uniform(100.0, 400.0, size=(36, 18, 3))
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.8 * c, -1.2 * s, 0, 10.0], [0.8 * s, 1.2 * c, 0, -5.0], [0, 0, 3.0, 2.0], [0, 0, 0, 1]])
    src = str(tmp_path / "subject_flair.nii.gz")
    nib.save(nib.Nifti1Image(volume, affine), src)
    one_slice = str(tmp_path / "one_slice_flair.nii.gz")  # 44x24x1: its output stays 3-D (issue 14)
    nib.save(nib.Nifti1Image(volume[:, :, 1:2].copy(), affine), one_slice)
    no_datalist = str(tmp_path / "no_such_datalist.json")  # the datalist is not read when dataset#data is given
    records = [{"image": src}, {"image": one_slice}]
    _translate({**overrides, "data_list_file_path": no_datalist, "dataset#data": records})
    outputs = ["one_slice_flair_synthetic_t2.nii.gz", "subject_flair_synthetic_t2.nii.gz"]
    assert sorted(os.listdir(overrides["output_dir"])) == sorted([*outputs, "run_record.json"])
    for path, out in zip((one_slice, src), outputs):
        _check_output(path, os.path.join(overrides["output_dir"], out))  # shapes included
    # a second translation into the folder is refused before anything runs; --overwrite True moves the earlier aside
    earlier = {n: open(os.path.join(overrides["output_dir"], n), "rb").read() for n in os.listdir(overrides["output_dir"])}
    again = {**overrides, "data_list_file_path": no_datalist, "dataset#data": records[:1]}
    with pytest.raises(SystemExit, match="already holds the outputs of an earlier translation \\(3 file"):
        _translate(again)
    _translate({**again, "overwrite": True})
    (stamp,) = os.listdir(os.path.join(overrides["output_dir"], "previous"))
    moved = os.path.join(overrides["output_dir"], "previous", stamp)
    assert {n: open(os.path.join(moved, n), "rb").read() for n in os.listdir(moved)} == earlier
    assert sorted(os.listdir(overrides["output_dir"])) == sorted([outputs[1], "previous", "run_record.json"])


def test_missing_generators_file_says_to_pretrain_first(overrides, tmp_path):
    missing = str(tmp_path / "empty_ckpt")
    with pytest.raises(
        SystemExit, match=r"generators file not found: .*empty_ckpt/generators\.pt\. Run the pre-training"
    ):
        _translate({**overrides, "ckpt_dir": missing})
    assert not os.path.exists(overrides["output_dir"])


@pytest.mark.parametrize("direction", ["c_to_d", "A_TO_B"])
def test_bad_direction_is_rejected(overrides, direction):
    with pytest.raises(SystemExit, match=rf"direction must be 'a_to_b' .* or 'b_to_a' .*, got '{direction}'"):
        _translate({**overrides, "direction": direction})
    assert not os.path.exists(overrides["output_dir"])


def test_missing_user_volume_is_reported(overrides, tmp_path):
    missing = str(tmp_path / "missing_t1.nii.gz")
    with pytest.raises(SystemExit, match=r"dataset#data\[0\]: input volume not found: .*missing_t1\.nii\.gz"):
        _translate({**overrides, "dataset#data": [{"image": missing}]})


def test_modalities_override_names_the_datalist_keys(overrides, tiny_dataset, tmp_path):
    """A datalist that names the modalities differently: --modalities picks its keys, outputs use the B name."""
    with open(tiny_dataset["data_list_file_path"]) as f:
        content = json.load(f)
    renamed = {
        section: [
            {
                "subject": r["subject"],
                **{
                    new: os.path.join(tiny_dataset["dataset_dir"], r[old])
                    for old, new in (("t1", "T1w"), ("t2", "T2w"))
                },
            }
            for r in content[section]
        ]
        for section in ("training", "testing")
    }
    datalist = tmp_path / "renamed.json"
    datalist.write_text(json.dumps(renamed))
    renamed_run = {**overrides, "data_list_file_path": str(datalist), "modalities": ["T1w", "T2w"]}
    with pytest.raises(SystemExit, match=r"modalities: given \['T1w', 'T2w'\], .*generators.json has \['t1', 't2'\]"):
        _translate(renamed_run)  # other names than the generators were trained on: a conflict, named
    assert not os.path.exists(overrides["output_dir"])
    _translate({**renamed_run, "force_settings": True, "intensity": "mri"})
    assert sorted(os.listdir(overrides["output_dir"])) == sorted(
        [*(f"{_stem(s)}_synthetic_T2w.nii.gz" for s in _testing_files(tiny_dataset, "t1")), "run_record.json"]
    )


def test_inputs_with_the_same_file_name_are_rejected(overrides, tiny_dataset, tmp_path):
    src = _testing_files(tiny_dataset, "t1")[0]
    copy = tmp_path / "other" / os.path.basename(src)
    copy.parent.mkdir()
    copy.write_bytes(Path(src).read_bytes())
    with pytest.raises(SystemExit, match="have the same file name; their outputs would overwrite each other"):
        _translate({**overrides, "dataset#data": [{"image": src}, {"image": str(copy)}]})


def test_translates_with_the_generators_of_a_real_pretraining(tiny_generators, overrides, tiny_dataset):
    """generators.pt from configs/pretrain.yaml (conftest's tiny 1-epoch pre-training) drives translation as is."""
    _translate({**overrides, "ckpt_dir": os.path.dirname(tiny_generators)})
    state = tiny_generators
    record = load_generators(state)[1]
    assert record["preprocessing"]["modalities"] == ["t1", "t2"] and record["preprocessing"]["image_size"] == [32, 32]
    sources = _testing_files(tiny_dataset, "t1")
    assert len(os.listdir(overrides["output_dir"])) == len(sources) + 1  # and run_record.json
    for src in sources:
        x, y = _check_output(src, os.path.join(overrides["output_dir"], f"{_stem(src)}_synthetic_t2.nii.gz"))
        z = int(np.argmax((x != 0).sum(axis=(0, 1))))
        np.testing.assert_allclose(y[:, :, z], _expected_translation(x, state, "g_ab", z), rtol=1e-4, atol=1e-2)
