"""Shared fixtures: one tiny demo dataset per test session and helpers to run bundle configs in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

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
def dataset_copy(tiny_dataset: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A private copy of the tiny dataset (its datalist uses relative paths), for tests that change files."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset["dataset_dir"], root)
    return {"dataset_dir": str(root), "data_list_file_path": str(root / os.path.basename(tiny_dataset["data_list_file_path"]))}


def tiny_overrides(dataset: dict[str, str], run_dir: Path, **kwargs) -> dict:
    """
    Overrides of a workflow config for a tiny run: ``dataset`` (``dataset_dir``, ``data_list_file_path``),
    ``run_dir/ckpt`` and ``run_dir/out``, 32x32 slices, batch 2, 1 epoch of 1 iteration, ``TINY_NET``; ``kwargs`` win.
    """
    return {
        "bundle_root": str(ROOT),
        **dataset,
        "ckpt_dir": str(run_dir / "ckpt"),
        "output_dir": str(run_dir / "out"),
        "image_size": 32,
        "batch_size": 2,
        "epochs": 1,
        "epoch_length": 1,
        **TINY_NET,
        **kwargs,
    }


def scratch_finetune_overrides(dataset: dict[str, str], ckpt_dir: Path, output_dir: Path, **kwargs) -> dict:
    """Overrides of ``configs/train.yaml`` for a tiny fine-tuning from scratch (1 epoch of 2 iterations of 4 slices,
    ``TINY_NET`` features, validated once); ``kwargs`` win."""
    return {
        "bundle_root": str(ROOT),
        **dataset,
        "ckpt_dir": str(ckpt_dir),
        "output_dir": str(output_dir),
        "pretrained_ckpt": "none",
        "features": TINY_NET["features"],
        "batch_size": 4,
        "samples_per_subject": 2,
        "epochs": 1,
        "epoch_length": 2,
        "val_interval": 1,
        "val_fraction": 0.25,
        **kwargs,
    }


@pytest.fixture()
def pretrain_overrides(tiny_dataset: dict[str, str], tmp_path: Path) -> dict:
    """Overrides of ``configs/pretrain.yaml`` for a 2-epoch, 2-iteration run on the tiny dataset."""
    return tiny_overrides(
        tiny_dataset,
        tmp_path,
        epochs=2,
        epoch_length=2,
        val_interval=1,
        save_interval=1,
        val_fraction=0.25,
        val_slices_per_subject=2,
        image_pool_size=4,
    )


def config_path(name: str) -> str:
    return os.path.join(str(ROOT), "configs", name)


def make_workflow(config_file, overrides: dict, workflow_type: str | None = None, run_id: str = "run"):
    """A bundle config as an initialised ``ConfigWorkflow`` (in-process)."""
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
    return wf


def run_workflow(config_file, overrides: dict, workflow_type: str | None = None, run_id: str = "run"):
    """Run a bundle config in-process (initialize, run, finalize) and return the workflow."""
    wf = make_workflow(config_file, overrides, workflow_type, run_id)
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="session")
def tiny_generators(tiny_dataset: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``generators.pt`` from a real (1 epoch, 2 iterations) pre-training run on the tiny dataset."""
    root = tmp_path_factory.mktemp("tiny_pretrain")
    overrides = tiny_overrides(
        tiny_dataset, root, epoch_length=2, val_fraction=0.25, val_slices_per_subject=1, image_pool_size=4
    )
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


def paired_batches(n_batches: int = 2, batch: int = 4, size: int = 32, seed: int = 0) -> list[dict]:
    """Paired 'modalities': B is a fixed non-linear contrast change of A (a translation is learnable)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        a = torch.zeros(batch, 1, size, size)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        for i in range(batch):
            cx, cy, r = torch.rand(3, generator=g) * torch.tensor([0.6, 0.6, 0.3]) + torch.tensor([-0.3, -0.3, 0.4])
            disk = ((xx - cx) ** 2 + (yy - cy) ** 2) < r**2
            a[i, 0][disk] = 0.8 * torch.rand(1, generator=g) - 0.2
        b = torch.where(a != 0, 0.6 - a, torch.zeros_like(a))
        out.append({"t1": a, "t2": b})
    return out


def paper_loss(
    adversarial_loss,
    contrastive_loss=None,
    l1_loss=None,
    lambda_adversarial: float = 1.0,
    lambda_cycle: float = 10.0,
    lambda_pix2pix: float = 100.0,
    lambda_contrastive: float = 1.0,
    lambda_identity: float = 0.0,
    contrastive_all_ranks: bool = False,
    local_contrastive_loss=None,
    lambda_local_contrastive: float = 1.0,
):
    """The paper's objective built in Python, as configs/pretrain.yaml's ``generator_loss`` declares it (with
    ``local_contrastive_loss``, e.g. a ``DenseContrastiveLoss``, the location-level term too: ``contrastive: both``)."""
    from bundle import losses

    terms = {
        "adversarial": losses.AdversarialTerm(adversarial_loss),
        "cycle": losses.CycleTerm(l1_loss),
        "pix2pix": losses.Pix2PixTerm(l1_loss),
        "identity": losses.IdentityTerm(l1_loss),
    }
    if contrastive_loss is not None:
        terms["contrastive"] = losses.ContrastiveTerm(contrastive_loss, contrastive_all_ranks)
    if local_contrastive_loss is not None:
        terms["local_contrastive"] = losses.LocalContrastiveTerm(local_contrastive_loss, (0.0, 0.0))
    weights = {
        "adversarial": lambda_adversarial,
        "cycle": lambda_cycle,
        "pix2pix": lambda_pix2pix,
        "contrastive": lambda_contrastive,
        "identity": lambda_identity,
    }
    if local_contrastive_loss is not None:
        weights["local_contrastive"] = lambda_local_contrastive
    return losses.GeneratorLoss(terms, weights)


def build_trainer(batches: list[dict], **kwargs):
    """A MultiConDoSTrainer with tiny networks on ``batches`` (keys t1/t2)."""
    from monai.losses import ContrastiveLoss, PatchAdversarialLoss
    from monai.networks.nets import PatchDiscriminator

    from bundle.networks import MultiConDoSGenerators
    from bundle.trainer import MultiConDoSTrainer

    torch.manual_seed(0)
    gens = MultiConDoSGenerators(features=TINY_NET["features"], projection_hidden=16, projection_dim=8)
    from bundle.networks import DiscriminatorPair

    discs = DiscriminatorPair(
        **{
            k: PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=3, norm="INSTANCE")
            for k in ("d_a", "d_b")
        }
    )
    loss_args = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("lambda_") or k == "contrastive_all_ranks"}
    adversarial = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    return MultiConDoSTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=batches,
        generators=gens,
        discriminators=discs,
        g_optimizer=torch.optim.Adam(gens.parameters(), lr=kwargs.pop("lr", 2e-4), betas=(0.5, 0.999)),
        d_optimizer=torch.optim.Adam(discs.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        generator_loss=paper_loss(adversarial, ContrastiveLoss(temperature=0.5), **loss_args),
        adversarial_loss=adversarial,
        keys=("t1", "t2"),
        image_pool_size=4,
        **kwargs,
    )
