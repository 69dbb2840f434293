"""The training step without host synchronisations: device-side skipping of non-finite steps, the divergence guard
read every log_interval, the vectorised image pool, losses read every k iterations."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from ignite.engine import Events
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from bundle.finite import check_finite_state, finite_step
from bundle.handlers import DivergenceGuard
from bundle.networks import ImagePool
from conftest import (
    build_trainer,
    config_path,
    make_workflow,
    paired_batches,
    run_workflow,
    scratch_finetune_overrides,
    tiny_overrides,
)

#: tensor methods that read a value on the host (a synchronisation with the device)
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"}


class HostReads(TorchFunctionMode):
    """Records every host read of a tensor value inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


#: ATen operations that read a device value on the host, or size their output by the values (a sync on a GPU)
SYNCING_OPS = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor",
}


class SyncingOps(TorchDispatchMode):
    """Records the trainer's iteration of every syncing operation (boolean-mask indexing included) while active."""

    def __init__(self, trainer) -> None:
        super().__init__()
        self.trainer = trainer
        self.calls: list[tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masks = name.startswith(("aten.index.", "aten.index_put")) and any(
            getattr(i, "dtype", None) == torch.bool for i in (args[1] or [])
        )
        if name in SYNCING_OPS or masks:
            self.calls.append((self.trainer.state.iteration, name))
        return func(*args, **(kwargs or {}))


def _fused_trainer(batches, **kwargs):
    trainer = build_trainer(batches, **kwargs)
    trainer.g_optimizer = torch.optim.Adam(trainer.generators.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    trainer.d_optimizer = torch.optim.Adam(trainer.discriminators.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    return trainer


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_pretraining_step_reads_nothing_on_the_host():
    batches = paired_batches(n_batches=2)
    trainer = _fused_trainer(batches)
    trainer._iteration(trainer, batches[0])  # first step: lazy optimizer state
    with HostReads() as reads:
        out = trainer._iteration(trainer, batches[1])
    assert reads.calls == []
    assert set(out["gradients"]) == {"g_gradients", "d_gradients"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out["losses"].values())


@pytest.mark.parametrize("config", ["pretrain.yaml", "train.yaml"])
def test_the_workflow_reads_the_host_only_at_log_iterations(config, tiny_dataset, tmp_path):
    """Batched sampling on the device, the step and every handler: between iteration 1 (lazy optimizer state) and the
    epoch's end (validation), values are read on the host only at the log_interval's iterations. Counted where the
    read reaches PyTorch's dispatcher (``SyncingOps``), not by method name (``HostReads``): on a CPU that would also
    count reads of tensors that stay on the host on a GPU too (MONAI's ``DiceLoss`` calls ``torch.arange(...).tolist()``
    every step)."""
    run = {"epochs": 1, "epoch_length": 7, "val_interval": 1, "log_interval": 3, "device_cache": True}
    if config == "pretrain.yaml":
        overrides = tiny_overrides(tiny_dataset, tmp_path, val_fraction=0.25, val_slices_per_subject=1, **run)
    else:
        overrides = scratch_finetune_overrides(tiny_dataset, tmp_path / "ckpt", tmp_path / "out", **run)
    wf = make_workflow(config_path(config), overrides, run_id="training" if config == "pretrain.yaml" else "run")
    trainer = wf.parser.get_parsed_content("train#trainer")
    reads = SyncingOps(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: reads.__enter__())
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=7), lambda e: reads.__exit__(None, None, None))
    wf.run()
    assert reads.calls, "the losses are read at iterations 3 and 6"
    assert {iteration for iteration, _ in reads.calls} == {3, 6}, reads.calls


def test_a_nan_step_is_skipped_and_the_guard_names_the_term_within_its_interval():
    good, bad = paired_batches(n_batches=2)
    bad["t2"][0, 0, 0, 0] = float("nan")
    reference = _fused_trainer([good])
    reference._iteration(reference, good)
    trainer = _fused_trainer([good, bad, good])
    DivergenceGuard(lambda x: x["losses"], interval=3, gradients_transform=lambda x: x["gradients"]).attach(trainer)
    with pytest.raises(
        FloatingPointError, match=r"loss term\(s\) \[.*'pix2pix'.*\] became NaN/inf at epoch 1, iteration 2"
    ):
        trainer.run()
    assert trainer.state.iteration == 3  # read at the interval, not at the bad iteration
    # iteration 2 changed nothing (G and D skipped); iteration 3 stepped again from the weights of iteration 1
    assert all(s["step"].item() == 2 for s in trainer.g_optimizer.state.values())
    assert not hasattr(trainer.g_optimizer, "found_inf") and not hasattr(trainer.d_optimizer, "found_inf")
    skipped = _fused_trainer([good, bad])
    skipped._iteration(skipped, good)
    out = skipped._iteration(skipped, bad)
    assert not torch.isfinite(out["losses"]["pix2pix"]) and not torch.isfinite(out["losses"]["d_a"])
    for module in ("generators", "discriminators"):
        for key, value in _state(getattr(reference, module)).items():
            assert torch.equal(_state(getattr(skipped, module))[key], value), (module, key)


def test_finite_step_skips_non_finite_gradients_and_losses():
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=4.0)):
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.Adam([p], lr=0.1, fused=True)
        scale = 1.0 if scaler is None else 4.0
        if scaler is not None:
            scaler.scale(torch.ones(()))  # the scale tensor is created by the first scale()
        p.grad = torch.tensor([1.0, float("nan"), 1.0]) * scale
        finite_step(opt, [torch.tensor(1.0)], scaler)  # gradients not finite
        p.grad = torch.ones(3) * scale
        finite_step(opt, [torch.tensor(float("inf"))], scaler)  # loss not finite, gradients finite
        assert torch.equal(p.detach(), torch.ones(3)) and not hasattr(opt, "found_inf")
        p.grad = torch.ones(3) * scale
        finite_step(opt, [torch.tensor(1.0)], scaler)
        assert torch.allclose(p.detach(), torch.full((3,), 0.9)) and int(opt.state[p]["step"]) == 1


