# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Speed, memory and FLOPs of pre-training, fine-tuning and inference, measured through the bundle configs.

    python scripts/benchmark_speed.py --batch_size 8 --image_size 64 --json_path /tmp/speed_cpu.json
    python scripts/benchmark_speed.py --batch_size 16 --image_size 160 --amp True   # one GPU, under 5 minutes

Pre-training (``configs/pretrain.yaml``) and fine-tuning (``configs/train.yaml``, from scratch) run as
``ConfigWorkflow`` on a synthetic demo dataset (``bundle.demo_data``) written to a temporary folder. Each is timed as

- the workflow: the trainer's own iterations (data loading or on-device sampling, the step, every handler);
- the bare step: the same trainer's iteration function (``trainer._iteration``: the same network, loss, optimizer,
  amp and on-device skip of a non-finite step) on batches drawn beforehand from the workflow's own loader and
  already on the device.

The two are interleaved, A/B/A/B: ``rounds`` blocks of ``iterations`` workflow iterations, each followed by a block of
as many bare steps (after ``warmup`` workflow and bare iterations), and ``workflow_over_bare`` is the median of the
per-round ratios, so that the load of a shared machine cancels out. The FLOPs of one step are counted with
``torch.utils.flop_counter.FlopCounterMode`` over the first bare warm-up iteration; on a CUDA device the achieved
TFLOP/s is also given as a fraction of the device's nominal dense peak (``scripts/speed_numbers.py``; bf16 with
``--amp``, else TF32 when cuDNN may use it for the convolutions, else fp32). The inference part is
``scripts/inference_timing.py``.

Inference runs ``configs/inference.yaml`` end to end (loading, preprocessing, the slice-by-slice forward,
post-processing, ``Invertd``, NIfTI writing) on one synthetic 240x240x155 volume with a freshly initialised
``model.pt``, interleaved with the bare forward: the forward of the workflow's evaluator (``SliceInferer`` over the
same network, amp as configured; no post-processing) on the same preprocessed volume already on the device, and
the bare forward of every window (``crop_speedup``: what the crop to the input's foreground saves). ``--volume_path``
measures a real volume instead (e.g. a BraTS FLAIR). Also timed per round: every transform of the config alone
(``stage_s_per_volume``: the time outside the network, by transform) and the check of the input's voxels that the
config runs before the workflow (``voxel_check_s_per_volume``; ``validate_voxels``, default True).

The ``schedule`` part runs three full pre-training epochs (``--schedule_epoch_length`` iterations each, with their
validation and previews, and a checkpoint) and extrapolates an epoch's iterations, validation and checkpoint to
``--schedule_epochs`` epochs with the BraTS preset's intervals (validation every epoch, a checkpoint every 20; the
first epoch warms up and is only reported), so that the GPU command gives the wall time of the paper-scale
pre-training (``measure_schedule``).

Printed per part: workflow and bare s/iteration (s/volume), their ratio, slices/s, FLOPs per iteration, TFLOP/s, peak
memory (CPU RSS of the part, CUDA max allocated on a GPU). ``--json_path PATH`` also writes every number as JSON
(sections ``pretraining``, ``finetuning``, ``inference``; keys ``workflow_over_bare``, ``slices_per_s``,
``flops_per_iteration``, ...). ``--overrides "{'compile': True}"`` sets config ids of every workflow.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import fire
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.inference_timing import measure_inference  # noqa: E402
from scripts.speed_numbers import count_flops, peak_memory, reset_peak_memory, summarise  # noqa: E402
from scripts.workflow_harness import (  # noqa: E402
    RUN_IDS,
    bare_steps,
    bundle_workflow,
    demo_dataset,
    device_batches,
    sync,
)

#: the sections of the results (and of ``parts``)
PARTS: tuple[str, ...] = ("pretraining", "finetuning", "inference", "schedule")


def _slices(batch: Any) -> int:
    """Slices in a training batch (the first dimension of its first tensor)."""
    tensors = [v for v in (batch.values() if isinstance(batch, Mapping) else batch) if isinstance(v, torch.Tensor)]
    return int(tensors[0].shape[0])


