"""Shared fixtures: one tiny demo dataset per test session and helpers to run bundle configs in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the bundle root, as MONAI Label / the Model Zoo put it

from bundle.demo_data import generate_demo_dataset

#: tiny network settings that keep every workflow test to seconds on 2 CPU cores
TINY_NET = {"features": [8, 8, 16, 16, 32, 8], "discriminator_channels": 8, "projection_dim": 16}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """10 subjects (8 training, 2 testing) of 32x32x16 T1/T2 volumes with labels."""
    root = tmp_path_factory.mktemp("tiny_demo")
    datalist = generate_demo_dataset(root, num_subjects=10, num_test=2, shape=(32, 32, 16), seed=0)
    return {"dataset_dir": str(root), "data_list_file_path": datalist}


@pytest.fixture()
def pretrain_overrides(tiny_dataset: dict[str, str], tmp_path: Path) -> dict:
    """Overrides of ``configs/pretrain.yaml`` for a 2-epoch, 2-iteration run on the tiny dataset."""
    return {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": str(tmp_path / "ckpt"),
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "batch_size": 2,
        "epochs": 2,
        "epoch_length": 2,
        "val_interval": 1,
        "save_interval": 1,
        "val_fraction": 0.25,
        "val_slices_per_subject": 2,
        "image_pool_size": 4,
        **TINY_NET,
    }


def config_path(name: str) -> str:
    return os.path.join(str(ROOT), "configs", name)


def run_workflow(config_file, overrides: dict, workflow_type: str | None = None, run_id: str = "run"):
    """Run a bundle config in-process (initialize, run, finalize) and return the workflow."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=config_file,
        meta_file=config_path("metadata.json"),
        logging_file=config_path("logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="session")
def tiny_generators(tiny_dataset: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``generators.pt`` from a real (1 epoch, 2 iterations) pre-training run on the tiny dataset."""
    root = tmp_path_factory.mktemp("tiny_pretrain")
    overrides = {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": str(root / "ckpt"),
        "output_dir": str(root / "out"),
        "image_size": 32,
        "batch_size": 2,
        "epochs": 1,
        "epoch_length": 2,
        "val_fraction": 0.25,
        "val_slices_per_subject": 1,
        "image_pool_size": 4,
        **TINY_NET,
    }
    run_workflow(config_path("pretrain.yaml"), overrides, run_id="training")
    return str(root / "ckpt" / "generators.pt")


@pytest.fixture()
def train_overrides(tiny_dataset: dict[str, str], tiny_generators: str, tmp_path: Path) -> dict:
    """Overrides of ``configs/train.yaml`` for a 1-epoch fine-tuning on the tiny dataset."""
    return {
        "bundle_root": str(ROOT),
        **tiny_dataset,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "out"),
        "pretrained_ckpt": tiny_generators,
        "default_pretrained_ckpt": str(tmp_path / "no_default" / "generators.pt"),
        "image_size": 32,
        "batch_size": 4,
        "epochs": 1,
        "epoch_length": 2,
        "val_interval": 1,
        "val_fraction": 0.25,
        "samples_per_subject": 2,
        "features": TINY_NET["features"],
    }
