# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The Multi-ConDoS pre-training step (two generators, two discriminators) and the translation evaluator, as
MONAI engines so that MONAI/ignite handlers (stats, TensorBoard, checkpoints, validation) work unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from monai.engines import Evaluator, Trainer
from monai.utils import ForwardMode
from torch import nn
from torch.optim import Optimizer

from .handlers import check_finite
from .networks import ImagePool, MultiConDoSGenerators, unwrap

__all__ = ["LOSS_TERMS", "MultiConDoSTrainer", "TranslationEvaluator", "linear_decay_lambda"]

#: the loss terms logged by name for every iteration
LOSS_TERMS: tuple[str, ...] = (
    "g_total",
    "adversarial",
    "cycle",
    "pix2pix",
    "contrastive",
    "identity",
    "d_a",
    "d_b",
)


def linear_decay_lambda(total_epochs: int, decay_start_epoch: int) -> Callable[[int], float]:
    """
    CycleGAN's learning-rate rule for ``torch.optim.lr_scheduler.LambdaLR`` stepped once per epoch: factor 1
    for the first ``decay_start_epoch`` epochs, then a linear decay towards 0 over the remaining epochs.
    """
    total_epochs, decay_start_epoch = int(total_epochs), int(decay_start_epoch)
    if not 0 <= decay_start_epoch <= total_epochs:
        raise ValueError(f"decay_start_epoch must be in [0, epochs={total_epochs}], got {decay_start_epoch}.")
    decay_epochs = total_epochs - decay_start_epoch

    def _factor(epoch: int) -> float:
        return 1.0 - max(0, epoch - decay_start_epoch) / float(decay_epochs + 1)

    return _factor


_GATHER_GROUP: list = []


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """
    Concatenate ``x`` of every rank (batch dimension), differentiably (the backward sums the gradients of all ranks);
    ``x`` itself outside distributed runs. The collectives run in a process group of their own: on the default group
    they would interleave with DDP's asynchronous gradient all-reduce during the backward and mix up the data.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if not _GATHER_GROUP:
        _GATHER_GROUP.append(dist.new_group())
    return torch.cat(dist_nn.all_gather(x, group=_GATHER_GROUP[0]), dim=0)


def _autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast where supported (no loss scaling needed), else fp16 on CUDA."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _plain(
    x: torch.Tensor,
    device: torch.device,
    non_blocking: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Move to ``device`` as a plain tensor (MetaTensor bookkeeping is not needed in the training step)."""
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    return x.to(device=device, non_blocking=non_blocking, memory_format=memory_format)


