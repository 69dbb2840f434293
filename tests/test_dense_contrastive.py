"""The location-level (dense) contrastive option: the loss, its sampling, its gradients, and `contrastive` in the config."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from monai.losses import ContrastiveLoss, PatchAdversarialLoss

from bundle.dense_contrastive import DenseContrastiveLoss, downsample_mask, sample_locations
from bundle.losses import LocalContrastiveTerm, contrastive_weights
from bundle.networks import DenseProjectionHead, MultiConDoSGenerators
from conftest import TINY_NET, config_path, make_workflow, paired_batches, paper_loss, run_workflow, tiny_overrides


def _shuffled(q: torch.Tensor) -> torch.Tensor:
    """The same feature maps with their locations permuted (a fixed derangement: every location moves)."""
    flat = q.flatten(2)
    return flat[:, :, torch.roll(torch.arange(flat.shape[2]), 1)].reshape(q.shape)


@pytest.mark.parametrize("spatial", [(4, 4), (3, 3, 2)])
def test_loss_is_low_when_locations_agree_and_high_when_shuffled(spatial):
    torch.manual_seed(0)
    loss = DenseContrastiveLoss(temperature=0.1, num_samples=1000)  # more than the locations: all are taken
    q_a = torch.randn(2, 16, *spatial)
    q_b = q_a + 0.05 * torch.randn_like(q_a)  # the two modalities' features agree per location
    agree, shuffled = float(loss(q_a, q_b)), float(loss(q_a, _shuffled(q_b)))
    n = 2 * 2 * q_a[0, 0].numel()  # 2 x B x locations vectors: chance level is log(n - 1)
    assert agree < 0.5 < torch.log(torch.tensor(n - 1.0)) < shuffled
    # all locations taken: the order they are drawn in does not matter (NT-Xent is permutation invariant)
    assert float(loss(q_a, q_b)) == pytest.approx(agree, rel=1e-5)


def test_other_subjects_are_negatives():
    loss = DenseContrastiveLoss(temperature=0.5, num_samples=4)
    q = torch.randn(1, 8, 2, 2)
    one = loss(q, q)
    # a second subject identical to the first doubles every positive's look-alikes among the negatives
    two = loss(torch.cat([q, q]), torch.cat([q, q]))
    assert float(two) > float(one) + 0.3


def test_sampling_stays_inside_the_mask_and_fills_up_outside_it():
    torch.manual_seed(0)
    mask = torch.zeros(3, 16)
    mask[:, [1, 5, 6, 9, 14]] = 1.0
    inside = sample_locations(16, 3, mask, 3, "cpu")
    assert inside.shape == (3, 3) and bool(mask.gather(1, inside).all())
    assert all(len(set(row.tolist())) == 3 for row in inside)  # distinct locations
    filled = sample_locations(16, 8, mask, 3, "cpu")
    assert filled.shape == (3, 8) and all(len(set(row.tolist())) == 8 for row in filled)
    assert all({1, 5, 6, 9, 14} <= set(row.tolist()) for row in filled)  # the mask first, the rest from outside
    assert sample_locations(16, 64, None, 2, "cpu").shape == (2, 16)  # at most every location


def test_downsample_mask_is_dimension_generic():
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[0, 0, 5, 1, 7] = 1
    down = downsample_mask(mask, (2, 2, 2))
    assert down.shape == (1, 1, 2, 2, 2) and down.sum() == 1 and down[0, 0, 1, 0, 1] == 1
    assert torch.equal(downsample_mask(mask[..., 0], (8, 8)), mask[..., 0])


def test_loss_samples_only_foreground_locations():
    """Foreground locations agree, background ones are noise: a foreground-masked loss sees only agreement."""
    torch.manual_seed(0)
    q_a = torch.randn(2, 32, 4, 4)
    q_b = torch.randn(2, 32, 4, 4)
    q_b[:, :, :2] = q_a[:, :, :2]  # the top half agrees
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8] = 1  # image-resolution foreground = the top half
    loss = DenseContrastiveLoss(temperature=0.1, num_samples=8)
    assert float(loss(q_a, q_b, mask)) < 0.05 and float(loss(q_a, q_b)) > 1.0
    with pytest.raises(ValueError, match="mask shape"):
        loss(q_a, q_b, mask[:, 0])
    with pytest.raises(ValueError, match="equal"):
        loss(q_a, q_b[:, :4])
    with pytest.raises(ValueError, match="local_samples must be >= 1"):
        DenseContrastiveLoss(num_samples=0)


def test_dense_projection_head_is_one_vector_per_location():
    head = DenseProjectionHead(3, 6, 5, 4)
    feat = torch.randn(2, 6, 3, 4, 5)
    out = head(feat)
    assert out.shape == (2, 4, 3, 4, 5)
    # a 1x1 convolution: each location's vector depends on that location only
    moved = feat.clone()
    moved[..., 0, 0, 0] += 1.0
    changed = (head(moved) - out).abs().sum(dim=1) > 0
    assert changed[:, 0, 0, 0].all() and changed.sum() == 2


@pytest.mark.parametrize("level, shared_gets_grad", [("down_4", True), ("down_3", False)])
def test_gradients_reach_both_generators_encoders(level, shared_gets_grad):
    torch.manual_seed(0)
    gens = MultiConDoSGenerators(features=TINY_NET["features"], local_level=level, local_projection_dim=8)
    batch = paired_batches(1, batch=2)[0]
    a, b = batch["t1"], batch["t2"]
    out = gens(a, b, cycle=False, project=False, project_local=True)
    assert out["q_a"].shape == (2, 8, *([32 // (16 if level == "down_4" else 8)] * 2))
    term = LocalContrastiveTerm(DenseContrastiveLoss(num_samples=4), backgrounds=(0.0, 0.0))
    term(out, a, b).backward()

    def grad_norm(module):
        grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
        return float(sum(grads)) if grads else 0.0

    ab, ba = gens.g_ab.unet, gens.g_ba.unet
    for unet in (ab, ba):  # the domain-specific encoders of both generators
        assert grad_norm(unet.conv_0) > 0 and grad_norm(unet.down_3) > 0
        assert grad_norm(unet.upcat_1) == 0 and grad_norm(unet.final_conv) == 0  # the decoder is not involved
    assert (grad_norm(ab.down_4) > 0) is shared_gets_grad  # the shared bottleneck (shared_blocks default)
    assert grad_norm(gens.local_head) > 0 and grad_norm(gens.head) == 0


def test_the_subject_level_pair_is_unchanged_without_a_local_level():
    torch.manual_seed(0)
    plain = MultiConDoSGenerators(features=TINY_NET["features"])
    torch.manual_seed(0)
    dense = MultiConDoSGenerators(features=TINY_NET["features"], local_level="down_4")
    extra = set(dense.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("local_head.") for k in extra)
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in plain.state_dict().items())  # same random init
    assert not hasattr(plain, "local_head")
    with pytest.raises(ValueError, match="local_level"):
        plain(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), project_local=True)
    with pytest.raises(ValueError, match="unknown encoder block 'upcat_4'"):
        MultiConDoSGenerators(features=TINY_NET["features"], local_level="upcat_4")


def test_contrastive_weights_choose_the_terms():
    assert contrastive_weights("global", 1.0, 2.0) == {"contrastive": 1.0, "local_contrastive": 0.0}
    assert contrastive_weights("local", 1.0, 2.0, "down_4", 64) == {"contrastive": 0.0, "local_contrastive": 2.0}
    assert contrastive_weights("both", 1.0, 2.0, "down_3", 8) == {"contrastive": 1.0, "local_contrastive": 2.0}
    with pytest.raises(ValueError, match=r"contrastive must be one of \['global', 'local', 'both'\], got 'dense'"):
        contrastive_weights("dense", 1.0, 1.0)
    with pytest.raises(ValueError, match="local_level must be one of"):
        contrastive_weights("local", 1.0, 1.0, "final_conv", 64)
    with pytest.raises(ValueError, match="local_samples must be >= 1"):
        contrastive_weights("both", 1.0, 1.0, "down_4", 0)


def _config_objects(tiny_dataset, tmp_path, **kwargs):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_path("pretrain.yaml"))
    parser.update(tiny_overrides(tiny_dataset, tmp_path, **kwargs))
    return parser.get_parsed_content("generators_def"), parser.get_parsed_content("generator_loss")


def test_global_reproduces_the_subject_level_objective_exactly(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    gens, loss = _config_objects(tiny_dataset, tmp_path)  # the default: contrastive global
    assert not hasattr(gens, "local_head") and gens.local_level is None
    assert set(loss.terms) == {"adversarial", "cycle", "pix2pix", "contrastive"}
    assert loss.output_flags() == {"cycle": True, "identity": False, "project": True, "project_local": False}
    torch.manual_seed(0)
    reference_gens = MultiConDoSGenerators(features=TINY_NET["features"], projection_dim=TINY_NET["projection_dim"])
    assert all(torch.equal(v, gens.state_dict()[k]) for k, v in reference_gens.state_dict().items())
    assert set(gens.state_dict()) == set(reference_gens.state_dict())
    batch = paired_batches(1, batch=2)[0]
    out = gens(batch["t1"], batch["t2"], **loss.output_flags())
    reference = paper_loss(PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True),
                           ContrastiveLoss(temperature=0.5), torch.nn.L1Loss())
    from monai.networks.nets import PatchDiscriminator

    from bundle.networks import DiscriminatorPair

    discs = DiscriminatorPair(
        *[PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=3, norm="INSTANCE") for _ in "ab"]
    )
    got = loss(out, batch["t1"], batch["t2"], discriminators=discs)
    expected = reference(out, batch["t1"], batch["t2"], discriminators=discs)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_bad_contrastive_choice_stops_before_anything_is_written(tiny_dataset, tmp_path):
    overrides = tiny_overrides(tiny_dataset, tmp_path, contrastive="dense")
    with pytest.raises(SystemExit, match="contrastive must be one of"):
        make_workflow(config_path("pretrain.yaml"), overrides, run_id="training")
    assert not os.path.exists(tmp_path / "ckpt") and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("mode", ["local", "both"])
def test_one_iteration_pretraining_with_the_local_term(tiny_dataset, tmp_path, mode):
    overrides = tiny_overrides(
        tiny_dataset, tmp_path, contrastive=mode, local_samples=3, log_interval=1, val_fraction=0.25,
        val_slices_per_subject=1, image_pool_size=2,
    )
    wf = run_workflow(config_path("pretrain.yaml"), overrides, run_id="training")
    with open(tmp_path / "out" / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert float(rows[0]["local_contrastive"]) > 0  # the term is computed and logged by name
    assert ("contrastive" in rows[0]) is (mode == "both")
    g_total = sum(w * float(rows[0][name]) for name, w in wf.parser.get_parsed_content("generator_loss").weights.items())
    assert float(rows[0]["g_total"]) == pytest.approx(g_total, rel=1e-5)
    record = json.load(open(tmp_path / "ckpt" / "generators.json"))
    settings = record["training"]["settings"]
    assert settings["contrastive"] == mode and settings["local_level"] == "down_4" and settings["local_samples"] == 3
    assert settings["lambda_local_contrastive"] == 1.0
    state = torch.load(tmp_path / "ckpt" / "checkpoints" / "checkpoint_final.pt", weights_only=False)
    assert any(k.startswith("local_head.") for k in state["generators"])  # the head resumes with the run
    assert sorted(torch.load(tmp_path / "ckpt" / "generators.pt")) == ["g_ab", "g_ba"]  # the export is unchanged