class InterleavedRounds:
    """
    An ``ITERATION_COMPLETED`` handler that times the workflow and the bare step A/B/A/B inside one run of the
    trainer: after ``warmup`` workflow iterations it runs ``warmup`` bare steps (the first under ``FlopCounterMode``),
    then after each block of ``iterations`` workflow iterations a block of as many bare steps. Each block is timed
    between device synchronisations; the handler's own time is outside the workflow blocks. Attach it after the
    workflow's handlers and run the trainer for ``warmup + rounds * iterations`` iterations.

    Parameters
    ----------
    batches
        the bare step's batches, on the device.
    rounds
        A/B rounds.
    iterations
        iterations per block.
    warmup
        untimed workflow iterations, then untimed bare steps, before the first round.
    """

    def __init__(self, batches: Sequence[Any], rounds: int, iterations: int, warmup: int) -> None:
        if min(rounds, iterations, warmup) < 1:
            raise ValueError(f"rounds, iterations and warmup must be >= 1, got {rounds}, {iterations}, {warmup}.")
        self.batches, self.rounds, self.iterations, self.warmup = batches, int(rounds), int(iterations), int(warmup)
        self.workflow_s: list[float] = []
        self.bare_s: list[float] = []
        self.flops = 0
        self._start = 0.0

    @property
    def total_iterations(self) -> int:
        """The trainer's iterations (``epoch_length`` of a 1-epoch run)."""
        return self.warmup + self.rounds * self.iterations

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        done = engine.state.iteration - self.warmup
        if done < 0 or done % self.iterations or done > self.rounds * self.iterations:
            return
        device = torch.device(engine.state.device)
        sync(device)
        if done == 0:  # warm-up of the bare step, its FLOPs counted once
            self.flops = count_flops(lambda: bare_steps(engine, self.batches, 1))
            bare_steps(engine, self.batches, self.warmup - 1)
        else:
            self.workflow_s.append((time.perf_counter() - self._start) / self.iterations)
            start = time.perf_counter()
            bare_steps(engine, self.batches, self.iterations)
            sync(device)
            self.bare_s.append((time.perf_counter() - start) / self.iterations)
        sync(device)
        self._start = time.perf_counter()


def measure_training(
    config: str, overrides: Mapping[str, Any], run_id: str, rounds: int, iterations: int, warmup: int, amp: bool
) -> dict[str, Any]:
    """
    Time ``config``'s training workflow against its bare step, interleaved (``InterleavedRounds``).

    Parameters
    ----------
    config
        ``pretrain.yaml`` or ``train.yaml``.
    overrides
        config overrides (data, folders, sizes); ``epochs`` and ``epoch_length`` are set here.
    run_id
        the config's run expression.
    rounds, iterations, warmup
        see ``InterleavedRounds``.
    amp
        the ``amp`` override (which nominal peak applies).
    """
    timer = InterleavedRounds([], rounds, iterations, warmup)
    wf = bundle_workflow(config, {**overrides, "epochs": 1, "epoch_length": timer.total_iterations}, run_id)
    trainer = wf.parser.get_parsed_content("train#trainer")
    device = torch.device(trainer.state.device)
    timer.batches = device_batches(wf.parser.get_parsed_content("train#dataloader"), iterations, device)
    timer.attach(trainer)  # after the workflow's handlers: the bare blocks run after them
    reset_peak_memory(device)
    wf.run()
    wf.finalize()
    out = summarise(timer.workflow_s, timer.bare_s, _slices(timer.batches[0]), timer.flops, device, amp)
    return {**out, **peak_memory(device)}


