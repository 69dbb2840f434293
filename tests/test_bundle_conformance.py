"""MONAI Model Zoo conformance: metadata against the schema (offline), required files, large_files.yml, run ids,
Train/InferProperties, network in/out shapes, TorchScript export, imports from elsewhere, file sizes and the
submission zip (scripts/export_bundle.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata
from monai.networks.nets import BasicUNet

from conftest import ROOT, TINY_NET, config_path

META = config_path("metadata.json")
LOGGING = config_path("logging.conf")
INFERENCE = config_path("inference.yaml")
TRAIN = config_path("train.yaml")
#: the public MONAI schema (github.com/Project-MONAI/MONAI-extra-test-data, release 0.8.1), committed so that CI
#: validates offline; verify_metadata checks this md5 before using it
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
CONFIGS = ("pretrain.yaml", "train.yaml", "evaluate.yaml", "inference.yaml", "translate.yaml")
REQUIRED_FILES = (
    "LICENSE",
    "README.md",
    "requirements.txt",
    "large_files.yml",
    "configs/metadata.json",
    "configs/inference.yaml",
    "configs/train.yaml",
    "configs/evaluate.yaml",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "bundle/__init__.py",
    "scripts/__init__.py",
)
MAX_COMMITTED_BYTES = 1024 * 1024  # the Model Zoo's check-added-large-files --maxkb=1024


def _meta() -> dict:
    with open(META) as f:
        return json.load(f)


def _parser(config_file) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_file)
    return parser


def _git_files(*args: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


# ---- metadata.json ----


def test_metadata_verifies_offline_against_the_committed_schema():
    meta = _meta()
    assert meta["schema"].rsplit("/", 1)[-1] == SCHEMA.name  # the schema the metadata names is the one we ship
    verify_metadata(meta_file=META, filepath=str(SCHEMA), hash_val=SCHEMA_MD5, hash_type="md5")


def test_committed_schema_is_the_shared_copy():
    shared = ROOT.parent / "shared" / "spec" / "schemas" / SCHEMA.name
    if not shared.is_file():
        pytest.skip("../shared is not present (a clean clone)")
    assert SCHEMA.read_bytes() == shared.read_bytes()


def test_version_changelog_and_pins_match_requirements():
    meta = _meta()
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta["version"] in meta["changelog"]
    assert "optional_packages_version" not in meta  # deprecated since MONAI 1.4 (schema 20240725)
    with open(ROOT / "requirements.txt") as f:
        pins = dict(line.strip().split("==") for line in f if "==" in line)
    assert pins["monai"] == meta["monai_version"]
    assert pins["torch"] == meta["pytorch_version"]
    assert pins["numpy"] == meta["numpy_version"]
    required = meta["required_packages_version"]
    for package in ("nibabel", "pytorch-ignite", "fire", "tensorboard", "tqdm", "pillow"):  # imports and handlers
        assert package in required, package
    for package, version in required.items():
        assert pins.get(package) == version, f"{package}: metadata {version}, requirements.txt {pins.get(package)}"
    for key in ("name", "task", "description", "authors", "copyright", "data_source", "references"):
        assert meta[key], key
    assert "research" in meta["intended_use"].lower() and "not for clinical" in meta["intended_use"].lower()
    assert any("Multi-ConDoS" in r and "10.1109/TMI.2023.3290356" in r for r in meta["references"])


def test_network_data_format_describes_the_inference_network_def():
    fmt = _meta()["network_data_format"]
    parser = _parser(INFERENCE)
    args = {**parser.get("network_def"), "out_channels": parser.get_parsed_content("network_def#out_channels")}
    assert args["_target_"] == "BasicUNet"
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]  # MONAI Label takes the first keys
    assert len(image["spatial_shape"]) == args["spatial_dims"] == 2 == len(pred["spatial_shape"])
    assert image["spatial_shape"] == pred["spatial_shape"] == ["32*n", "32*n"]
    assert image["num_channels"] == args["in_channels"] == len(image["channel_def"]) == 1
    assert pred["num_channels"] == args["out_channels"] == parser.get_parsed_content("model_num_classes") == 2
    assert image["dtype"] == pred["dtype"] == "float32"
    assert pred["channel_def"] == {"0": "background", "1": "lesion"}  # MONAI Label's labels: {"lesion": 1}
    post = fmt["post_processed_outputs"]["pred"]
    assert post["num_channels"] == 1 and len(post["spatial_shape"]) == 3 and post["dtype"] == "uint8"


@pytest.mark.parametrize("n", [1, 2])
def test_verify_net_in_out_network_def(n):
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFERENCE, device="cpu", n=n)


def test_generator_and_discriminator_data_formats():
    from bundle.networks import MultiConDoSGenerators

    meta = _meta()
    # the generator: translate.yaml's network_def (BasicUNet + tanh) with pre-training's constructor arguments,
    # checked by verify_net_in_out against generator_data_format
    network_args = MultiConDoSGenerators(features=TINY_NET["features"]).network_args
    overrides = {
        "generator_record": {"network": {"args": network_args}},
        "_meta_#network_data_format": meta["generator_data_format"],
    }
    for n in (1, 2):
        verify_net_in_out("network_def", META, config_path("translate.yaml"), device="cpu", n=n, **overrides)
    gen = meta["generator_data_format"]
    assert gen["inputs"]["image"]["num_channels"] == gen["outputs"]["pred"]["num_channels"] == 1
    assert gen["outputs"]["pred"]["value_range"] == [-1, 1]  # tanh
    # the discriminator (PatchDiscriminator returns every layer's output: the last one is the patch logits)
    disc = meta["discriminator_data_format"]
    parser = _parser(config_path("pretrain.yaml"))
    net = parser.get_parsed_content("discriminator_def").eval()
    assert len(disc["inputs"]["image"]["spatial_shape"]) == len(disc["outputs"]["pred"]["spatial_shape"]) == 2
    for n in (1, 2):
        with torch.no_grad():
            out = net(torch.rand(1, disc["inputs"]["image"]["num_channels"], 32 * n, 32 * n))[-1]
        assert out.shape == (1, disc["outputs"]["pred"]["num_channels"], 4 * n - 2, 4 * n - 2)
        assert disc["outputs"]["pred"]["spatial_shape"] == ["4*n-2", "4*n-2"]


# ---- files ----


def test_required_files_exist():
    missing = [f for f in REQUIRED_FILES if not (ROOT / f).is_file()]
    assert not missing


def test_large_files_yml_declares_the_weights():
    with open(ROOT / "large_files.yml") as f:
        entries = yaml.safe_load(f)["large_files"]
    assert ConfigParser.load_config_file(str(ROOT / "large_files.yml"))["large_files"] == entries  # MONAI reads it
    version = _meta()["version"]
    assert "models/model.pt" in [e["path"] for e in entries]
    for e in entries:
        assert set(e) == {"path", "url", "hash_val", "hash_type"}
        assert e["url"].startswith("https://github.com/") and f"/releases/download/v{version}/" in e["url"]
        assert e["url"].endswith("/" + os.path.basename(e["path"]))
        assert e["hash_type"] in ("md5", "sha1", "sha256", "sha512")
        lengths = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
        assert e["hash_val"] == "" or re.fullmatch(f"[0-9a-f]{{{lengths[e['hash_type']]}}}", e["hash_val"])
    if (ROOT / ".git").exists() and shutil.which("git"):  # downloaded, never committed
        paths = [e["path"] for e in entries]
        ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
        assert sorted(ignored.stdout.split()) == sorted(paths), "declared large files must be git-ignored"


def test_no_committed_file_over_1_mb_and_no_weights_in_git():
    files = _git_files("--cached", "--others", "--exclude-standard")  # committed + would-be-committed
    sizes = {f: (ROOT / f).stat().st_size for f in files if (ROOT / f).is_file()}
    assert not {f: s for f, s in sizes.items() if s > MAX_COMMITTED_BYTES}
    assert not [f for f in files if f.endswith((".pt", ".ts", ".pth", ".nii", ".nii.gz"))]


def test_every_config_defines_run_and_pretrain_keeps_training():
    for name in CONFIGS:
        config = ConfigParser.load_config_file(config_path(name))  # evaluate.yaml is an overlay: read, not parsed
        assert isinstance(config.get("run"), list) and config["run"], name
        assert isinstance(config.get("initialize"), list), name
        assert "finalize" in config, name
    assert ConfigParser.load_config_file(config_path("pretrain.yaml"))["training"] == "%run"


def test_docs_follow_the_model_zoo_readme_template():
    text = (ROOT / "docs" / "README.md").read_text()
    headings = re.findall(r"^##+ (.+)$", text, flags=re.M)
    for section in (
        "Model overview",
        "Data",
        "Training configuration",
        "Performance",
        "MONAI bundle commands",
        "References",
        "License",
    ):
        assert section in headings, section
    assert "PERFORMANCE_PLACEHOLDER" not in text
    for config in CONFIGS:
        assert f"configs/{config}" in text, config
    for phrase in ("verify_metadata", "verify_net_in_out", "ckpt_export", "export_bundle.py", "large_files.yml"):
        assert phrase in text, phrase
    assert "MONAI Label" in text and "demo data only" in text
    assert "doi:10.1109/TMI.2023.3290356" in text


# ---- workflows ----


def test_train_config_has_the_train_properties(tiny_dataset, tmp_path):
    overrides = {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "out"),
        "default_pretrained_ckpt": str(tmp_path / "none" / "generators.pt"),  # scratch, with the warning
        "image_size": 32,
        "features": TINY_NET["features"],
    }
    wf = ConfigWorkflow(config_file=TRAIN, meta_file=META, logging_file=LOGGING, workflow_type="train", **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.max_epochs == wf.parser.get_parsed_content("epochs")
    assert isinstance(wf.network_def, BasicUNet)


def test_inference_config_has_the_infer_properties(tiny_dataset, tmp_path):
    os.makedirs(tmp_path / "models")
    torch.save(BasicUNet(2, 1, 2, features=TINY_NET["features"]).state_dict(), tmp_path / "models" / "model.pt")
    overrides = {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "features": TINY_NET["features"],
    }
    wf = ConfigWorkflow(config_file=INFERENCE, meta_file=META, logging_file=LOGGING, workflow_type="infer", **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    assert not os.path.exists(overrides["output_dir"])


def test_ckpt_export_gives_torchscript_equal_to_eager(tmp_path):
    features = _parser(INFERENCE).get_parsed_content("settings")["features"]  # the topology network_def builds
    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=features).eval()
    ckpt, ts = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(net.state_dict(), ckpt)  # a plain state dict, as train.yaml's model.pt
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=META, config_file=INFERENCE)
    scripted, meta, extra = load_net_with_metadata(str(ts), more_extra_files=("inference.json",))
    assert meta["version"] == _meta()["version"] and "network_def" in json.loads(extra["inference.json"])
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)


def test_bundle_imports_from_another_working_directory(tmp_path):
    """As the Model Zoo's verify_bundle.py and MONAI Label do: only the bundle root on sys.path, cwd elsewhere."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import bundle\n"
        "names = sorted(m.name for m in pkgutil.iter_modules(bundle.__path__))\n"
        "[importlib.import_module('bundle.' + n) for n in names]\n"
        "from monai.bundle import verify_net_in_out\n"
        f"verify_net_in_out('network_def', {META!r}, {INFERENCE!r}, device='cpu')\n"
        "print(bundle.__file__, names)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith(str(ROOT / "bundle" / "__init__.py"))
    for module in ("data", "finetune", "inference", "networks", "trainer", "translation"):
        assert f"'{module}'" in done.stdout