def test_nothing_non_finite_is_written():
    state = {"net": {"w": torch.ones(2), "b": torch.tensor([0.0, float("nan")])}, "steps": torch.tensor([3])}
    with pytest.raises(FloatingPointError, match=r"refusing to write model.pt: NaN/inf in \['net.b'\]"):
        check_finite_state(state, "model.pt")
    check_finite_state({"net": {"w": torch.ones(2)}, "steps": torch.tensor([3])}, "model.pt")


def _reference_pool(stored: list, images, swap, slot):
    """CycleGAN's loop, image by image, with given draws."""
    stored, out = list(stored), []
    for image, s, k in zip(images, swap.tolist(), slot.tolist()):
        if s:
            out.append(stored[k].clone())
            stored[k] = image.clone()
        else:
            out.append(image)
    return torch.stack(stored), torch.stack(out)


def test_image_pool_equals_the_loop_and_keeps_cyclegan_statistics():
    torch.manual_seed(0)
    for _ in range(50):  # same draws: same outputs and pool as the loop, collisions within a batch included
        size, n = int(torch.randint(1, 6, (1,))), int(torch.randint(1, 10, (1,)))
        pool = ImagePool(size)
        pool.query(torch.randn(size, 1, 2, 2))
        images, swap, slot = torch.randn(n, 1, 2, 2), torch.rand(n) > 0.5, torch.randint(0, size, (n,))
        expected_pool, expected_out = _reference_pool(list(pool.images), images, swap, slot)
        assert torch.equal(pool._swap(images, swap, slot), expected_out) and torch.equal(pool.images, expected_pool)
    # statistics: filling returns the input; then half of the images come from the history, uniformly
    pool = ImagePool(10)
    first = torch.arange(7.0).view(7, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool) == 7
    out = pool.query(torch.arange(7.0, 14.0).view(7, 1, 1, 1))  # 3 fill, 4 through the full pool
    assert torch.equal(out[:3].flatten(), torch.tensor([7.0, 8.0, 9.0])) and len(pool) == 10
    old = 0
    returned = torch.zeros(10)
    for step in range(400):
        new = (1000.0 + 8 * step + torch.arange(8.0)).view(8, 1, 1, 1)  # distinct values
        before = pool.images.flatten().clone()
        out = pool.query(new).flatten()
        # nothing is lost or duplicated: the output and the pool hold exactly the old pool and the new images
        assert torch.equal(
            torch.cat([out, pool.images.flatten()]).sort().values, torch.cat([before, new.flatten()]).sort().values
        )
        swapped = out != new.flatten()  # p = 0.5 per image (from the history, or from an earlier image's slot)
        old += int(swapped.sum())
        for value in out[swapped & (out < 1000.0 + 8 * step)]:
            returned[(before == value).nonzero()[0]] += 1
    assert abs(old / (400 * 8) - 0.5) < 0.03
    assert returned.min() > 0.6 * returned.mean()  # every slot is drawn


