# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Networks of Multi-ConDoS that MONAI lacks: a BasicUNet translation generator that also returns its bottleneck
feature, a generator pair with domain sharing layers, the contrastive projection heads (global and dense) and the image
pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers import Conv
from monai.networks.nets import BasicUNet
from monai.networks.utils import normal_init
from torch import nn

__all__ = [
    "BASIC_UNET_BLOCKS",
    "DenseProjectionHead",
    "DiscriminatorPair",
    "ENCODER_BLOCKS",
    "ImagePool",
    "PER_SAMPLE_NORMS",
    "MultiConDoSGenerators",
    "ProjectionHead",
    "TranslationGenerator",
    "share_blocks",
    "unwrap",
]

#: MONAI ``Norm`` names that normalise each sample on its own (a batch of inputs gives each input's own result)
PER_SAMPLE_NORMS = ("instance", "group", "layer", "instance_nvfuser")

#: the named child blocks of ``monai.networks.nets.BasicUNet`` (encoder, bottleneck, decoder), input to output
BASIC_UNET_BLOCKS: tuple[str, ...] = (
    "conv_0",
    "down_1",
    "down_2",
    "down_3",
    "down_4",
    "upcat_4",
    "upcat_3",
    "upcat_2",
    "upcat_1",
    "final_conv",
)

#: the encoder blocks of ``BasicUNet`` (``down_4`` is the bottleneck), whose outputs a dense contrastive loss may read
ENCODER_BLOCKS: tuple[str, ...] = BASIC_UNET_BLOCKS[:5]


class TranslationGenerator(nn.Module):
    """
    An image-to-image generator: a MONAI ``BasicUNet`` followed by tanh, returning the bottleneck feature too.

    The wrapped network is kept as ``self.unet`` so that its ``state_dict`` loads unchanged into a plain
    ``BasicUNet`` (the fine-tuning segmentation network).

    Args:
        unet: the ``BasicUNet`` to wrap.
        return_features: return the bottleneck feature too (training); ``False`` returns the image only
            (translation with a MONAI inferer).
    """

    def __init__(self, unet: BasicUNet, return_features: bool = True) -> None:
        super().__init__()
        self.unet = unet
        self.return_features = bool(return_features)

    def forward(self, x: torch.Tensor, level: str | None = None) -> tuple[torch.Tensor, ...] | torch.Tensor:
        """
        Args:
            x: the input image.
            level: an ``ENCODER_BLOCKS`` name whose output is returned too (the dense contrastive features).

        Returns:
            the translated image in [-1, 1] and (``return_features``) the bottleneck feature (output of ``down_4``),
            then (``level``) that encoder block's output.
        """
        # BasicUNet.forward does not expose the bottleneck, so its (short) forward pass is spelled out here.
        net = self.unet
        x0 = net.conv_0(x)
        x1 = net.down_1(x0)
        x2 = net.down_2(x1)
        x3 = net.down_3(x2)
        x4 = net.down_4(x3)
        u4 = net.upcat_4(x4, x3)
        u3 = net.upcat_3(u4, x2)
        u2 = net.upcat_2(u3, x1)
        u1 = net.upcat_1(u2, x0)
        image = torch.tanh(net.final_conv(u1))
        if not self.return_features:
            return image
        if level is None:
            return image, x4
        return image, x4, dict(zip(ENCODER_BLOCKS, (x0, x1, x2, x3, x4)))[level]


