# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The Multi-ConDoS generator objective as one loss module: a weighted sum of named terms,

    L_G = w_adv * L_adv + w_cyc * L_cycle + w_pix * L_pix2pix + w_con * L_contrastive + w_loc * L_local_contrastive
          + w_idt * L_identity,

each term a small class that says which generator outputs it needs. The loss returns every term by name as a tensor
(no host synchronisation: the trainer reads them every ``log_interval`` iterations). A term whose weight is 0 is
neither computed nor returned (the paper's ablations). A new term is one class here plus one entry in the config's
``generator_loss#terms`` and ``generator_loss#weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from monai.losses import ContrastiveLoss, PatchAdversarialLoss
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AdversarialTerm",
    "ContrastiveTerm",
    "CycleTerm",
    "DeviceContrastiveLoss",
    "DevicePatchAdversarialLoss",
    "GeneratorLoss",
    "IdentityTerm",
    "LocalContrastiveTerm",
    "PairedL1Term",
    "Pix2PixTerm",
    "gather_with_grad",
    "contrastive_weights",
    "lsgan_discriminator_loss",
]

#: the ``contrastive`` config choices: the subject-level term (the paper's), the location-level one, or both
CONTRASTIVE_MODES: tuple[str, ...] = ("global", "local", "both")

#: generator outputs a term may ask for (``MultiConDoSGenerators.forward`` flags)
OUTPUT_FLAGS: tuple[str, ...] = ("cycle", "identity", "project", "project_local")


class Term(nn.Module):
    """A term of the generator objective. ``needs`` lists the ``OUTPUT_FLAGS`` it reads (besides ``fake_a/b``)."""

    needs: tuple[str, ...] = ()

    def forward(self, out: Mapping[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, **context: Any) -> torch.Tensor:
        raise NotImplementedError


class AdversarialTerm(Term):
    """LSGAN generator loss of both directions: D_B judges G_AB(a), D_A judges G_BA(b); needs ``discriminators``
    (unwrapped, frozen) in the context."""

    def __init__(self, criterion: Callable) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, out, a, b, discriminators: nn.Module | None = None, **context: Any) -> torch.Tensor:
        if discriminators is None:
            raise ValueError("the adversarial term needs the discriminators.")
        logits_a, logits_b = discriminators(out["fake_a"], out["fake_b"])
        return self.criterion(logits_b, target_is_real=True, for_discriminator=False) + self.criterion(
            logits_a, target_is_real=True, for_discriminator=False
        )


class PairedL1Term(Term):
    """
    A sum of L1 (or ``criterion``) distances between generator outputs and the real images, ``pairs`` naming
    ``(output, "a" | "b")``; the cycle, Pix2Pix and identity terms differ only in their pairs.
    """

    pairs: tuple[tuple[str, str], ...] = ()

    def __init__(self, criterion: Callable | None = None) -> None:
        super().__init__()
        self.criterion = criterion if criterion is not None else nn.L1Loss()

    def forward(self, out, a, b, **context: Any) -> torch.Tensor:
        real = {"a": a, "b": b}
        return sum(self.criterion(out[name], real[target]) for name, target in self.pairs)


class CycleTerm(PairedL1Term):
    """CycleGAN's cycle consistency, ``|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|``."""

    needs = ("cycle",)
    pairs = (("rec_a", "a"), ("rec_b", "b"))


class Pix2PixTerm(PairedL1Term):
    """Pix2Pix's paired L1 of co-registered slices, ``|G_AB(a) - b| + |G_BA(b) - a|``."""

    pairs = (("fake_b", "b"), ("fake_a", "a"))


class IdentityTerm(PairedL1Term):
    """CycleGAN's identity loss, ``|G_AB(b) - b| + |G_BA(a) - a|`` (off in the paper)."""

    needs = ("identity",)
    pairs = (("idt_b", "b"), ("idt_a", "a"))


