# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Datalists for public datasets (``bundle/datasets.py``, ``scripts/prepare_datalist.py``) on fake dataset folders."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import pytest

from bundle.data import load_datalist
from bundle.datasets import (
    LABEL_CONVENTIONS,
    datalist_label_convention,
    detect_layout,
    prepare_datalist,
    region_label_map,
    scan_dataset,
    split_records,
    summary_text,
)
from conftest import ROOT
from layouts import make_brats2021, make_brats2023, make_hecktor, make_msd, make_pattern

BRATS_MISSING = {1: ["t2"], 3: ["seg"]}  # subject 002 has no T2, subject 004 no segmentation
PATTERNS = {
    "t1": "{subject}/{subject}_T1.nii.gz",
    "t2": "{subject}/{subject}_T2.nii.gz",
    "label": "labels/{subject}.nii.gz",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One fake folder per layout (BraTS 2018-2021 nested under HGG/LGG with two incomplete subjects)."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        "brats2021": make_brats2021(root / "MICCAI_BraTS2020_TrainingData", n_subjects=8, missing=BRATS_MISSING),
        "brats2023": make_brats2023(root / "ASNR-MICCAI-BraTS2023-GLI", n_subjects=6),
        "msd": make_msd(root / "Task01_BrainTumour", n_subjects=6),
        "hecktor": make_hecktor(root / "hecktor2022", n_subjects=6),
        "pattern": make_pattern(root / "mydata", n_subjects=4),
    }


def _scan_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_dataset(*args, **kwargs)


def _check_paths(records: list[dict], dataset_dir: str, keys: list[str]) -> None:
    for record in records:
        for key in keys:
            path = record[key]
            assert not os.path.isabs(path) and "\\" not in path, path
            assert os.path.isfile(os.path.join(dataset_dir, path)), path


def _touch(root: Path, *paths: str) -> Path:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")
    return root


# ---- layouts ----


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd", "hecktor"])
def test_detect_layout(folders, layout):
    assert detect_layout(folders[layout]) == layout


