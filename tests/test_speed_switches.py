"""amp, channels_last and compile leave the pre-training step's results correct (a few steps, within tolerance);
compiled networks trace as one graph (no graph breaks, which would leave CUDA graphs little to capture)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from monai.networks.nets import BasicUNet
from torch._dynamo.utils import counters

from bundle.networks import MultiConDoSGenerators, maybe_compile, trace_skipped_calls
from conftest import TINY_NET, build_trainer, config_path, paired_batches, run_workflow, scratch_finetune_overrides


def _steps(n: int = 2, **kwargs) -> tuple[list[dict], dict]:
    batches = paired_batches(n_batches=n)
    compile_backend = kwargs.pop("compile_backend", None)
    trainer = build_trainer(batches, **kwargs)
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
    maybe_compile(generators, True, "eager")
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
    assert breaks == 0 and graphs >= 1


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