class ContrastiveTerm(Term):
    """
    The multimodal contrastive loss (NT-Xent, e.g. MONAI ``ContrastiveLoss``) on the projected shared-bottleneck
    features of the same slice in the two modalities (positives) against the other samples (negatives).

    Args:
        criterion: ``(z_a, z_b) -> loss``.
        all_ranks: in a distributed run, draw negatives from every rank's batch (``gather_with_grad``).
    """

    needs = ("project",)

    def __init__(self, criterion: Callable, all_ranks: bool = False) -> None:
        super().__init__()
        self.criterion = criterion
        self.all_ranks = bool(all_ranks)

    def forward(self, out, a, b, **context: Any) -> torch.Tensor:
        z_a, z_b = out["z_a"].float(), out["z_b"].float()
        if z_a.shape[0] < 2:
            raise ValueError("the contrastive loss needs batches of at least 2 subjects (in-batch negatives).")
        if self.all_ranks:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        return self.criterion(z_a, z_b)


class LocalContrastiveTerm(Term):
    """
    The location-level (dense) multimodal contrastive loss on the dense projections ``q_a``, ``q_b`` of one encoder
    level (``MultiConDoSGenerators(local_level=...)``): the same location in the two modalities is a positive pair,
    other locations and other subjects are negatives; locations are drawn inside the slices' foreground (a voxel
    that is not background in A or in B).

    Args:
        criterion: ``(q_a, q_b, mask) -> loss``, e.g. ``bundle.dense_contrastive.DenseContrastiveLoss`` (which samples
            the locations and, in a distributed run, may gather them across ranks).
        backgrounds: the value of empty space in A and in B after their intensity rules (``mri``: 0, ``ct``/``pet``:
            -1); ``None``: every location may be drawn.
    """

    needs = ("project_local",)

    def __init__(self, criterion: Callable, backgrounds: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.criterion = criterion
        self.backgrounds = None if backgrounds is None else tuple(float(v) for v in backgrounds)

    def forward(self, out, a, b, **context: Any) -> torch.Tensor:
        mask = None
        if self.backgrounds is not None:
            mask = ((a != self.backgrounds[0]) | (b != self.backgrounds[1])).any(dim=1, keepdim=True)
        return self.criterion(out["q_a"], out["q_b"], mask)


def contrastive_weights(
    mode: str,
    lambda_contrastive: float,
    lambda_local_contrastive: float,
    local_level: str | None = None,
    local_samples: int = 1,
) -> dict[str, float]:
    """
    The weights of the ``contrastive`` (subject-level) and ``local_contrastive`` (location-level) terms for the
    config choice ``contrastive: global | local | both``; the term not chosen gets 0 (neither computed nor logged).

    Raises:
        ValueError: an unknown ``mode``; with the location-level term on, a ``local_level`` that is no
            ``BasicUNet`` encoder block or ``local_samples < 1``; each naming the id and the choices.
    """
    from .networks import ENCODER_BLOCKS

    if mode not in CONTRASTIVE_MODES:
        raise ValueError(f"contrastive must be one of {list(CONTRASTIVE_MODES)}, got {mode!r}.")
    weights = {
        "contrastive": float(lambda_contrastive) if mode in ("global", "both") else 0.0,
        "local_contrastive": float(lambda_local_contrastive) if mode in ("local", "both") else 0.0,
    }
    if weights["local_contrastive"] != 0:
        if local_level not in ENCODER_BLOCKS:
            raise ValueError(f"local_level must be one of {list(ENCODER_BLOCKS)}, got {local_level!r}.")
        if int(local_samples) < 1:
            raise ValueError(f"local_samples must be >= 1, got {local_samples}.")
    return weights


class GeneratorLoss(nn.Module):
    """
    The weighted sum of named terms. ``forward`` returns ``{name: term}`` for every term of non-zero weight plus
    ``"g_total"``, all tensors.

    Args:
        terms: ``{name: Term}``.
        weights: ``{name: weight >= 0}``; a term of weight 0 (or absent) is switched off.

    Raises:
        ValueError: a negative weight, a weight without a term, or every weight 0.
    """

    def __init__(self, terms: Mapping[str, Term], weights: Mapping[str, float]) -> None:
        super().__init__()
        weights = {name: float(w) for name, w in weights.items()}
        for name, w in weights.items():
            if w < 0:
                raise ValueError(f"lambda_{name} must be >= 0, got {w}.")
            if w > 0 and name not in terms:
                raise ValueError(f"generator_loss: a weight for '{name}' but no such term (terms: {sorted(terms)}).")
        if not any(weights.values()):
            raise ValueError("all loss weights are 0: nothing to train.")
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self.terms = nn.ModuleDict({name: terms[name] for name in self.weights})

    def output_flags(self) -> dict[str, bool]:
        """The ``MultiConDoSGenerators.forward`` flags the active terms need."""
        needed = {flag for term in self.terms.values() for flag in term.needs}
        return {flag: flag in needed for flag in OUTPUT_FLAGS}

    def uses(self, name: str) -> bool:
        """Whether term ``name`` is on (non-zero weight)."""
        return name in self.weights

    def forward(
        self, out: Mapping[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        values = {name: term(out, a, b, **context) for name, term in self.terms.items()}
        values["g_total"] = sum(self.weights[name] * value for name, value in values.items())
        return values


def lsgan_discriminator_loss(criterion: Callable, logits: torch.Tensor, n_real: int) -> torch.Tensor:
    """LSGAN loss of one discriminator on ``[real; fake]`` logits: ½[(D(real) − 1)² + D(fake)²]."""
    real = criterion(logits[:n_real], target_is_real=True, for_discriminator=True)
    fake = criterion(logits[n_real:], target_is_real=False, for_discriminator=True)
    return 0.5 * (real + fake)


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


class DevicePatchAdversarialLoss(PatchAdversarialLoss):
    """
    MONAI ``PatchAdversarialLoss`` with its target tensors made on the logits' device. MONAI's build a CPU tensor and
    copy it to the device on every call (``torch.tensor(1).fill_(label).type(input.type())``): on CUDA each such
    blocking copy synchronises the host with the device, six per pre-training step.
    """

    def get_target_tensor(self, input: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        label = self.real_label if target_is_real else self.fake_label
        return input.new_full((), label).expand_as(input)

    def get_zero_tensor(self, input: torch.Tensor) -> torch.Tensor:
        return input.new_zeros(()).expand_as(input)


class DeviceContrastiveLoss(ContrastiveLoss):
    """
    MONAI ``ContrastiveLoss`` (NT-Xent) with the temperature and the negatives' mask made on the features' device:
    MONAI's are built on the CPU and copied to the device on every call (two host synchronisations per step on
    CUDA). Same values.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if len(target.shape) > 2 or len(input.shape) > 2:
            raise ValueError(
                f"Either target or input has dimensions greater than 2 where target "
                f"shape is ({target.shape}) and input shape is ({input.shape})"
            )
        if target.shape != input.shape:
            raise ValueError(f"ground truth has differing shape ({target.shape}) from input ({input.shape})")
        batch_size = input.shape[0]
        negatives_mask = (~torch.eye(2 * batch_size, dtype=torch.bool, device=input.device)).to(input.dtype)
        features = torch.cat([input, target], dim=0)
        sim_matrix = F.cosine_similarity(features.unsqueeze(1), features.unsqueeze(0), dim=2)
        positives = torch.cat([torch.diag(sim_matrix, batch_size), torch.diag(sim_matrix, -batch_size)], dim=0)
        nominator = torch.exp(positives / self.temperature)
        denominator = negatives_mask * torch.exp(sim_matrix / self.temperature)
        return torch.sum(-torch.log(nominator / torch.sum(denominator, dim=1))) / (2 * batch_size)