def test_detect_layout_errors(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no known dataset layout") as e:
        detect_layout(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and "--layout pattern --patterns" in str(e.value)
    for layout in ("brats2021", "brats2023", "msd", "hecktor"):
        assert layout in str(e.value)
    with pytest.raises(ValueError, match="no known dataset layout"):
        detect_layout(folders["pattern"])  # _T1/_T2 (upper case) is no BraTS naming
    with pytest.raises(FileNotFoundError, match="not_there"):
        detect_layout(tmp_path / "not_there")
    # as many BraTS 2021 as BraTS 2023 subjects: ambiguous
    mixed = tmp_path / "mixed"
    make_brats2021(mixed / "old", n_subjects=2, shape=(16, 16, 4), nested=False)
    make_brats2023(mixed / "new", n_subjects=2, shape=(16, 16, 4))
    with pytest.raises(ValueError, match="equally") as e:
        detect_layout(mixed)
    assert "--layout brats2021" in str(e.value) and "--layout brats2023" in str(e.value)
    assert scan_dataset(mixed, layout="brats2023")[0][0]["subject"] == "BraTS-GLI-00000-000"
    # one more BraTS 2023 subject decides
    make_brats2023(mixed / "new", n_subjects=3, shape=(16, 16, 4))
    assert detect_layout(mixed) == "brats2023"


def test_brats2021_nested_records_and_skipped_subjects(folders):
    root = folders["brats2021"]
    with pytest.warns(UserWarning, match="skipped 2 incomplete") as record:
        records, skipped = scan_dataset(root)
    message = str(record[0].message)
    assert "BraTS20_Training_002 (missing t2)" in message and "BraTS20_Training_004 (missing label)" in message
    assert skipped == {"BraTS20_Training_002": ["t2"], "BraTS20_Training_004": ["label"]}
    ids = [r["subject"] for r in records]
    assert ids == [f"BraTS20_Training_{i:03d}" for i in (1, 3, 5, 6, 7, 8)]  # sorted, incomplete ones left out
    keys = ["t1", "t1ce", "t2", "flair", "label"]
    for r in records:  # never half-included: every record has every key
        assert set(r) == {"subject", *keys}
        assert r["label"].endswith(f"{r['subject']}_seg.nii.gz") and r["t1"].endswith(f"{r['subject']}_t1.nii.gz")
    _check_paths(records, root, keys)
    # the recursive scan found the subjects of both HGG/ and LGG/
    assert {r["t1"].split("/")[0] for r in records} == {"HGG", "LGG"}


def test_brats2021_optional_label_and_modalities(folders):
    root = folders["brats2021"]
    records, skipped = _scan_quietly(root, require_label=False)
    by_id = {r["subject"]: r for r in records}
    assert skipped == {"BraTS20_Training_002": ["t2"]}
    assert "label" not in by_id["BraTS20_Training_004"] and "t2" in by_id["BraTS20_Training_004"]
    # the missing T2 does not matter when only FLAIR and T1 are asked for (aliases accepted, given order kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, skipped = scan_dataset(root, modalities="flair,t1n", require_label=False)
    assert skipped == {} and len(records) == 8
    assert all(list(r)[:3] == ["subject", "flair", "t1"] and "t2" not in r for r in records)
    with pytest.raises(ValueError, match="not image keys"):
        scan_dataset(root, modalities=["flair", "ct"])


def test_brats2023_keys_normalised(folders):
    root = folders["brats2023"]
    records, skipped = scan_dataset(root)
    assert skipped == {} and len(records) == 6
    suffixes = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "label": "seg"}
    for r in records:
        assert set(r) == {"subject", *suffixes}
        for key, suffix in suffixes.items():
            assert r[key] == f"{r['subject']}/{r['subject']}-{suffix}.nii.gz"
    _check_paths(records, root, list(suffixes))


def test_msd_channels_junk_and_test_images(folders):
    root = folders["msd"]
    assert os.path.isfile(os.path.join(root, "imagesTr", "._BRATS_001.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the junk file and imagesTs cause no warning
        records, skipped = scan_dataset(root)
    assert skipped == {} and [r["subject"] for r in records] == [f"BRATS_{i:03d}" for i in range(1, 7)]
    assert records[0] == {
        "subject": "BRATS_001",
        "flair": "imagesTr/BRATS_001.nii.gz",
        "t1": "imagesTr/BRATS_001.nii.gz",
        "t1ce": "imagesTr/BRATS_001.nii.gz",
        "t2": "imagesTr/BRATS_001.nii.gz",
        "label": "labelsTr/BRATS_001.nii.gz",
        "channels": {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3},
    }
    _check_paths(records, root, ["flair", "t1", "t1ce", "t2", "label"])
    assert nib.load(os.path.join(root, records[0]["t1"])).shape[-1] == 4  # the 4-D volume
    assert not any("._" in r["t1"] or "imagesTs" in r["t1"] for r in records)
    # imagesTs joins (unlabeled) when labels are optional; the channel map follows the modalities asked for
    records, _ = scan_dataset(root, modalities=["t2", "flair"], require_label=False)
    by_id = {r["subject"]: r for r in records}
    assert by_id["BRATS_900"] == {
        "subject": "BRATS_900",
        "t2": "imagesTs/BRATS_900.nii.gz",
        "flair": "imagesTs/BRATS_900.nii.gz",
        "channels": {"t2": 3, "flair": 0},
    }
    assert len(records) == 7


def test_hecktor_records(folders):
    root = folders["hecktor"]
    records, skipped = scan_dataset(root)
    assert skipped == {} and [r["subject"] for r in records] == [f"CHUM-{i:03d}" for i in range(1, 7)]
    for r in records:
        sid = r["subject"]
        assert r == {
            "subject": sid,
            "ct": f"imagesTr/{sid}__CT.nii.gz",
            "pet": f"imagesTr/{sid}__PT.nii.gz",
            "label": f"labelsTr/{sid}.nii.gz",
        }
    _check_paths(records, root, ["ct", "pet", "label"])
    ct, pet = nib.load(os.path.join(root, records[0]["ct"])), nib.load(os.path.join(root, records[0]["pet"]))
    assert ct.shape != pet.shape and (ct.affine[:3, 3] == pet.affine[:3, 3]).all()  # another grid, same origin


def test_pattern_layout(folders, tmp_path):
    root = folders["pattern"]
    records, skipped = scan_dataset(root, layout="pattern", patterns=PATTERNS)
    assert skipped == {} and [r["subject"] for r in records] == ["case00", "case01", "case02", "case03"]
    assert records[1] == {
        "subject": "case01",
        "t1": "case01/case01_T1.nii.gz",
        "t2": "case01/case01_T2.nii.gz",
        "label": "labels/case01.nii.gz",
    }
    _check_paths(records, root, ["t1", "t2", "label"])
    # the CLI's string form, and wildcards
    as_text = (
        "{'t1': '*/{subject}_T1.nii.*', 't2': '{subject}/{subject}_T?.nii.gz', 'label': 'labels/{subject}.nii.gz'}"
    )
    with pytest.raises(ValueError, match="same subject id was found more than once"):
        scan_dataset(root, layout="pattern", patterns=as_text)  # T? matches T1 and T2
    as_text = as_text.replace("_T?", "_T[2]")
    assert scan_dataset(root, layout="pattern", patterns=as_text)[0] == records
    # every {subject} of a pattern must be the same id; a subject missing a key is skipped
    odd = _touch(tmp_path / "odd", "a/a_T1.nii.gz", "a/a_T2.nii.gz", "b/c_T1.nii.gz", "b/b_T2.nii.gz")
    records, skipped = _scan_quietly(odd, layout="pattern", patterns=PATTERNS, require_label=False)
    assert [r["subject"] for r in records] == ["a"] and skipped == {"b": ["t1"]}
    with pytest.raises(ValueError, match="no 'label' entry"):
        scan_dataset(odd, layout="pattern", patterns={"t1": PATTERNS["t1"]})
    with pytest.raises(ValueError, match="containing"):
        scan_dataset(root, layout="pattern", patterns={"t1": "x/T1.nii.gz", "label": PATTERNS["label"]})
    with pytest.raises(ValueError, match="needs --patterns"):
        scan_dataset(root, layout="pattern")
    with pytest.raises(ValueError, match="relative"):
        scan_dataset(root, layout="pattern", patterns={"t1": "/abs/{subject}.nii.gz", "label": PATTERNS["label"]})


def test_duplicates_nii_and_hidden_files(tmp_path):
    sid = "BraTS2021_00001"
    files = [f"{sid}/{sid}_{m}.nii" for m in ("t1", "t1ce", "t2", "flair", "seg")]
    junk = [f".cache/{sid}_t1.nii.gz", f"{sid}/._{sid}_t2.nii", f"{sid}/._{sid}_seg.nii"]  # hidden, macOS junk
    root = _touch(tmp_path / "d", *files, *junk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the hidden files are not even incomplete subjects
        records, skipped = scan_dataset(root)  # plain .nii files
    assert skipped == {}
    assert records == [
        {
            "subject": sid,
            **{
                k: f"{sid}/{sid}_{m}.nii"
                for k, m in zip(("t1", "t1ce", "t2", "flair", "label"), ("t1", "t1ce", "t2", "flair", "seg"))
            },
        }
    ]
    _touch(root, f"copy/{sid}_t1.nii.gz")
    with pytest.raises(ValueError, match="more than once") as e:
        scan_dataset(root)
    assert f"{sid}/{sid}_t1.nii" in str(e.value) and f"copy/{sid}_t1.nii.gz" in str(e.value)
    assert _scan_quietly(root, modalities=["flair"])[0][0]["flair"] == f"{sid}/{sid}_flair.nii"  # t1 not needed
    # nothing complete: an error, not an empty datalist
    only_images = _touch(tmp_path / "e", f"{sid}/{sid}_t1.nii.gz", f"{sid}/{sid}_flair.nii.gz")
    with pytest.raises(ValueError, match="no complete subject"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan_dataset(only_images, layout="brats2021")
    assert f"{sid} (missing t1ce, t2, label)" in str(caught[0].message)


# ---- split ----


def _records(n: int, unlabeled: int = 0) -> list[dict]:
    labeled = [{"subject": f"s{i:02d}", "t1": f"s{i:02d}.nii.gz", "label": f"l{i:02d}.nii.gz"} for i in range(n)]
    return labeled + [{"subject": f"u{i:02d}", "t1": f"u{i:02d}.nii.gz"} for i in range(unlabeled)]


def _ids(split: dict) -> dict[str, list[str]]:
    return {section: [r["subject"] for r in records] for section, records in split.items()}


def test_split_seeded_disjoint_and_order_independent():
    records = _records(20)
    split = _ids(split_records(records, val_fraction=0.1, test_fraction=0.2, seed=0))
    assert [len(split[s]) for s in ("training", "validation", "testing")] == [14, 2, 4]
    all_ids = split["training"] + split["validation"] + split["testing"]
    assert sorted(all_ids) == sorted(r["subject"] for r in records)  # disjoint and covering
    assert all(ids == sorted(ids) for ids in split.values())
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    assert _ids(split_records(shuffled, 0.1, 0.2, 0)) == split  # independent of the listing order
    assert _ids(split_records(records, 0.1, 0.2, 1)) != split
    # no testing / validation at fraction 0; at least one subject for a small fraction
    assert _ids(split_records(records, 0.0, 0.0, 0)) == {"training": sorted(all_ids), "validation": [], "testing": []}
    small = _ids(split_records(_records(5), 0.05, 0.05, 0))
    assert (len(small["training"]), len(small["validation"]), len(small["testing"])) == (3, 1, 1)
    with pytest.raises(ValueError, match="too few"):
        split_records(_records(2), 0.1, 0.2, 0)
    with pytest.raises(ValueError, match="< 1"):
        split_records(records, 0.5, 0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_records(records, -0.1, 0.2, 0)


def test_split_unlabeled_go_to_training():
    split = _ids(split_records(_records(10, unlabeled=4), 0.2, 0.2, 0))
    assert {f"u{i:02d}" for i in range(4)} <= set(split["training"])
    assert (len(split["validation"]), len(split["testing"])) == (2, 2)  # fractions of the 10 labeled subjects
    assert not any(s.startswith("u") for s in split["validation"] + split["testing"])


def test_split_exclusions(tmp_path):
    records = _records(12)
    excluded = {"s03", "s07"}
    text = tmp_path / "exclude.txt"
    text.write_text("# failed QC\ns03\n\ns07  # motion\n")
    as_json = tmp_path / "exclude.json"
    as_json.write_text(json.dumps(sorted(excluded)))
    splits = [split_records(records, 0.1, 0.2, 0, exclude=e) for e in (sorted(excluded), str(text), as_json, "s03,s07")]
    for split in splits:
        ids = _ids(split)
        assert ids == _ids(splits[0])
        assert sorted(sum(ids.values(), [])) == sorted({r["subject"] for r in records} - excluded)
    with pytest.warns(UserWarning, match="not found in the dataset.*nobody"):
        split = split_records(records, 0.1, 0.2, 0, exclude=["s03", "nobody"])
    assert "s03" not in sum(_ids(split).values(), [])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        split_records(records, 0.1, 0.2, 0, exclude=str(tmp_path / "missing.txt"))


# ---- label conventions ----


def test_region_label_maps():
    assert region_label_map("brats2021", "tc") == {1: 1, 2: 0, 4: 1}
    assert region_label_map("brats2021", "wt") == {1: 1, 2: 1, 4: 1}
    assert region_label_map("brats2023", "tc") == {1: 1, 2: 0, 3: 1}
    assert region_label_map("brats2023", "et") == {1: 0, 2: 0, 3: 1}
    assert region_label_map("msd", "tc") == {1: 0, 2: 1, 3: 1}
    assert region_label_map("hecktor", "gtvp") == {1: 1, 2: 0}
    assert region_label_map("hecktor", "gtv") == {1: 1, 2: 1}
    assert region_label_map("hecktor", "tumour") == {1: 1, 2: 0}
    stored = {"name": "brats2021", "labels": {"1": "a", "2": "b", "4": "c"}, "regions": {"tc": [1, 4]}}
    assert region_label_map(stored, "TC") == {1: 1, 2: 0, 4: 1}
    with pytest.raises(ValueError, match="'et', 'tc', 'wt'"):
        region_label_map("msd", "gtvp")
    with pytest.raises(ValueError, match="known: .*brats2021"):
        region_label_map("brats2099", "wt")


def test_prepare_datalist_and_label_convention(folders, tmp_path):
    out = tmp_path / "lists" / "brats2023.json"
    datalist = prepare_datalist(folders["brats2023"], out, seed=1)
    on_disk = json.loads(out.read_text())
    assert on_disk == datalist
    assert list(on_disk)[:9] == [
        "name",
        "layout",
        "modalities",
        "label_convention",
        "seed",
        "test_fraction",
        "val_fraction",
        "require_label",
        "excluded",
    ]
    assert on_disk["name"] == "ASNR-MICCAI-BraTS2023-GLI" and on_disk["layout"] == "brats2023"
    assert on_disk["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert [len(on_disk[s]) for s in ("training", "validation", "testing")] == [4, 1, 1]
    conv = datalist_label_convention(out)
    assert conv == {
        "name": "brats2023",
        "labels": {"1": "NETC", "2": "SNFH", "3": "ET"},
        "regions": {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]},
    }
    assert region_label_map(conv, "tc") == region_label_map("brats2023", "tc")
    # the bundle's loader resolves the relative paths against dataset_dir
    keys = ["t1", "t1ce", "t2", "flair", "label"]
    loaded = load_datalist(out, folders["brats2023"], keys, sections=("training", "validation", "testing"))
    assert sorted(r["subject"] for s in loaded.values() for r in s) == sorted(
        r["subject"] for r in scan_dataset(folders["brats2023"])[0]
    )
    # never overwritten silently
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="brats2023.json"):
        prepare_datalist(folders["brats2023"], out, seed=2)
    assert out.read_bytes() == before
    again = prepare_datalist(folders["brats2023"], out, seed=2, overwrite=True)
    assert json.loads(out.read_text())["seed"] == 2 and again["seed"] == 2
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]


def test_prepare_datalist_conventions_of_each_layout(folders, tmp_path):
    for layout in ("brats2021", "msd", "hecktor"):
        out = tmp_path / f"{layout}.json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datalist = prepare_datalist(folders[layout], out, exclude=["BraTS20_Training_004", "CHUM-002"])
        conv = datalist_label_convention(out)
        assert conv["name"] == layout == datalist["layout"]
        assert conv["labels"] == {str(v): n for v, n in LABEL_CONVENTIONS[layout]["labels"].items()}
        assert conv["regions"] == LABEL_CONVENTIONS[layout]["regions"]
    brats = json.loads((tmp_path / "brats2021.json").read_text())
    assert brats["skipped"] == {"BraTS20_Training_002": ["t2"]} and brats["excluded"] == ["BraTS20_Training_004"]
    assert sum(len(brats[s]) for s in ("training", "validation", "testing")) == 6
    assert json.loads((tmp_path / "hecktor.json").read_text())["excluded"] == ["CHUM-002"]
    # pattern: the user's labels (or none)
    datalist = prepare_datalist(
        folders["pattern"], tmp_path / "p.json", layout="pattern", patterns=PATTERNS, labels="{1: 'lesion'}"
    )
    assert datalist["label_convention"] == {
        "name": "custom",
        "labels": {"1": "lesion"},
        "regions": {"foreground": [1], "lesion": [1]},
    }
    assert region_label_map(datalist_label_convention(tmp_path / "p.json"), "lesion") == {1: 1}
    prepare_datalist(folders["pattern"], tmp_path / "q.json", layout="pattern", patterns=PATTERNS)
    with pytest.raises(ValueError, match="q.json.*--label_map"):
        datalist_label_convention(tmp_path / "q.json")
    with pytest.raises(ValueError, match="only used with --layout pattern"):
        prepare_datalist(folders["msd"], tmp_path / "r.json", labels={1: "x"})


def test_datalist_label_convention_errors(tmp_path):
    demo = tmp_path / "datalist.json"
    demo.write_text(json.dumps({"label_convention": "demo", "training": []}))
    with pytest.raises(ValueError, match=r"datalist\.json.*--label_map"):
        datalist_label_convention(demo)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        datalist_label_convention(tmp_path / "nothing.json")


def test_summary_text(folders, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datalist = prepare_datalist(
            folders["brats2021"], tmp_path / "d.json", require_label=False, exclude=["BraTS20_Training_001"]
        )
    text = summary_text(datalist)
    assert "dataset: MICCAI_BraTS2020_TrainingData (layout brats2021)" in text
    assert "subjects: 6 (training 4 of which 1 without label, validation 1, testing 1)" in text
    assert "modalities: t1, t1ce, t2, flair" in text
    assert "label convention: brats2021" in text and "4 enhancing tumour (ET)" in text and "tc [1, 4]" in text
    assert "skipped (incomplete): 1: BraTS20_Training_002 (missing t2)" in text
    assert "excluded: 1: BraTS20_Training_001" in text


# ---- the command line ----


def test_cli(folders, tmp_path, capsys):
    script = os.path.join(str(ROOT), "scripts", "prepare_datalist.py")
    out = tmp_path / "hecktor_datalist.json"
    done = subprocess.run(
        [sys.executable, script, "--dataset_dir", folders["hecktor"], "--output", str(out), "--seed", "3"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "dataset: hecktor2022 (layout hecktor)" in done.stdout
    assert "subjects: 6 (training 4, validation 1, testing 1)" in done.stdout
    assert "label convention: hecktor" in done.stdout and str(out) in done.stdout
    assert "configs/hecktor.yaml" in done.stdout and "configs/pretrain.yaml" in done.stdout
    datalist = json.loads(out.read_text())
    assert datalist["layout"] == "hecktor" and datalist["seed"] == 3 and datalist["modalities"] == ["ct", "pet"]

    # the error path in-process (the CLI's own main; one subprocess above suffices for the fire wiring)
    from scripts.prepare_datalist import main

    with pytest.raises(SystemExit) as stopped:
        main(dataset_dir=str(tmp_path / "nowhere"), output=str(tmp_path / "x.json"))
    stderr = capsys.readouterr().err
    assert stopped.value.code == 1
    assert stderr.strip().splitlines()[-1].startswith("ERROR: dataset folder not found")
    assert "Traceback" not in stderr and not (tmp_path / "x.json").exists()