def test_image_pool_state_round_trip_and_the_list_format():
    pool = ImagePool(4)
    pool.query(torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2))
    restored = ImagePool(1)
    restored.load_state_dict(pool.state_dict())
    assert restored.pool_size == 4 and len(restored) == 3 and torch.equal(restored.images, pool.images)
    legacy = {"pool_size": 4, "images": [torch.full((1, 1, 2, 2), float(v)) for v in range(4)]}  # before 0.3.x
    restored.load_state_dict(legacy)
    assert len(restored) == 4 and torch.equal(restored.images[:, 0, 0, 0], torch.arange(4.0))
    assert torch.equal(ImagePool(4).query(torch.ones(2, 1, 2, 2)), torch.ones(2, 1, 2, 2))
    assert ImagePool(3).state_dict()["images"].numel() == 0


def _rows(path: str) -> dict[int, dict[str, str]]:
    with open(path) as f:
        return {int(r["iteration"]): r for r in csv.DictReader(f)}


def test_losses_read_every_k_iterations_equal_those_read_every_iteration_and_resume_restores_pools(
    pretrain_overrides, tiny_dataset, tmp_path
):
    common = {**pretrain_overrides, "epochs": 1, "epoch_length": 4, "val_interval": 2, "save_interval": 1}
    every = run_workflow(config_path("pretrain.yaml"), {**common, "log_interval": 1}, run_id="training")
    second = {**common, "log_interval": 2, "ckpt_dir": str(tmp_path / "k2"), "output_dir": str(tmp_path / "k2_out")}
    run_workflow(config_path("pretrain.yaml"), second, run_id="training")
    rows_1 = _rows(os.path.join(common["output_dir"], "losses.csv"))
    rows_2 = _rows(os.path.join(second["output_dir"], "losses.csv"))
    assert sorted(rows_1) == [1, 2, 3, 4] and sorted(rows_2) == [2, 4]
    assert all(rows_2[i] == rows_1[i] for i in (2, 4))
    settings = every.parser.get_parsed_content("run_settings")
    assert {
        "compile": False,
        "compile_mode": None,
        "channels_last": False,
        "cudnn_benchmark": False,
    }.items() <= settings.items()

    # the resumed trainer starts with the pools of the checkpoint
    checkpoint = torch.load(os.path.join(common["ckpt_dir"], "checkpoints", "checkpoint_final.pt"), weights_only=True)
    resumed = make_workflow(config_path("pretrain.yaml"), {**common, "epochs": 2, "resume": True}, run_id="training")
    trainer = resumed.parser.get_parsed_content("train#trainer")
    pools = {}
    trainer.add_event_handler(Events.STARTED, lambda e: pools.update(a=e.pool_a.state_dict(), b=e.pool_b.state_dict()))
    trainer.add_event_handler(Events.STARTED, lambda e: e.terminate())
    resumed.run()
    for key in ("a", "b"):
        assert len(checkpoint[f"pool_{key}"]["images"]) == 4
        assert torch.equal(pools[key]["images"], checkpoint[f"pool_{key}"]["images"])

    # fine-tuning: its loss read every k iterations equals the one read every iteration
    runs = {}
    for k in (1, 2):
        overrides = scratch_finetune_overrides(
            tiny_dataset, tmp_path / f"ft{k}", tmp_path / f"ft{k}_out", epoch_length=4, log_interval=k
        )
        run_workflow(config_path("train.yaml"), overrides)
        runs[k] = _rows(str(tmp_path / f"ft{k}_out" / "losses.csv"))
    assert sorted(runs[1]) == [1, 2, 3, 4] and sorted(runs[2]) == [2, 4]
    assert all(runs[2][i] == runs[1][i] for i in (2, 4))


def test_loss_history_reads_a_loss_that_requires_grad_without_warning(tmp_path):
    """Fine-tuning's output holds the loss with its graph (MONAI SupervisedTrainer): losses.csv gets its value, and
    reading it raises no 'requires_grad ... to a scalar' warning."""
    import warnings
    from types import SimpleNamespace

    from bundle.run_history import LossHistoryHandler

    handler = LossHistoryHandler(str(tmp_path), output_transform=lambda x: {"loss": x["loss"]})
    weight = torch.tensor(1.5, requires_grad=True)
    engine = SimpleNamespace(state=SimpleNamespace(output={"loss": weight * 2}, epoch=1, iteration=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = handler.row(engine)
    assert row == {"epoch": 1, "iteration": 3, "loss": 3.0}
