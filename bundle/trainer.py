# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""The Multi-ConDoS pre-training step (two generators, two discriminators) and the translation evaluator, as
MONAI engines so that MONAI/ignite handlers (stats, TensorBoard, checkpoints, validation) work unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import Evaluator, Trainer
from monai.utils import ForwardMode
from torch import nn
from torch.optim import Optimizer

from .finite import finite_step
from .losses import GeneratorLoss, lsgan_discriminator_loss
from .networks import ImagePool, MultiConDoSGenerators, unwrap

__all__ = ["LOSS_TERMS", "MultiConDoSTrainer", "TranslationEvaluator", "amp_dtype", "linear_decay_lambda"]

#: the loss terms logged by name for every iteration
LOSS_TERMS: tuple[str, ...] = (
    "g_total",
    "adversarial",
    "cycle",
    "pix2pix",
    "contrastive",
    "local_contrastive",
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


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """
    The autocast dtype of ``amp`` on ``device``: bf16 where supported (no loss scaling needed), else fp16 (CUDA
    GPUs without bf16). MONAI's engines take it as ``amp_kwargs={"dtype": ...}`` (their default is fp16).
    """
    if torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, enabled: bool) -> Any:
    """``amp_dtype`` autocast on ``device`` when ``enabled``."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


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
    Multi-ConDoS self-supervised pre-training: per iteration one generator step (discriminators frozen) on the
    objective ``generator_loss`` (``bundle.losses.GeneratorLoss``: the weighted adversarial, cycle, Pix2Pix,
    contrastive and identity terms), then one discriminator step (LSGAN, on fakes from the image pools), in CycleGAN's
    order. A term of weight 0 is neither computed nor logged (the paper's ablations); without the adversarial term the
    discriminator step is skipped as well.

    Each batch is a dict holding co-registered slices of the two modalities under ``keys[0]`` (A) and
    ``keys[1]`` (B). ``engine.state.output`` holds ``"loss"`` (L_G), ``"losses"`` (every term by name as a detached
    0-d tensor: read them every ``log_interval`` iterations, e.g. ``StatsHandler`` with
    ``output_transform=lambda x: x["losses"]``, so that no step waits for the device) and the images
    ``"a", "b", "fake_a", "fake_b"`` and ``"gradients"`` (the gradient norms ``g_gradients``, ``d_gradients`` as
    0-d tensors, absent under fp16 loss scaling). The step has no host synchronisation: a G or D step whose terms or
    gradients are not finite is skipped on the device (``bundle.finite.finite_step``; the optimizers should be
    ``fused``, others wait for the device on each step), and ``bundle.handlers.DivergenceGuard`` (with
    ``output_transform=lambda x: x["losses"]``, ``gradients_transform=lambda x: x["gradients"]``) stops the run within
    its ``interval``, naming the term.

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
        generator_loss: the generator objective.
        adversarial_loss: the discriminators' criterion, e.g.
            ``PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)``.
        keys: the batch keys of modality A and B.
        image_pool_size: size of each discriminator's history of fakes (0: none).
        epoch_length: iterations per epoch (default: one pass over the loader).
        amp: mixed precision (bf16 autocast; fp16 with separate GradScalers for G and D where bf16 is missing).
        train_handlers: MONAI/ignite handlers to attach.
        channels_last: NHWC memory format for the step's tensors.
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
        generator_loss: GeneratorLoss,
        adversarial_loss: Callable | None = None,
        keys: Sequence[str] = ("a", "b"),
        image_pool_size: int = 50,
        epoch_length: int | None = None,
        amp: bool = False,
        train_handlers: Sequence | None = None,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        if len(keys) != 2:
            raise ValueError(f"keys must name the two modalities [A, B], got {list(keys)}.")
        if generator_loss.uses("adversarial") and adversarial_loss is None:
            raise ValueError("the adversarial term needs an adversarial_loss for the discriminator step.")
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
        self.generator_loss = generator_loss
        self.adversarial_loss = adversarial_loss
        self.keys = list(keys)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        use_scaler = bool(amp) and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported()
        self.g_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        # torch.compile(mode="reduce-overhead") replays CUDA graphs: each step is marked as a new one
        compiled = [getattr(m, "_compiled_call_impl", None) is not None for m in (generators, discriminators)]
        self._compiled = any(compiled)

    def _discriminator_losses(
        self, a: torch.Tensor, b: torch.Tensor, fake_a: torch.Tensor, fake_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LSGAN losses of D_A and D_B with one forward of the pair (real and fake concatenated)."""
        logits_a, logits_b = self.discriminators(torch.cat([a, fake_a]), torch.cat([b, fake_b]))
        return (
            lsgan_discriminator_loss(self.adversarial_loss, logits_a, a.shape[0]),
            lsgan_discriminator_loss(self.adversarial_loss, logits_b, b.shape[0]),
        )

    def _iteration(self, engine: MultiConDoSTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        a = _plain(batchdata[self.keys[0]], engine.state.device, engine.non_blocking, self.memory_format)
        b = _plain(batchdata[self.keys[1]], engine.state.device, engine.non_blocking, self.memory_format)
        device = torch.device(engine.state.device)

        if self._compiled:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: CUDA graph outputs of the last one may be reused

        # generator step, discriminators frozen (used unwrapped: the D step goes through the DDP wrapper)
        self.generators.train()
        self.discriminators.requires_grad_(False)
        self.g_optimizer.zero_grad(set_to_none=True)
        with _autocast(device, self.amp):
            out = self.generators(a, b, **self.generator_loss.output_flags())  # one forward of the (DDP) pair
            terms = self.generator_loss(out, a, b, discriminators=unwrap(self.discriminators))
        self.g_scaler.scale(terms["g_total"]).backward()
        # skipped on the device when a term or gradient is not finite: no host synchronisation
        gradients = {"g_gradients": finite_step(self.g_optimizer, terms.values(), self.g_scaler)}
        losses = {name: value.detach() for name, value in terms.items()}

        # discriminator step on pooled, detached fakes
        if self.generator_loss.uses("adversarial"):
            self.discriminators.train()
            self.discriminators.requires_grad_(True)
            self.d_optimizer.zero_grad(set_to_none=True)
            fake_b = self.pool_b.query(out["fake_b"].float())
            fake_a = self.pool_a.query(out["fake_a"].float())
            with _autocast(device, self.amp):
                loss_d_a, loss_d_b = self._discriminator_losses(a, b, fake_a, fake_b)
            self.d_scaler.scale(loss_d_a + loss_d_b).backward()
            gradients["d_gradients"] = finite_step(self.d_optimizer, (loss_d_a, loss_d_b), self.d_scaler)
            losses.update({"d_a": loss_d_a.detach(), "d_b": loss_d_b.detach()})
        order = [name for name in LOSS_TERMS if name in losses] + sorted(set(losses) - set(LOSS_TERMS))

        return {
            "loss": losses["g_total"],
            "losses": {name: losses[name] for name in order},  # switched-off terms are absent
            "gradients": {name: norm for name, norm in gradients.items() if norm is not None},
            "a": a.detach(),
            "b": b.detach(),
            "fake_a": out["fake_a"].detach().float(),
            "fake_b": out["fake_b"].detach().float(),
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
