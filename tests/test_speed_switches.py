"""amp, channels_last and compile leave the pre-training step's results correct (a few steps, within tolerance)."""

from __future__ import annotations

import pytest
import torch

from bundle.networks import maybe_compile
from conftest import build_trainer, paired_batches


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