# ---- the submission zip ----


def _fake_bundle(tmp_path: Path) -> Path:
    """A copy of the bundle's exported files plus what must never be exported."""
    from scripts.export_bundle import bundle_files

    root = tmp_path / "repo"
    for rel in bundle_files(str(ROOT), include_tests=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    junk = [
        "bundle/__pycache__/data.cpython-311.pyc",
        "scripts/__pycache__/export_bundle.cpython-311.pyc",
        "data/demo/datalist.json",
        "outputs/train/train_log.txt",
        "models/pretrain/generators.pt",
        "models/checkpoints/checkpoint_final.pt",
        "models/previous/model_old.pt",
        "eval/schema.json",
        ".ruff_cache/x",
        "docs/.notes.swp",
        "configs/.hidden.yaml",
    ]
    for rel in junk:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"junk")
    torch.save({"w": torch.arange(4.0)}, root / "models" / "model.pt")
    return root


def _zip_names(path: str) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return zf.namelist()


def test_export_bundle_zip_contents(tmp_path, capsys):
    from scripts.export_bundle import DEFAULT_BUNDLE_NAME, export_bundle

    root = _fake_bundle(tmp_path)
    version = _meta()["version"]
    prefix = DEFAULT_BUNDLE_NAME + "/"

    path = export_bundle(output_dir=str(tmp_path / "dist"), root=str(root))
    assert os.path.basename(path) == f"{DEFAULT_BUNDLE_NAME}_v{version}.zip"
    names = _zip_names(path)
    assert all(n.startswith(prefix) for n in names)
    rel = {n[len(prefix) :] for n in names}
    expected_py = {f"bundle/{p.name}" for p in (ROOT / "bundle").glob("*.py")}
    expected_py |= {f"scripts/{p.name}" for p in (ROOT / "scripts").glob("*.py")}
    assert expected_py <= rel
    assert {f"configs/{c}" for c in CONFIGS} | {"configs/metadata.json", "configs/logging.conf"} <= rel
    assert {"LICENSE", "README.md", "requirements.txt", "large_files.yml", "docs/README.md"} <= rel
    assert "docs/data_license.txt" in rel
    assert not [r for r in rel if r.startswith(("data/", "outputs/", "models/", "eval/", "tests/", "."))]
    assert not [r for r in rel if "__pycache__" in r or r.endswith(".pyc") or "/." in r]
    printed = capsys.readouterr().out
    assert f"wrote {path}" in printed and f"{prefix}configs/train.yaml" in printed
    with open(ROOT / "large_files.yml") as f:
        declared = yaml.safe_load(f)["large_files"]
    with zipfile.ZipFile(path) as zf:  # without weights: the declarations as they are
        assert yaml.safe_load(zf.read(prefix + "large_files.yml"))["large_files"] == declared

    # --include_weights: the declared model.pt (and nothing else of models/) with its md5 in the zip's
    # large_files.yml, the url unchanged; --include_tests: tests/
    md5 = hashlib.md5((root / "models" / "model.pt").read_bytes()).hexdigest()
    path = export_bundle(output_dir=str(tmp_path / "dist2"), root=str(root), include_weights=True, include_tests=True)
    rel = {n[len(prefix) :] for n in _zip_names(path)}
    assert [r for r in rel if r.startswith("models/")] == ["models/model.pt"]
    assert {"tests/conftest.py", "tests/test_bundle_conformance.py", "tests/data/meta_schema_20240725.json"} <= rel
    assert f"models/model.pt: md5 {md5}" in capsys.readouterr().out
    with zipfile.ZipFile(path) as zf:
        assert hashlib.md5(zf.read(prefix + "models/model.pt")).hexdigest() == md5
        entries = yaml.safe_load(zf.read(prefix + "large_files.yml"))["large_files"]
    assert entries[0] == {**declared[0], "hash_val": md5, "hash_type": "md5"}

    os.remove(root / "models" / "model.pt")
    with pytest.raises(FileNotFoundError, match="declared in large_files.yml"):
        export_bundle(output_dir=str(tmp_path / "dist3"), root=str(root), include_weights=True)


def test_export_bundle_cli_exports_only_repository_files(tmp_path):
    script = ROOT / "scripts" / "export_bundle.py"
    cmd = [sys.executable, str(script), "--output_dir", str(tmp_path), "--include_tests", "True"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("*.zip")
    assert f"wrote {path}" in done.stdout
    prefix = path.name.rsplit("_v", 1)[0] + "/"
    exported = {n[len(prefix) :] for n in _zip_names(str(path))}
    tracked = set(_git_files("--cached", "--others", "--exclude-standard"))
    assert exported <= tracked  # nothing git-ignored (data, outputs, models, caches)