class EpochClock:
    """
    Timestamps of a training run, attached after the workflow's own handlers (so that an epoch's end includes its
    validation, previews and checkpoint): each epoch's start, its last iteration's end and its end, and the run's end.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started: list[float] = []
        self.iterated: list[float] = []
        self.ended: list[float] = []
        self.completed = 0.0

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.started.append(self._now()))
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.ended.append(self._now()))
        engine.add_event_handler(Events.COMPLETED, lambda e: setattr(self, "completed", self._now()))

        def last_iteration(e: Any) -> None:
            if e.state.iteration % e.state.epoch_length == 0:
                self.iterated.append(self._now())

        engine.add_event_handler(Events.ITERATION_COMPLETED, last_iteration)


def measure_schedule(
    overrides: Mapping[str, Any], epochs: int, epoch_length: int, val_interval: int = 1, save_interval: int = 20
) -> dict[str, Any]:
    """
    The wall time of a pre-training schedule of ``epochs`` x ``epoch_length`` iterations, validated every
    ``val_interval`` epochs with a checkpoint every ``save_interval`` (the BraTS preset's 200 x 200, 1 and 20),
    extrapolated from a run of 3 full epochs of ``configs/pretrain.yaml`` (validation and previews every epoch, a
    checkpoint at epoch 3): the first epoch warms up (``first_epoch_s``, not extrapolated); epochs 2 and 3 give the
    iterations of an epoch (``iterations_s``); epoch 2's end its validation and previews (``validation_s``); what
    epoch 3's end adds to that a checkpoint (``checkpoint_s``); the run's end the final files (``final_s``, once):

        schedule_s = epochs * iterations_s + epochs / val_interval * validation_s
                     + epochs // save_interval * checkpoint_s + final_s

    Parameters
    ----------
    overrides
        config overrides (data, folders, ``image_size``, ``batch_size``, ``amp``, ``device``, ...).
    epochs, epoch_length, val_interval, save_interval
        the schedule to extrapolate to.
    """
    run = {**overrides, "epochs": 3, "epoch_length": int(epoch_length), "val_interval": 1, "save_interval": 3}
    wf = bundle_workflow("pretrain.yaml", run, run_id=RUN_IDS["pretrain.yaml"])
    trainer = wf.parser.get_parsed_content("train#trainer")
    device = torch.device(trainer.state.device)
    clock = EpochClock(device)
    clock.attach(trainer)  # after the workflow's handlers
    wf.run()
    wf.finalize()
    ends = [end - iterated for iterated, end in zip(clock.iterated, clock.ended)]
    iterations_s = statistics.mean(it - st for st, it in zip(clock.started[1:], clock.iterated[1:]))
    validation_s, checkpoint_s = ends[1], max(0.0, ends[2] - ends[1])
    final_s = clock.completed - clock.ended[-1]
    schedule_s = (
        epochs * iterations_s + epochs / val_interval * validation_s + epochs // save_interval * checkpoint_s + final_s
    )
    return {
        "device": str(device),
        "iterations": int(epoch_length),
        "first_epoch_s": round(clock.ended[0] - clock.started[0], 3),
        "iterations_s": round(iterations_s, 3),
        "validation_s": round(validation_s, 3),
        "checkpoint_s": round(checkpoint_s, 3),
        "final_s": round(final_s, 3),
        "epochs": int(epochs),
        "epoch_length": int(epoch_length),
        "val_interval": int(val_interval),
        "save_interval": int(save_interval),
        "schedule_s": round(schedule_s, 1),
        "checkpoints": sorted(os.listdir(os.path.join(str(overrides["ckpt_dir"]), "checkpoints"))),
    }


def _line(name: str, r: Mapping[str, Any], unit: str) -> str:
    """One printed line of a part's numbers."""
    per = "it" if unit == "iteration" else "volume"
    memory = f"peak RSS {r['peak_rss_mb']:.0f} MB" + (
        f", CUDA max allocated {r['cuda_max_allocated_mb']:.0f} MB" if "cuda_max_allocated_mb" in r else ""
    )
    speed = f"{r['workflow_tflops']:.3g} TFLOP/s (bare {r['bare_tflops']:.3g})"
    if r["device"].startswith("cuda"):
        if r["nominal_peak_tflops"]:
            speed += (
                f" = {100 * r['workflow_peak_fraction']:.2f}% (bare {100 * r['bare_peak_fraction']:.2f}%) of the "
                f"nominal {r['peak_dtype']} peak {r['nominal_peak_tflops']:.0f} TFLOP/s"
            )
        else:
            speed += f"; nominal peak of {r['device_name']} unknown"
    return (
        f"{name}: workflow {r[f'workflow_s_per_{unit}']:.4f} s/{per}, bare {r[f'bare_s_per_{unit}']:.4f} s/{per}, "
        f"workflow_over_bare {r['workflow_over_bare']:.3f} (median of {r['rounds']} rounds), "
        f"{r['slices_per_s']:.1f} slices/s (bare {r['bare_slices_per_s']:.1f}), "
        f"{r['flops_per_iteration'] / 1e9:.1f} GFLOP/{per}, {speed}, {memory} ({r['device']})"
    )


def benchmark(
    batch_size: int = 8,
    image_size: int = 64,
    amp: bool = False,
    rounds: int = 10,
    iterations: int = 4,
    warmup: int = 2,
    inference_rounds: int = 2,
    device: str | None = None,
    channels_last: bool = False,
    overrides: dict | None = None,
    parts: Sequence[str] = PARTS,
    threads: int | None = None,
    json_path: str | None = None,
    volume_shape: Sequence[int] = (240, 240, 155),
    volume_path: str | None = None,
    schedule_epochs: int = 200,
    schedule_epoch_length: int = 200,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
) -> dict[str, Any]:
    """
    Measure the selected ``parts`` and print one line each; return the numbers (and write them to ``json_path``).

    Parameters
    ----------
    batch_size
        slices per training iteration.
    image_size
        slice side of training and inference.
    amp
        mixed precision (the configs' ``amp``).
    rounds, iterations, warmup
        A/B rounds of ``iterations`` workflow and bare iterations each, after ``warmup`` (at least 1) of each
        (training).
    inference_rounds
        A/B rounds of the inference workflow and the bare forward.
    device
        e.g. ``cpu`` or ``cuda:0``; default: the configs' (CUDA when present, else CPU).
    channels_last
        pre-training's NHWC layout.
    overrides
        further config ids for every workflow, e.g. ``{'compile': True, 'compile_mode': 'reduce-overhead'}``.
    parts
        some of ``pretraining``, ``finetuning``, ``inference``, ``schedule``.
    threads
        torch CPU threads during the measurement (restored afterwards; 1 is faster for tiny networks on a loaded
        machine).
    json_path
        where to write the numbers as JSON.
    volume_shape
        the synthetic inference volume's shape (smaller for tests).
    volume_path
        a real volume for the inference part instead (e.g. a BraTS FLAIR; read in place).
    schedule_epochs, schedule_epoch_length
        the pre-training schedule the ``schedule`` part extrapolates to (default: the BraTS preset's 200 x 200); it
        runs 3 epochs of ``schedule_epoch_length`` iterations (``measure_schedule``).
    dataset_dir, data_list_file_path
        an existing dataset for the training parts (default: a demo dataset in a temporary folder).
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts must be among {list(PARTS)}, got {sorted(unknown)}.")
    common: dict[str, Any] = {"bundle_root": ROOT, "image_size": int(image_size), "amp": bool(amp)}
    if device:
        common["device"] = f"$torch.device('{device}')"
    common.update(overrides or {})
    settings = {
        "batch_size": batch_size,
        "image_size": image_size,
        "amp": amp,
        "channels_last": channels_last,
        "rounds": rounds,
        "iterations": iterations,
        "warmup": warmup,
        "inference_rounds": inference_rounds,
        "volume_shape": [int(s) for s in volume_shape],
        "volume_path": volume_path,
        "schedule": [int(schedule_epochs), int(schedule_epoch_length)],
        "overrides": dict(overrides or {}),
    }
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    results: dict[str, Any] = {"settings": settings, "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if dataset_dir is None and {"pretraining", "finetuning", "schedule"} & set(parts):
                dataset_dir, data_list_file_path = demo_dataset(os.path.join(tmp, "data"), batch_size, image_size)
            training = {**common, "batch_size": int(batch_size), "val_interval": 1, "validate_voxels": False}
            if dataset_dir is not None:
                datalist = data_list_file_path or os.path.join(dataset_dir, "datalist.json")
                training.update({"dataset_dir": dataset_dir, "data_list_file_path": datalist})
            args = {"rounds": rounds, "iterations": iterations, "warmup": warmup, "amp": bool(amp)}
            if "pretraining" in parts:
                folders = {"ckpt_dir": os.path.join(tmp, "pre"), "output_dir": os.path.join(tmp, "pre_out")}
                pre = {**training, **folders, "channels_last": bool(channels_last)}
                results["pretraining"] = measure_training("pretrain.yaml", pre, RUN_IDS["pretrain.yaml"], **args)
                print(_line(f"pre-training, batch {batch_size} @ {image_size}", results["pretraining"], "iteration"))
            if "finetuning" in parts:
                folders = {"ckpt_dir": os.path.join(tmp, "fine"), "output_dir": os.path.join(tmp, "fine_out")}
                fine = {**training, **folders, "pretrained_ckpt": None}
                results["finetuning"] = measure_training("train.yaml", fine, RUN_IDS["train.yaml"], **args)
                print(_line(f"fine-tuning, batch {batch_size} @ {image_size}", results["finetuning"], "iteration"))
            if "inference" in parts:
                folder = os.path.join(tmp, "inference")
                os.makedirs(folder)
                results["inference"] = r = measure_inference(
                    common, folder, volume_shape, inference_rounds, bool(amp), volume_path
                )
                shape = "x".join(str(s) for s in r["volume_shape"])
                print(_line(f"inference, {shape} volume @ {image_size}", r, "volume"))
                if "crop_speedup" in r:
                    print(
                        f"inference, foreground crop: bare forward {r['bare_s_per_volume']:.4f} s/volume against "
                        f"{r['plain_bare_s_per_volume']:.4f} s for every window (plain SliceInferer), crop_speedup "
                        f"{r['crop_speedup']:.3f} (median of {r['rounds']} rounds)"
                    )
                print(
                    f"inference, loading and preprocessing alone (the workflow's loader, to the device): "
                    f"{r['preprocess_s_per_volume']:.4f} s/volume (median of {r['rounds']} rounds)"
                )
                print(
                    f"inference, the inputs' voxel check before the run (validate_voxels, default True): "
                    f"{r['voxel_check_s_per_volume']:.4f} s/volume (median of {r['rounds']} rounds)"
                )
                stages = ", ".join(f"{name} {s:.4f}" for name, s in r["stage_s_per_volume"].items())
                print(
                    f"inference, stages alone, s/volume (median of {r['rounds']} rounds): {stages}; the forward "
                    f"{r['bare_s_per_volume']:.4f}; the rest of the workflow (engine, handlers, collation, the "
                    f"record) {r['outside_stages_s_per_volume']:.4f}"
                )
            if "schedule" in parts:
                folders = {"ckpt_dir": os.path.join(tmp, "schedule"), "output_dir": os.path.join(tmp, "schedule_out")}
                results["schedule"] = r = measure_schedule(
                    {**training, **folders}, schedule_epochs, schedule_epoch_length
                )
                print(
                    f"schedule: {r['epochs']} pre-training epochs of {r['iterations']} iterations "
                    f"(batch {batch_size} @ {image_size}): iterations {r['iterations_s']:.1f} s/epoch, validation "
                    f"and previews {r['validation_s']:.1f} s every {r['val_interval']} epoch(s), checkpoint "
                    f"{r['checkpoint_s']:.1f} s every {r['save_interval']}, final files {r['final_s']:.1f} s (first "
                    f"epoch {r['first_epoch_s']:.1f} s): {r['schedule_s'] / 60:.1f} min (extrapolated from 3 epochs) "
                    f"({r['device']})"
                )
    finally:
        torch.set_num_threads(previous_threads)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    fire.Fire(benchmark, serialize=lambda _: None)  # the numbers are printed (and written to --json_path)