class MultiConDoSTrainer(Trainer):
    """
    Multi-ConDoS self-supervised pre-training: per iteration one generator step (discriminators frozen) on

        L_G = w_adv * L_adv + w_cyc * L_cycle + w_pix * L_pix2pix + w_con * L_contrastive + w_idt * L_identity

    then one discriminator step (LSGAN, on fakes from the image pools), in CycleGAN's order. A term whose
    weight is 0 is neither computed nor logged as a cost (the paper's ablations); with ``lambda_adversarial=0``
    the discriminator step is skipped as well.

    Each batch is a dict holding co-registered slices of the two modalities under ``keys[0]`` (A) and
    ``keys[1]`` (B). ``engine.state.output`` holds ``"loss"`` (L_G), ``"losses"`` (every term by name, floats,
    for ``StatsHandler``/``TensorBoardStatsHandler`` with ``output_transform=lambda x: x["losses"]``) and the
    images ``"a", "b", "fake_a", "fake_b"``.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader of paired slices; every batch must hold at least 2 samples when the
            contrastive term is on (in-batch negatives).
        generators: the generator pair with its projection head.
        discriminators: a module with children ``d_a`` and ``d_b`` (e.g. two MONAI ``PatchDiscriminator``,
            whose last output is the logits).
        g_optimizer: optimizer over ``generators.parameters()``.
        d_optimizer: optimizer over ``discriminators.parameters()``.
        adversarial_loss: e.g. ``PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)``.
        l1_loss: the L1 loss of the cycle, Pix2Pix and identity terms.
        contrastive_loss: NT-Xent on (z_a, z_b), e.g. MONAI ``ContrastiveLoss``.
        keys: the batch keys of modality A and B.
        lambda_adversarial, lambda_cycle, lambda_pix2pix, lambda_contrastive, lambda_identity: term weights.
        image_pool_size: size of each discriminator's history of fakes (0: none).
        epoch_length: iterations per epoch (default: one pass over the loader).
        amp: mixed precision (bf16 autocast; fp16 with separate GradScalers for G and D where bf16 is missing).
        train_handlers: MONAI/ignite handlers to attach.
        kwargs: further arguments of ``monai.engines.Trainer``.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        generators: MultiConDoSGenerators,
        discriminators: nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        adversarial_loss: Callable,
        l1_loss: Callable | None = None,
        contrastive_loss: Callable | None = None,
        keys: Sequence[str] = ("a", "b"),
        lambda_adversarial: float = 1.0,
        lambda_cycle: float = 10.0,
        lambda_pix2pix: float = 100.0,
        lambda_contrastive: float = 1.0,
        lambda_identity: float = 0.0,
        image_pool_size: int = 50,
        epoch_length: int | None = None,
        amp: bool = False,
        train_handlers: Sequence | None = None,
        contrastive_all_ranks: bool = False,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        if len(keys) != 2:
            raise ValueError(f"keys must name the two modalities [A, B], got {list(keys)}.")
        weights = {
            "adversarial": float(lambda_adversarial),
            "cycle": float(lambda_cycle),
            "pix2pix": float(lambda_pix2pix),
            "contrastive": float(lambda_contrastive),
            "identity": float(lambda_identity),
        }
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"lambda_{name} must be >= 0, got {value}.")
        if not any(weights.values()):
            raise ValueError("all loss weights are 0: nothing to train.")
        if weights["contrastive"] > 0 and contrastive_loss is None:
            raise ValueError("lambda_contrastive > 0 needs a contrastive_loss.")
        if hasattr(train_data_loader, "__len__") and len(train_data_loader) == 0:  # type: ignore[arg-type]
            raise ValueError(
                "the training data loader yields no batch: fewer training subjects than batch_size "
                "(one slice per subject per batch, drop_last=True). Lower batch_size or add subjects."
            )
        # before Trainer.__init__, which attaches the handlers: checkpoint handlers save and restore the pools
        self.pool_a = ImagePool(image_pool_size)
        self.pool_b = ImagePool(image_pool_size)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
            **kwargs,
        )
        self.generators = generators
        self.discriminators = discriminators
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.adversarial_loss = adversarial_loss
        self.l1_loss = l1_loss if l1_loss is not None else nn.L1Loss()
        self.contrastive_loss = contrastive_loss
        self.keys = list(keys)
        self.weights = weights
        self.contrastive_all_ranks = bool(contrastive_all_ranks)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        use_scaler = bool(amp) and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported()
        self.g_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _generator_losses(self, a: torch.Tensor, b: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
        w = self.weights
        out = self.generators(
            a, b, cycle=w["cycle"] > 0, identity=w["identity"] > 0, project=w["contrastive"] > 0
        )  # one forward through the (possibly DDP-wrapped) pair
        terms: dict[str, torch.Tensor] = {}
        if w["adversarial"] > 0:
            # the unwrapped discriminators: their weights are frozen here, the D step goes through the wrapper
            logits_a, logits_b = unwrap(self.discriminators)(out["fake_a"], out["fake_b"])
            terms["adversarial"] = self.adversarial_loss(
                logits_b, target_is_real=True, for_discriminator=False
            ) + self.adversarial_loss(logits_a, target_is_real=True, for_discriminator=False)
        if w["cycle"] > 0:
            terms["cycle"] = self.l1_loss(out["rec_a"], a) + self.l1_loss(out["rec_b"], b)
        if w["pix2pix"] > 0:
            terms["pix2pix"] = self.l1_loss(out["fake_b"], b) + self.l1_loss(out["fake_a"], a)
        if w["contrastive"] > 0:
            z_a, z_b = out["z_a"].float(), out["z_b"].float()
            if self.contrastive_all_ranks:  # negatives from every rank: the effective batch is the global one
                z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
            terms["contrastive"] = self.contrastive_loss(z_a, z_b)  # type: ignore[misc]
        if w["identity"] > 0:
            terms["identity"] = self.l1_loss(out["idt_b"], b) + self.l1_loss(out["idt_a"], a)
        return terms, {"fake_a": out["fake_a"], "fake_b": out["fake_b"]}

    def _discriminator_losses(
        self, a: torch.Tensor, b: torch.Tensor, fake_a: torch.Tensor, fake_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LSGAN losses of D_A and D_B, ½[(D(real) − 1)² + D(fake)²], with one forward of the pair."""
        n_a, n_b = a.shape[0], b.shape[0]
        logits_a, logits_b = self.discriminators(torch.cat([a, fake_a]), torch.cat([b, fake_b]))
        losses = []
        for logits, n in ((logits_a, n_a), (logits_b, n_b)):
            real = self.adversarial_loss(logits[:n], target_is_real=True, for_discriminator=True)
            fake = self.adversarial_loss(logits[n:], target_is_real=False, for_discriminator=True)
            losses.append(0.5 * (real + fake))
        return losses[0], losses[1]

    def _iteration(self, engine: MultiConDoSTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        a = _plain(batchdata[self.keys[0]], engine.state.device, engine.non_blocking, self.memory_format)
        b = _plain(batchdata[self.keys[1]], engine.state.device, engine.non_blocking, self.memory_format)
        if self.weights["contrastive"] > 0 and a.shape[0] < 2:
            raise ValueError("the contrastive loss needs batches of at least 2 subjects (in-batch negatives).")
        device = torch.device(engine.state.device)

        # generator step, discriminators frozen
        self.generators.train()
        self.discriminators.requires_grad_(False)
        self.g_optimizer.zero_grad(set_to_none=True)
        with _autocast(device, self.amp):
            terms, images = self._generator_losses(a, b)
            g_total = sum(self.weights[name] * value for name, value in terms.items())
        losses = {name: value.item() for name, value in terms.items()}
        losses["g_total"] = g_total.item()  # type: ignore[union-attr]
        check_finite(losses, engine.state.epoch, engine.state.iteration)  # before any weight changes
        self.g_scaler.scale(g_total).backward()  # type: ignore[union-attr]
        self.g_scaler.step(self.g_optimizer)
        self.g_scaler.update()

        # discriminator step on pooled, detached fakes
        if self.weights["adversarial"] > 0:
            self.discriminators.train()
            self.discriminators.requires_grad_(True)
            self.d_optimizer.zero_grad(set_to_none=True)
            fake_b = self.pool_b.query(images["fake_b"].float())
            fake_a = self.pool_a.query(images["fake_a"].float())
            with _autocast(device, self.amp):
                loss_d_a, loss_d_b = self._discriminator_losses(a, b, fake_a, fake_b)
            losses["d_a"], losses["d_b"] = loss_d_a.item(), loss_d_b.item()
            check_finite({"d_a": losses["d_a"], "d_b": losses["d_b"]}, engine.state.epoch, engine.state.iteration)
            self.d_scaler.scale(loss_d_a + loss_d_b).backward()
            self.d_scaler.step(self.d_optimizer)
            self.d_scaler.update()
        losses = {name: losses[name] for name in LOSS_TERMS if name in losses}  # switched-off terms are absent

        return {
            "loss": losses["g_total"],
            "losses": losses,
            "a": a.detach(),
            "b": b.detach(),
            "fake_a": images["fake_a"].detach().float(),
            "fake_b": images["fake_b"].detach().float(),
        }


class TranslationEvaluator(Evaluator):
    """
    Validation of the pre-training: translates the paired validation slices in both directions.
    ``engine.state.output`` holds ``"a", "b", "fake_b"`` (= G_AB(a)) and ``"fake_a"`` (= G_BA(b)), so that MONAI
    metric handlers compare, e.g., ``(fake_b, b)`` and, as the identity-mapping reference, ``(a, b)``.

    Args:
        device: device to run on.
        val_data_loader: loader of paired slices.
        generators: the generator pair.
        keys: the batch keys of modality A and B.
        amp: bf16 autocast.
        kwargs: further arguments of ``monai.engines.Evaluator`` (``key_val_metric``, ``additional_metrics``,
            ``val_handlers``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        generators: MultiConDoSGenerators,
        keys: Sequence[str] = ("a", "b"),
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device, val_data_loader=val_data_loader, amp=amp, decollate=False, mode=ForwardMode.EVAL, **kwargs
        )
        self.generators = generators
        self.keys = list(keys)

    def _iteration(self, engine: TranslationEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        a = _plain(batchdata[self.keys[0]], engine.state.device, engine.non_blocking)
        b = _plain(batchdata[self.keys[1]], engine.state.device, engine.non_blocking)
        unwrap(self.generators).eval()
        with torch.no_grad(), _autocast(torch.device(engine.state.device), self.amp):
            generators = unwrap(self.generators)
            fake_b = generators.g_ab(a)[0].float()
            fake_a = generators.g_ba(b)[0].float()
        output = {"a": a, "b": b, "fake_a": fake_a, "fake_b": fake_b}
        if "subject" in batchdata:
            output["subject"] = batchdata["subject"]
        engine.state.output = output
        return output
