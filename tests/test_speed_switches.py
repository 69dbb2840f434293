"""amp, channels_last, the group-norm kernel and compile leave the pre-training step's results correct (a few steps,
within tolerance); compiled networks trace as one graph (no graph breaks, which would leave CUDA graphs little to
capture)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from monai.networks.nets import BasicUNet
from torch._dynamo.utils import counters

from bundle.networks import MultiConDoSGenerators
from bundle.speed import apply_speed_switches, instance_norm_as_group_norm, maybe_compile, trace_skipped_calls
from conftest import (
    TINY_NET,
    build_trainer,
    config_path,
    make_workflow,
    paired_batches,
    run_workflow,
    scratch_finetune_overrides,
)


def _steps(n: int = 2, **kwargs) -> tuple[list[dict], dict]:
    batches = paired_batches(n_batches=n)
    compile_backend = kwargs.pop("compile_backend", None)
    group_norm_kernel = kwargs.pop("group_norm_kernel", False)
    trainer = build_trainer(batches, **kwargs)
    instance_norm_as_group_norm(trainer.generators, group_norm_kernel)
    instance_norm_as_group_norm(trainer.discriminators, group_norm_kernel)
    if compile_backend:
        maybe_compile(trainer.generators, True, compile_backend)
        maybe_compile(trainer.discriminators, True, compile_backend)
    losses = [trainer._iteration(trainer, b)["losses"] for b in batches]
    return losses, {k: v.detach().clone() for k, v in trainer.generators.state_dict().items()}


def _close(a: list[dict], b: list[dict], rtol: float) -> None:
    for step_a, step_b in zip(a, b):
        for name in step_a:
            assert step_b[name] == pytest.approx(step_a[name], rel=rtol, abs=1e-4), name


def test_channels_last_gives_the_same_steps():
    ref_losses, ref_state = _steps()
    losses, state = _steps(channels_last=True)
    _close(ref_losses, losses, 1e-4)
    for key, value in ref_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-3, msg=key)


def _norms(module: torch.nn.Module, kind: type) -> list[torch.nn.Module]:
    return list({id(m): m for m in module.modules() if isinstance(m, kind)}.values())


def test_group_norm_kernel_gives_the_same_steps():
    ref_losses, ref_state = _steps()
    losses, state = _steps(group_norm_kernel=True)
    _close(ref_losses, losses, 1e-4)
    assert list(state) == list(ref_state)  # checkpoints keep their parameter names
    for key, value in ref_state.items():  # Adam moves a conv bias before a norm (gradient ~0) by lr per step
        torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-3, msg=key)


def test_instance_norm_as_group_norm_keeps_parameters_sharing_and_results():
    generators = MultiConDoSGenerators(features=TINY_NET["features"], projection_dim=8)
    with torch.no_grad():
        for norm in _norms(generators, torch.nn.InstanceNorm2d):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    instance_norms = _norms(generators, torch.nn.InstanceNorm2d)
    parameters = dict(generators.named_parameters())
    reference = generators(a, b)
    generators.eval()
    reference_eval = generators(a, b)
    instance_norm_as_group_norm(generators.train())
    group_norms = _norms(generators, torch.nn.GroupNorm)
    assert not _norms(generators, torch.nn.InstanceNorm2d) and len(group_norms) == len(instance_norms)
    assert all(g.num_groups == g.num_channels for g in group_norms)
    assert all(parameters[name] is p for name, p in generators.named_parameters())  # the same tensors, names
    shared = generators.shared_blocks[0]
    assert getattr(generators.g_ab.unet, shared) is getattr(generators.g_ba.unet, shared)
    assert not set(map(id, _norms(getattr(generators.g_ab.unet, shared), torch.nn.InstanceNorm2d)))
    for key, value in reference.items():
        torch.testing.assert_close(generators(a, b)[key], value, rtol=1e-4, atol=1e-5, msg=key)
    generators.eval()
    for key, value in reference_eval.items():
        torch.testing.assert_close(generators(a, b)[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_instance_norm_as_group_norm_leaves_running_statistics_and_switch_off_alone():
    tracked = torch.nn.InstanceNorm2d(4, track_running_stats=True)  # eval mode uses running stats: not a group norm
    module = torch.nn.Sequential(torch.nn.InstanceNorm2d(4), tracked)
    assert instance_norm_as_group_norm(module, enabled=False)[0].__class__ is torch.nn.InstanceNorm2d
    instance_norm_as_group_norm(module)
    assert isinstance(module[0], torch.nn.GroupNorm) and not module[0].affine and module[1] is tracked


@pytest.mark.parametrize("enabled", [True, False])
def test_configs_run_instance_norms_as_group_norms_unless_switched_off(pretrain_overrides, train_overrides, enabled):
    from monai.bundle import ConfigParser

    for config, overrides, networks in (
        ("pretrain.yaml", pretrain_overrides, ["generators", "discriminators"]),
        ("train.yaml", train_overrides, ["network"]),
    ):
        parser = ConfigParser()
        parser.read_config(config_path(config))
        parser.update({**overrides, "group_norm_kernel": enabled})
        for name in networks:
            network = parser.get_parsed_content(name)
            kinds = {type(m) for m in network.modules()}
            assert (torch.nn.GroupNorm in kinds, torch.nn.InstanceNorm2d in kinds) == (enabled, not enabled), name
        assert parser.get_parsed_content("run_settings")["group_norm_kernel"] is enabled
        assert "group_norm_kernel" in parser.get_parsed_content("speed_ids")  # a resume may change it


def test_channels_last_puts_the_pretraining_weights_in_nhwc(pretrain_overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_path("pretrain.yaml"))
    parser.update({**pretrain_overrides, "channels_last": True})
    for name in ("generators", "discriminators"):
        weights = [p for p in parser.get_parsed_content(name).parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights), name
        assert not all(p.is_contiguous() for p in weights)  # NCHW no more (most weights differ in the two layouts)


def test_amp_bf16_stays_close_to_fp32():
    ref_losses, _ = _steps(n=1)
    losses, _ = _steps(n=1, amp=True)
    _close(ref_losses, losses, 5e-2)


@pytest.mark.slow  # about a minute of compilation on 2 CPU cores
def test_compile_aot_eager_gives_the_same_steps():
    ref_losses, ref_state = _steps(n=1)
    losses, state = _steps(n=1, compile_backend="aot_eager")
    _close(ref_losses, losses, 1e-4)
    assert state.keys() == ref_state.keys()  # in-place compile: checkpoints keep their parameter names
    for key, value in ref_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-3, msg=key)


def _graphs_and_breaks(step) -> tuple[int, int]:
    """Graphs dynamo compiled and graph breaks it met while running ``step()`` (from a clean dynamo state)."""
    torch._dynamo.reset()
    counters.clear()
    step()
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def test_basic_unet_traces_as_one_graph_only_with_skipped_calls_traced():
    x = torch.randn(2, 1, 32, 32)
    plain = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=TINY_NET["features"])
    reference = plain(x)
    plain.compile(backend="eager")
    graphs, breaks = _graphs_and_breaks(lambda: plain(x).sum().backward())
    assert breaks > 0  # MONAI's up-sampling blocks call torch.jit.isinstance, which dynamo skips
    traced = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=TINY_NET["features"])
    trace_skipped_calls(traced)
    traced.load_state_dict(plain.state_dict())
    traced.compile(backend="eager")
    assert _graphs_and_breaks(lambda: traced(x).sum().backward()) == (1, 0)
    torch.testing.assert_close(traced(x), reference)
    copied = copy.deepcopy(trace_skipped_calls(BasicUNet(spatial_dims=2, in_channels=1, out_channels=2)))
    assert copied.forward.__self__ is copied  # a deep copy runs its own weights


def test_compiled_generator_pair_is_one_graph_with_unchanged_parameter_names():
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    generators = MultiConDoSGenerators(features=TINY_NET["features"], projection_dim=16)
    names = list(generators.state_dict())
    reference = generators(a, b)
    apply_speed_switches(generators, True, False, True, "eager")  # as configs/pretrain.yaml does
    assert _graphs_and_breaks(lambda: generators(a, b)) == (1, 0)
    assert list(generators.state_dict()) == names
    out = generators(a, b)
    for key, value in reference.items():
        torch.testing.assert_close(out[key], value, msg=key)


def test_compiled_finetuning_network_is_one_graph(tiny_dataset, tmp_path: Path):
    overrides = scratch_finetune_overrides(
        tiny_dataset, tmp_path / "ckpt", tmp_path / "out", compile=True, compile_backend="eager", epoch_length=1
    )
    graphs, breaks = _graphs_and_breaks(lambda: run_workflow(config_path("train.yaml"), overrides))
    assert (graphs, breaks) == (1, 0)  # the training step; validation runs the network uncompiled in eval mode


def test_compiled_pretraining_workflow_compiles_its_step_once(pretrain_overrides):
    """Through the trainer, with validation every epoch: 3 graphs in the first step (the generator pair; the
    discriminators in the generator step, on fakes that carry gradients; the discriminators in their own step, on
    twice the batch), no graph break, and no recompilation in the steps and validations after it."""
    from ignite.engine import Events

    overrides = {**pretrain_overrides, "compile": True, "compile_backend": "eager"}  # 2 epochs of 2 iterations
    after_first_step: list[int] = []

    def run() -> None:
        wf = make_workflow(config_path("pretrain.yaml"), overrides, run_id="training")
        trainer = wf.parser.get_parsed_content("train#trainer")
        record = lambda e: after_first_step.append(counters["stats"]["unique_graphs"])  # noqa: E731
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), record)
        wf.run()
        assert trainer.state.iteration == 4

    assert _graphs_and_breaks(run) == (3, 0)
    assert after_first_step == [3]


def test_amp_dtype_is_bf16_unless_the_gpu_lacks_it(monkeypatch):
    from bundle.trainer import amp_dtype

    assert amp_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert amp_dtype("cuda:0") == torch.float16 and amp_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp_dtype("cuda:0") == torch.bfloat16


@pytest.mark.parametrize(
    ("config", "engines"),
    [
        ("train.yaml", ["train#trainer", "validate#evaluator"]),
        ("inference.yaml", ["evaluator"]),
        ("translate.yaml", ["evaluator"]),
    ],
)
def test_monai_engines_autocast_in_the_bundles_amp_dtype(tiny_dataset, tmp_path: Path, config, engines):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_path(config))
    parser.update(scratch_finetune_overrides(tiny_dataset, tmp_path / "ckpt", tmp_path / "out", amp=True))
    for engine in engines:
        assert parser.get_parsed_content(f"{engine}#amp_kwargs") == {"dtype": torch.bfloat16}  # on a CPU
