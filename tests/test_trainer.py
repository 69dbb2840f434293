"""The 2G/2D pre-training step: loss terms, switches, contrastive behaviour, learning on tiny data."""

from __future__ import annotations

import pytest
import torch
from monai.losses import ContrastiveLoss

from bundle.trainer import linear_decay_lambda
from conftest import build_trainer as _trainer
from conftest import paired_batches as _paired_batches


def test_every_term_is_finite_and_logged():
    trainer = _trainer(_paired_batches(), lambda_identity=0.5)
    out = trainer._iteration(trainer, _paired_batches(1)[0])
    losses = out["losses"]
    assert set(losses) == {"g_total", "adversarial", "cycle", "pix2pix", "contrastive", "identity", "d_a", "d_b"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    expected = (
        losses["adversarial"]
        + 10 * losses["cycle"]
        + 100 * losses["pix2pix"]
        + losses["contrastive"]
        + 0.5 * losses["identity"]
    )
    assert losses["g_total"] == pytest.approx(expected, rel=1e-4)
    assert out["fake_b"].shape == out["b"].shape


@pytest.mark.parametrize("term", ["cycle", "pix2pix", "contrastive", "identity"])
def test_zero_weight_removes_the_term(term):
    trainer = _trainer(_paired_batches(), **{f"lambda_{term}": 0.0})
    calls = {"head": 0, "g_ab": 0}  # head calls; images through G_AB
    trainer.generators.head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    trainer.generators.g_ab.register_forward_hook(lambda m, i, o: calls.__setitem__("g_ab", calls["g_ab"] + len(i[0])))
    batch = _paired_batches(1)[0]
    losses = trainer._iteration(trainer, batch)["losses"]
    assert term not in losses
    if term == "contrastive":
        assert calls["head"] == 0  # its compute is gone too
    # G_AB(a), and with the cycle term G_AB(G_BA(b)); identity (off by default) would add G_AB(b)
    assert calls["g_ab"] == len(batch["t1"]) * (1 if term == "cycle" else 2)


def test_zero_adversarial_weight_skips_the_discriminators():
    trainer = _trainer(_paired_batches(), lambda_adversarial=0.0)
    before = [p.clone() for p in trainer.discriminators.parameters()]
    losses = trainer._iteration(trainer, _paired_batches(1)[0])["losses"]
    assert not {"adversarial", "d_a", "d_b"} & set(losses)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.discriminators.parameters()))


def test_both_steps_update_their_networks():
    trainer = _trainer(_paired_batches())
    gen_before = [p.clone() for p in trainer.generators.parameters()]
    disc_before = [p.clone() for p in trainer.discriminators.parameters()]
    trainer._iteration(trainer, _paired_batches(1)[0])
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, trainer.generators.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, trainer.discriminators.parameters()))


def test_contrastive_loss_prefers_agreeing_pairs():
    torch.manual_seed(0)
    loss = ContrastiveLoss(temperature=0.5)
    z_a = torch.randn(8, 16)
    z_b = z_a + 0.05 * torch.randn(8, 16)  # paired features agree
    shuffled = z_b[torch.roll(torch.arange(8), 1)]
    assert loss(z_a, z_b) < loss(z_a, shuffled) - 0.5


def test_contrastive_needs_two_subjects():
    trainer = _trainer(_paired_batches())
    with pytest.raises(ValueError, match="at least 2"):
        trainer._iteration(trainer, _paired_batches(1, batch=1)[0])


def test_a_few_iterations_reduce_the_pix2pix_l1():
    batches = _paired_batches(n_batches=1, batch=4)
    trainer = _trainer(batches, lr=1e-3)
    values = [trainer._iteration(trainer, batches[0])["losses"]["pix2pix"] for _ in range(12)]
    assert max(values[-3:]) < 0.8 * values[0], values


def test_empty_loader_and_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="fewer training subjects than batch_size"):
        _trainer([])
    with pytest.raises(ValueError, match="lambda_cycle must be >= 0"):
        _trainer(_paired_batches(), lambda_cycle=-1.0)


def test_linear_decay_lambda():
    f = linear_decay_lambda(10, 5)
    assert [f(e) for e in range(5)] == [1.0] * 5
    assert f(6) < f(5) == 1.0 and f(10) > 0.0
    assert f(5) == pytest.approx(1 - 0 / 6) and f(8) == pytest.approx(1 - 3 / 6)
    with pytest.raises(ValueError):
        linear_decay_lambda(4, 5)
