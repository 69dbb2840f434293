"""torchrun + DDP on CPU (gloo): 2-process runs of the multi_gpu overlays, and equality with a 1-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_NET

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env(**env_vars: str) -> dict[str, str]:
    """The workers' environment: one thread each (2 processes on the CI's 2 cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **env_vars}


def _run(cmd: list[str], timeout: int = 300, **env_vars: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout, env=_env(**env_vars))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _dump_and_cleanup(net_id: str) -> str:
    save = (
        f"$torch.save(bundle.networks.unwrap(@{net_id}).state_dict(), @output_dir + '/rank' "
        "+ str(torch.distributed.get_rank()) + '.pt')"
    )
    return repr([save, "$bundle.distributed.cleanup()"])


def _args(overrides: dict) -> list[str]:
    out = []
    for key, value in overrides.items():
        out += [f"--{key}", str(value)]
    return out


def _assert_same_on_both_ranks(output_dir: str) -> None:
    s0 = torch.load(os.path.join(output_dir, "rank0.pt"))
    s1 = torch.load(os.path.join(output_dir, "rank1.pt"))
    assert s0.keys() == s1.keys()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)


def test_two_process_pretraining_and_finetuning(tiny_dataset, tmp_path):
    common = {**tiny_dataset, "image_size": 32, "epochs": 1}
    pre = {
        **common,
        "ckpt_dir": str(tmp_path / "pre"),
        "output_dir": str(tmp_path / "pre_out"),
        "epoch_length": 2,
        "batch_size": 2,
        "val_fraction": 0.25,
        "val_slices_per_subject": 1,
        **TINY_NET,
        "log_interval": 1,
        "device_cache": True,
        "finalize": _dump_and_cleanup("generators"),
    }
    config = "['configs/pretrain.yaml','configs/multi_gpu_pretrain.yaml']"
    proc = _run([*TORCHRUN, "-m", "monai.bundle", "run", "training", "--config_file", config, *_args(pre)])
    assert "contrastive: " in proc.stdout + proc.stderr  # rank 0 logs every term
    # the device path under torchrun: each rank holds and samples its own half of the 6 training subjects
    assert (proc.stdout + proc.stderr).count("device_cache True: 3 pre-training volumes") == 2
    _assert_same_on_both_ranks(pre["output_dir"])
    # rank 0 alone wrote the outputs: one TensorBoard writer per handler, one generators.pt
    events = [f for f in os.listdir(pre["output_dir"]) if f.startswith("events.out")]
    assert len(events) == 2 and len({f.split(".")[-2] for f in events}) == 1
    gens = torch.load(os.path.join(pre["ckpt_dir"], "generators.pt"))
    assert "module." not in next(iter(gens["g_ab"]))

    fine = {
        **common,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "fine_out"),
        "pretrained_ckpt": os.path.join(pre["ckpt_dir"], "generators.pt"),
        "epoch_length": 2,
        "val_interval": 1,
        "batch_size": 4,
        "samples_per_subject": 2,
        "val_fraction": 0.25,
        "features": TINY_NET["features"],
        "device_cache": True,
        "finalize": _dump_and_cleanup("network"),
    }
    config = "['configs/train.yaml','configs/multi_gpu_train.yaml']"
    proc = _run([*TORCHRUN, "-m", "monai.bundle", "run", "--config_file", config, *_args(fine)])
    assert (proc.stdout + proc.stderr).count("device_cache True: 3 fine-tuning volumes") == 2
    _assert_same_on_both_ranks(fine["output_dir"])
    assert os.path.isfile(os.path.join(fine["ckpt_dir"], "model.pt"))


def _one_process_in_process(out: str) -> None:
    """``tests/ddp_worker.py`` as one plain process, run here (one thread, as the workers; RNG state restored)."""
    import ddp_worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            ddp_worker.main(out)
    finally:
        torch.set_num_threads(threads)


def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    # the 2-process run in the background while this process computes the 1-process reference (no second start-up)
    torchrun = subprocess.Popen(
        [*TORCHRUN, "tests/ddp_worker.py", two], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _one_process_in_process(one)
        output = torchrun.communicate(timeout=300)[0]
    finally:
        torchrun.kill()
    assert torchrun.returncode == 0, output[-3000:]
    s1, s2, s2b = torch.load(one), torch.load(two), torch.load(two + ".rank1")
    for part in ("generators", "discriminators"):
        for key, value in s1[part].items():
            assert torch.equal(s2[part][key], s2b[part][key]), key  # identical across ranks
            # rounding differences are about 1e-5 here; the steps themselves reach 1e-1
            torch.testing.assert_close(s2[part][key], value, rtol=1e-3, atol=3e-5, msg=key)
    # the steps changed the weights (a comparison of untouched weights would prove nothing)
    torch.manual_seed(0)
    from bundle.networks import MultiConDoSGenerators

    init = MultiConDoSGenerators(features=(8, 8, 16, 16, 32, 8), projection_hidden=16, projection_dim=8).state_dict()
    moved = [k for k in init if not torch.allclose(init[k], s1["generators"][k])]
    assert len(moved) > len(init) // 2


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_local_contrastive_term(tmp_path):
    """contrastive: both, the location vectors gathered across ranks (gather_with_grad): 2 ranks = 1 process."""
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    _run([sys.executable, "tests/ddp_worker.py", one], LOCAL="1")
    _run([*TORCHRUN, "tests/ddp_worker.py", two], LOCAL="1")
    s1, s2 = torch.load(one), torch.load(two)
    assert any(k.startswith("local_head.") for k in s1["generators"])
    for key, value in s1["generators"].items():
        torch.testing.assert_close(s2["generators"][key], value, rtol=1e-3, atol=3e-5, msg=key)