class ProjectionHead(nn.Module):
    """
    SimCLR-style projection head: global average pooling, Linear, ReLU, Linear.

    Args:
        in_features: channels of the feature map (the bottleneck width).
        hidden_features: width of the hidden layer.
        out_features: dimension of the projected vector.
    """

    def __init__(self, in_features: int = 256, hidden_features: int = 256, out_features: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_features), nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project a ``(B, C, *spatial)`` feature map to ``(B, out_features)``."""
        return self.mlp(features.flatten(2).mean(dim=2))


class DenseProjectionHead(nn.Module):
    """
    The projection head of the dense (location-level) contrastive loss: 1x1 convolution, ReLU, 1x1 convolution, so
    every location of a feature map gets its own projected vector (DenseCL, Wang et al., CVPR 2021).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the feature map.
        hidden_channels: width of the hidden layer.
        out_channels: dimension of each projected vector.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int, out_channels: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.mlp = nn.Sequential(
            conv(in_channels, hidden_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(hidden_channels, out_channels, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project a ``(B, C, *spatial)`` feature map to ``(B, out_channels, *spatial)``."""
        return self.mlp(features)


def share_blocks(source: nn.Module, target: nn.Module, block_names: Sequence[str]) -> None:
    """
    Make ``target`` use the very same module instances as ``source`` for ``block_names`` (domain sharing layers).

    Raises:
        ValueError: when a name is not a child block of both networks, or is repeated.
    """
    names = list(block_names)
    if len(set(names)) != len(names):
        raise ValueError(f"shared_blocks has repeated names: {names}.")
    available = [name for name, _ in source.named_children()]
    for name in names:
        if name not in available or not hasattr(target, name):
            raise ValueError(f"shared_blocks: unknown block '{name}'; choose from {available}.")
        setattr(target, name, getattr(source, name))


class MultiConDoSGenerators(nn.Module):
    """
    The two translation generators G_AB and G_BA of Multi-ConDoS with their domain sharing layers, plus the
    projection head of the multimodal contrastive loss (and, with ``local_level``, the dense projection head of the
    location-level one).

    Both generators are 2-D (or 3-D) MONAI ``BasicUNet`` networks with a tanh output. The blocks named in
    ``shared_blocks`` are the same module instances in both generators, so they learn domain-sharing features;
    the other blocks stay domain-specific. Because the pair is one module, ``parameters()`` lists each shared
    tensor once (a deduplicated generator optimizer) and it can be wrapped as one module by DDP.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels of each generator.
        out_channels: output channels of each generator.
        features: the six ``BasicUNet`` feature widths.
        shared_blocks: ``BasicUNet`` block names shared by both generators, e.g. ``("down_4", "upcat_4")``;
            empty gives two independent generators.
        projection_hidden: hidden width of the projection head.
        projection_dim: output dimension of the projection head.
        init_std: standard deviation of the N(0, std) initialisation of conv/linear weights (CycleGAN: 0.02);
            ``None`` keeps the PyTorch defaults.
        act: activation of ``BasicUNet``.
        norm: normalisation of ``BasicUNet``.
        upsample: upsampling mode of ``BasicUNet``.
        local_level: an ``ENCODER_BLOCKS`` name: build the dense projection head (``local_head``, 1x1 convolutions,
            hidden width the block's width) on that block's output for the location-level contrastive loss; ``None``
            (the default) builds none, and the pair is exactly the subject-level-only one (same tensors, same
            random initialisation).
        local_projection_dim: output dimension of the dense projection head.
        batch_cycle: run G_AB on ``a`` and on ``fake_a`` = G_BA(b) as one batch (3 generator calls per step
            instead of 4: the same results, since conv layers and per-sample norms treat samples independently;
            ``scripts/benchmark_switch.py --switch "{'generators_def#batch_cycle': False}"`` printed 1562 against
            1899 tensor ops per pre-training step on a CPU; on a GPU, where a small-batch step is bound by kernel
            launches, not measured yet). Only with a per-sample ``norm`` (instance, group, layer); with batch norm
            the calls stay separate.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        shared_blocks: Sequence[str] = ("down_4", "upcat_4"),
        projection_hidden: int = 256,
        projection_dim: int = 128,
        init_std: float | None = 0.02,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        upsample: str = "deconv",
        local_level: str | None = None,
        local_projection_dim: int = 128,
        batch_cycle: bool = True,
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"features must have 6 entries (BasicUNet), got {list(features)}.")
        if local_level is not None and local_level not in ENCODER_BLOCKS:
            raise ValueError(f"local_level: unknown encoder block '{local_level}'; choose from {list(ENCODER_BLOCKS)}.")
        self.local_level = local_level
        norm_name = (norm if isinstance(norm, str) else norm[0]).lower()
        self.batch_cycle = bool(batch_cycle) and norm_name in PER_SAMPLE_NORMS
        self.network_args: dict[str, Any] = {
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "features": [int(f) for f in features],
            "act": act,
            "norm": norm,
            "upsample": upsample,
        }
        self.shared_blocks = list(shared_blocks)
        unets = [BasicUNet(**self.network_args) for _ in range(2)]
        self.head = ProjectionHead(int(features[4]), projection_hidden, projection_dim)
        if init_std is not None:
            for module in [*unets, self.head]:
                module.apply(lambda m: normal_init(m, std=init_std))
        if local_level is not None:  # built and initialised last: the other tensors draw the same random numbers
            width = int(features[ENCODER_BLOCKS.index(local_level)])
            self.local_head = DenseProjectionHead(int(spatial_dims), width, width, int(local_projection_dim))
            if init_std is not None:
                self.local_head.apply(lambda m: normal_init(m, std=init_std))
        share_blocks(unets[0], unets[1], self.shared_blocks)
        self.g_ab = TranslationGenerator(unets[0])
        self.g_ba = TranslationGenerator(unets[1])

    def shared_parameter_names(self) -> list[str]:
        """Names (relative to a ``BasicUNet``) of the tensors that both generators share."""
        ab = dict(self.g_ab.unet.named_parameters())
        ba = dict(self.g_ba.unet.named_parameters())
        return [name for name, p in ab.items() if name in ba and ba[name] is p]

    def export_state(self) -> dict[str, Any]:
        """The weights of ``generators.pt``: the plain ``BasicUNet`` state dicts of G_AB and G_BA."""
        return {
            "g_ab": {k: v.detach().cpu().clone() for k, v in self.g_ab.unet.state_dict().items()},
            "g_ba": {k: v.detach().cpu().clone() for k, v in self.g_ba.unet.state_dict().items()},
        }

    def network_record(self) -> dict[str, Any]:
        """The network part of ``generators.json``: what rebuilds each generator (``BasicUNet(**args)`` + tanh)."""
        return {
            "target": "monai.networks.nets.BasicUNet",
            "args": dict(self.network_args),
            "output_activation": "tanh",
            "shared_blocks": list(self.shared_blocks),
        }

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        cycle: bool = True,
        identity: bool = False,
        project: bool = True,
        project_local: bool = False,
    ) -> dict[str, torch.Tensor]:
        """
        Every generator output one training step needs, in one call (so that a ``DistributedDataParallel`` wrapper of
        the pair sees one forward per step and reduces each shared tensor's gradient once).

        Returns:
            ``fake_b`` = G_AB(a), ``fake_a`` = G_BA(b); with ``cycle`` ``rec_a`` = G_BA(fake_b), ``rec_b`` =
            G_AB(fake_a); with ``identity`` ``idt_b`` = G_AB(b), ``idt_a`` = G_BA(a); with ``project`` ``z_a``,
            ``z_b``: the projected shared-bottleneck features of a (through G_AB) and b (through G_BA); with
            ``project_local`` ``q_a``, ``q_b``: the dense projections (``local_head``) of the ``local_level`` feature
            maps of a (through G_AB) and b (through G_BA), ``(B, local_projection_dim, *spatial)``.

        Raises:
            ValueError: ``project_local`` without a ``local_level``.
        """
        if project_local and self.local_level is None:
            raise ValueError("the local contrastive loss needs MultiConDoSGenerators(local_level=...).")
        level = self.local_level if project_local else None
        if cycle and self.batch_cycle:  # G_AB on a and on fake_a in one call
            fake_a, *rest_b = self.g_ba(b, level)
            fake_b_rec_b, *rest = self.g_ab(torch.cat([a, fake_a]), level)
            fake_b, rec_b = fake_b_rec_b.split(a.shape[0])
            rest_a = [r[: a.shape[0]] for r in rest]
        else:
            fake_b, *rest_a = self.g_ab(a, level)
            fake_a, *rest_b = self.g_ba(b, level)
        out = {"fake_a": fake_a, "fake_b": fake_b}
        if cycle:
            out["rec_a"] = self.g_ba(fake_b)[0]
            out["rec_b"] = rec_b if self.batch_cycle else self.g_ab(fake_a)[0]
        if identity:
            out["idt_b"], out["idt_a"] = self.g_ab(b)[0], self.g_ba(a)[0]
        if project:
            out["z_a"], out["z_b"] = self.head(rest_a[0]), self.head(rest_b[0])
        if project_local:
            out["q_a"], out["q_b"] = self.local_head(rest_a[1]), self.local_head(rest_b[1])
        return out


class DiscriminatorPair(nn.Module):
    """
    The discriminators D_A (judging modality A) and D_B, as one module whose forward runs both and returns their
    logits (the last output of MONAI ``PatchDiscriminator``). One forward per step keeps ``DistributedDataParallel``
    happy: real and fake images are concatenated along the batch (the instance-normalised PatchGAN treats samples
    independently, so the result equals two separate calls).

    Args:
        d_a: discriminator of modality A.
        d_b: discriminator of modality B.
    """

    def __init__(self, d_a: nn.Module, d_b: nn.Module) -> None:
        super().__init__()
        self.d_a = d_a
        self.d_b = d_b

    @staticmethod
    def _logits(out: Any) -> torch.Tensor:
        return out[-1] if isinstance(out, (list, tuple)) else out

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits of D_A on ``x_a`` and of D_B on ``x_b``."""
        return self._logits(self.d_a(x_a)), self._logits(self.d_b(x_b))


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or the module itself)."""
    return getattr(module, "module", module)


class ImagePool:
    """
    History buffer of generated images (CycleGAN's image pool): while it fills, each query returns its images and
    stores them; once full, each query returns, per image, with probability 0.5 a stored image (replacing it by the
    new one) and otherwise the new image. The discriminators thereby see a history of fakes, which stabilises GAN
    training.

    The stored images are one tensor on the queried images' device and a query is a few batched tensor operations
    with random draws on that device: no Python loop per image and no host synchronisation (the list-based pool read
    two random numbers on the host per image). Images of one query are handled as CycleGAN's loop handles them in
    order: when two of them draw the same slot, the later one returns the image the earlier one stored there.

    Args:
        pool_size: number of stored images; 0 disables the pool (queries return their input).
    """

    def __init__(self, pool_size: int = 50) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}.")
        self.pool_size = int(pool_size)
        self.images: torch.Tensor | None = None  # (pool_size, *image_shape) once the first query arrives
        self.num_images = 0  # filled slots (counted on the host: filling is not random)

    def __len__(self) -> int:
        return self.num_images

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape drawn from the new ``images`` and the history (detached)."""
        images = images.detach()
        if self.pool_size == 0:
            return images
        if self.images is None:
            self.images = images.new_zeros((self.pool_size, *images.shape[1:]))
        elif self.images.device != images.device or self.images.dtype != images.dtype:
            self.images = self.images.to(device=images.device, dtype=images.dtype)  # restored from a checkpoint
        if self.images.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"image pool: images of shape {list(images.shape[1:])} for a pool of {list(self.images.shape[1:])}."
            )
        n_fill = min(images.shape[0], self.pool_size - self.num_images)
        if n_fill > 0:  # filling: the first images are stored and returned as they are
            self.images[self.num_images : self.num_images + n_fill] = images[:n_fill]
            self.num_images += n_fill
        rest = images[n_fill:]
        if rest.shape[0] == 0:
            return images
        swap = torch.rand(rest.shape[0], device=images.device) > 0.5
        slot = torch.randint(0, self.pool_size, (rest.shape[0],), device=images.device)
        return torch.cat([images[:n_fill], self._swap(rest, swap, slot)])

    def _swap(self, images: torch.Tensor, swap: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """
        The full pool's step for ``images`` with the draws ``swap`` (return a stored image) and ``slot`` (which one),
        equal to handling the images one by one in order; updates the pool and returns the output images.
        """
        n, pool = images.shape[0], self.images
        order = torch.arange(n, device=images.device)
        # same[i, j]: image i (earlier) and image j both swap with the same slot
        same = (slot[:, None] == slot[None, :]) & swap[:, None] & swap[None, :]
        earlier = torch.where(same & (order[:, None] < order[None, :]), order[:, None], -1).amax(dim=0)
        later = (same & (order[:, None] > order[None, :])).any(dim=0)
        # output j: itself, else what the latest earlier image of its slot stored there, else the stored image
        source = torch.where(swap, torch.where(earlier >= 0, pool.shape[0] + earlier, slot), pool.shape[0] + order)
        out = torch.cat([pool, images]).index_select(0, source)
        # each slot keeps the last image that swapped with it (writer -1: the slot is unchanged)
        slots = torch.arange(pool.shape[0], device=images.device)
        writes = (slot[:, None] == slots[None, :]) & (swap & ~later)[:, None]
        writer = torch.where(writes, order[:, None], -1).amax(dim=0)
        keep = (writer < 0).view(-1, *([1] * (images.dim() - 1)))
        self.images = torch.where(keep, pool, images.index_select(0, writer.clamp(min=0)))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: the stored images as one ``(n, *image_shape)`` tensor on the CPU."""
        stored = self.images[: self.num_images].cpu() if self.images is not None else torch.zeros(0)
        return {"pool_size": self.pool_size, "images": stored}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the stored images, from this format or the earlier list of ``(1, *image_shape)`` tensors (moved
        to the device of the next query's inputs)."""
        self.pool_size = int(state["pool_size"])
        stored = state["images"]
        if isinstance(stored, (list, tuple)):
            stored = torch.cat(list(stored)) if len(stored) else torch.zeros(0)
        self.num_images = int(stored.shape[0]) if stored.dim() > 1 else 0
        if self.num_images > self.pool_size:
            raise ValueError(f"image pool state holds {self.num_images} images for a pool of {self.pool_size}.")
        self.images = None
        if self.num_images:
            self.images = stored.new_zeros((self.pool_size, *stored.shape[1:]))
            self.images[: self.num_images] = stored
