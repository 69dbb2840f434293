# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Speed switches of the workflows that leave the method unchanged: the instance normalisations run as PyTorch's
group-norm kernel, the channels-last layout of the weights, ``torch.compile`` without graph breaks, and the
process-wide TF32 and cuDNN switches. Each is a config id; the training configs list them in ``speed_ids`` (recorded
in a run's settings, a resume may change them; they change numerics within tolerance).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

__all__ = [
    "apply_speed_switches",
    "instance_norm_as_group_norm",
    "maybe_compile",
    "set_speed_switches",
    "to_channels_last",
    "trace_skipped_calls",
]

_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _as_group_norm(norm: nn.modules.instancenorm._InstanceNorm) -> nn.GroupNorm:
    """The ``nn.GroupNorm`` with one group per channel equal to ``norm``, holding ``norm``'s own parameters."""
    group = nn.GroupNorm(norm.num_features, norm.num_features, eps=norm.eps, affine=norm.affine)
    if norm.affine:
        group.weight, group.bias = norm.weight, norm.bias
    return group


def instance_norm_as_group_norm(module: nn.Module, enabled: bool = True) -> nn.Module:
    """
    Replace, in place when ``enabled``, every instance normalisation of ``module`` without running statistics
    (``nn.InstanceNorm1d/2d/3d``, as MONAI's ``Norm.INSTANCE`` builds them in ``BasicUNet`` and
    ``PatchDiscriminator``) by the equal ``nn.GroupNorm`` with one group per channel: the same normalisation over
    each sample's and channel's spatial positions, the same ``eps``, the same parameter objects and names, so state
    dicts, checkpoints and shared (domain sharing) blocks are unchanged.

    PyTorch computes ``instance_norm`` as a batch norm over a reshaped input with its affine parameters repeated per
    sample, which costs about nine extra tensor operations per layer and step (repeats, their backward sums and
    copies); ``group_norm`` is one kernel forward and one backward. ``scripts/benchmark_switch.py --switch
    "{'group_norm_kernel': False}"`` (batch 8, 64x64, one CPU thread) printed 2991 against 1899 tensor ops per
    pre-training step and 725 against 455 per fine-tuning step, the instance norms 1.045x and 1.117x slower; where
    the step is bound by kernel launches (a GPU at batch 16) the operations count most. Under bf16 autocast
    ``group_norm`` runs in float32 (PyTorch's autocast policy). Norms that track running statistics are left as they
    are (they differ from a group norm in eval mode).
    """
    if not enabled:
        return module
    replaced: dict[int, nn.GroupNorm] = {}  # a shared norm becomes one shared group norm
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _INSTANCE_NORMS) and not child.track_running_stats:
                group = replaced.setdefault(id(child), _as_group_norm(child))
                group.train(child.training)
                setattr(parent, name, group)
    return module


def to_channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """
    ``module`` with its 4-D weights in the NHWC (channels-last) layout, in place, when ``enabled``: PyTorch's advice
    for channels-last inputs, so that cuDNN does not convert the weights at every call. State dicts keep their names
    and values (a loaded checkpoint is copied into the layout).
    """
    return module.to(memory_format=torch.channels_last) if enabled else module


def trace_skipped_calls(module: nn.Module, enabled: bool = True) -> nn.Module:
    """
    Let ``torch.compile`` trace ``module``'s forward without graph breaks at calls that dynamo skips on purpose (in
    place, when ``enabled``): MONAI's ``BasicUNet`` up-sampling blocks call ``torch.jit.isinstance``, which dynamo
    marks as skipped, so that each of them splits the graph (a 2-D ``BasicUNet``: 9 graphs and 8 breaks per forward;
    the generator pair: 11 graphs, 10 breaks; with this: 1 graph each). ``torch._dynamo.dont_skip_tracing`` (when
    this torch has it) traces into them instead. Parameter names and checkpoints are unchanged.
    """
    dont_skip = getattr(torch._dynamo, "dont_skip_tracing", None)
    if enabled and dont_skip is not None:
        # bound to the module as a method, so that a deep copy calls its own forward, not the original's
        module.forward = types.MethodType(dont_skip(type(module).forward), module)  # type: ignore[method-assign]
    return module


def maybe_compile(
    module: nn.Module, enabled: bool = False, backend: str = "inductor", mode: str | None = None
) -> nn.Module:
    """
    ``module.compile(backend=backend, mode=mode)`` (in place: parameter names and checkpoints stay unchanged) when
    ``enabled``, traced without the graph breaks of skipped calls (``trace_skipped_calls``);
    ``mode="reduce-overhead"`` replays CUDA graphs. On torch 2.13 CPU the inductor backend fails on ``BasicUNet``'s
    backward; ``aot_eager`` works there.
    """
    if enabled:
        trace_skipped_calls(module)
        module.compile(backend=backend, mode=mode)
    return module


def apply_speed_switches(
    module: nn.Module,
    group_norm_kernel: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    backend: str = "inductor",
    mode: str | None = None,
) -> nn.Module:
    """
    The per-network speed switches of pre-training, in place and in the order they must run (the norms and the layout
    before ``torch.compile`` captures the module): ``instance_norm_as_group_norm``, ``to_channels_last``,
    ``maybe_compile``. ``configs/pretrain.yaml`` applies it to its generators and discriminators.
    """
    module = instance_norm_as_group_norm(module, group_norm_kernel)
    return maybe_compile(to_channels_last(module, channels_last), compile, backend, mode)


def set_speed_switches(tf32: bool | None = None, cudnn_benchmark: bool = False) -> dict[str, Any]:
    """
    The process-wide switches that trade exactness for GPU speed: ``tf32`` (TF32 matmuls and convolutions on Ampere
    and later; None leaves PyTorch's default: convolutions TF32, matmuls not) and ``cudnn_benchmark`` (cuDNN picks the
    fastest, possibly non-deterministic, algorithm per shape). Call after ``monai.utils.set_determinism``, which
    switches the benchmark off. Returns the values in effect.
    """
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if cudnn_benchmark:
        torch.backends.cudnn.deterministic = False
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
