# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The location-level (dense) multimodal contrastive loss: NT-Xent over feature vectors sampled at the same locations of
two co-registered feature maps. The vector of a location in modality A and the vector of the same location in
modality B are a positive pair; every other sampled location, of the same or another subject, is a negative.

Sampling a fixed number of locations per image keeps the similarity matrix small (``2 x B x num_samples`` vectors)
and, in a distributed run, the same shape on every rank, so the vectors can be gathered with their gradient.
"""

from __future__ import annotations

import torch
from monai.losses import ContrastiveLoss
from torch.nn import functional as F
from torch.nn.modules.loss import _Loss

from .losses import gather_with_grad

__all__ = ["DenseContrastiveLoss", "downsample_mask", "sample_locations"]


def downsample_mask(mask: torch.Tensor, spatial_shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """
    A location mask at a feature map's resolution: a location is on when any input voxel it pools is on
    (adaptive max pooling, any number of spatial dimensions).

    Args:
        mask: ``(B, 1, *spatial)`` (or ``(B, *spatial)``), non-zero = on.
        spatial_shape: the feature map's spatial shape.

    Returns:
        a float ``(B, 1, *spatial_shape)`` mask of 0 and 1.
    """
    mask = mask.float()
    if mask.dim() == len(spatial_shape) + 1:
        mask = mask.unsqueeze(1)
    if tuple(mask.shape[2:]) == tuple(spatial_shape):
        return (mask != 0).float()
    pool = getattr(F, f"adaptive_max_pool{len(spatial_shape)}d")
    return (pool(mask, tuple(spatial_shape)) != 0).float()


def sample_locations(num_locations: int, num_samples: int, mask: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """
    Draw ``min(num_samples, num_locations)`` distinct flat location indices per image, uniformly among the locations
    of ``mask`` (topk of uniform scores lifted by the mask); an image with fewer masked locations takes the rest,
    uniformly, from outside its mask, so every image gives the same count.

    Args:
        num_locations: locations per image (the product of the spatial shape).
        num_samples: locations to draw per image.
        mask: ``(B, L)`` float, 1 inside, 0 outside; ``None``: every location is eligible.
        batch: the batch size ``B``.
        device: device of the indices.

    Returns:
        ``(B, K)`` long indices into the flattened spatial dimensions.
    """
    k = min(int(num_samples), int(num_locations))
    scores = torch.rand(batch, num_locations, device=device)
    if mask is not None:
        scores = scores + mask
    return scores.topk(k, dim=1, sorted=False).indices


class DenseContrastiveLoss(_Loss):
    """
    NT-Xent (MONAI ``ContrastiveLoss``) over location vectors: ``num_samples`` locations are drawn per image (inside
    ``mask`` when given), the vector of each location in ``input`` and in ``target`` form a positive pair, and the
    other ``2 x B x num_samples - 2`` sampled vectors are its negatives (other locations of the same image and all
    locations of the other images).

    Args:
        temperature: NT-Xent temperature.
        num_samples: locations drawn per image (all of them when the feature map has fewer).
        all_ranks: in a distributed run, gather the sampled vectors of every rank with their gradient
            (``gather_with_grad``), so the negatives come from the global batch.

    Raises:
        ValueError: ``num_samples < 1``.
    """

    def __init__(self, temperature: float = 0.5, num_samples: int = 64, all_ranks: bool = False) -> None:
        super().__init__()
        if int(num_samples) < 1:
            raise ValueError(f"local_samples must be >= 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.all_ranks = bool(all_ranks)
        self.nt_xent = ContrastiveLoss(temperature=temperature)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: ``(B, C, *spatial)`` feature map of modality A.
            target: ``(B, C, *spatial)`` feature map of modality B at the same locations.
            mask: ``(B, 1, *mask_spatial)`` locations to sample from (e.g. the images' foreground), at the feature
                maps' or any finer resolution (``downsample_mask``); ``None``: all locations.

        Raises:
            ValueError: shapes that differ, no spatial dimension, or a mask of another batch or dimensionality.
        """
        if input.shape != target.shape or input.dim() < 3:
            raise ValueError(
                f"dense contrastive loss: input and target must be equal (B, C, *spatial) maps, got "
                f"{tuple(input.shape)} and {tuple(target.shape)}."
            )
        batch, channels = input.shape[:2]
        if mask is not None:
            if mask.dim() != input.dim() or mask.shape[:2] != (batch, 1):
                raise ValueError(
                    f"dense contrastive loss: mask shape {tuple(mask.shape)}, expected (B={batch}, 1, *spatial) with "
                    f"{input.dim() - 2} spatial dimensions."
                )
            mask = downsample_mask(mask, input.shape[2:]).flatten(1)
        flat_a, flat_b = input.flatten(2), target.flatten(2)  # (B, C, L)
        idx = sample_locations(flat_a.shape[2], self.num_samples, mask, batch, input.device)
        idx = idx.unsqueeze(1).expand(-1, channels, -1)
        # (B, C, K) -> (B * K, C), the same locations in both modalities
        z_a = flat_a.gather(2, idx).transpose(1, 2).reshape(-1, channels).float()
        z_b = flat_b.gather(2, idx).transpose(1, 2).reshape(-1, channels).float()
        if self.all_ranks:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        return self.nt_xent(z_a, z_b)
