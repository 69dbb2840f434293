"""Runs that cannot lie (issue 14): resume compared with its checkpoint, leak checks, content-keyed disk cache, folder
locks, clean errors before any compute, inference that keeps earlier masks, failed runs that keep earlier records."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.handlers import checkpoint_run_record
from conftest import config_path, run_workflow

TRAIN = config_path("train.yaml")
PRETRAIN = config_path("pretrain.yaml")


def _initialize(config_file, overrides: dict, workflow_type: str | None = "train") -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **overrides)
    wf.initialize()
    return wf


def _json(folder: str, name: str = "run_record.json") -> dict:
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def test_finetune_resume_is_compared_with_its_checkpoint(train_overrides, dataset_copy, caplog):
    overrides = {**train_overrides, **dataset_copy}
    run_workflow(TRAIN, overrides, workflow_type="train")
    models, out = overrides["ckpt_dir"], overrides["output_dir"]
    checkpoint = os.path.join(models, "checkpoints", "checkpoint_final.pt")
    stored = checkpoint_run_record(checkpoint)
    assert stored["settings"]["label_fraction"] == 1.0 and stored["data"]["n_files"] == 16
    before = {name: open(os.path.join(out, name)).read() for name in ("run_config.json", "init.txt")}

    # the case: other fraction, learning rate and initialisation on --resume
    changed = {**overrides, "resume": True, "epochs": 2, "label_fraction": 0.3, "learning_rate": 0.05}
    with pytest.raises(SystemExit, match=r"settings and data differ from the run that wrote .*checkpoint_final.pt .*label_fraction: 1.0 -> 0.3.*learning_rate"):
        _initialize(TRAIN, {**changed, "pretrained_ckpt": "$None"})
    assert {name: open(os.path.join(out, name)).read() for name in before} == before  # nothing rewritten

    _initialize(TRAIN, {**overrides, "resume": True, "epochs": 2})  # epochs may change
    t1 = json.load(open(overrides["data_list_file_path"]))["training"][0]["t1"]
    touched = os.path.join(overrides["dataset_dir"], t1)
    os.utime(touched, ns=(1, 1))
    with pytest.raises(SystemExit, match=rf"the data differ .*data: 1 file\(s\) changed \({touched}\)"):
        _initialize(TRAIN, {**overrides, "resume": True, "epochs": 2})
    logger = logging.getLogger("multi_condos")  # logging.conf stops it propagating to caplog's root handler
    logger.addHandler(caplog.handler)
    try:
        _initialize(TRAIN, {**overrides, "resume": True, "epochs": 2, "overwrite": True})
    finally:
        logger.removeHandler(caplog.handler)
    assert "continuing" in caplog.text and "1 file(s) changed" in caplog.text


def test_pretrain_checkpoints_carry_the_run_record(pretrain_overrides):
    run_workflow(PRETRAIN, {**pretrain_overrides, "epochs": 1}, run_id="training")
    path = os.path.join(pretrain_overrides["ckpt_dir"], "checkpoints", "checkpoint_final.pt")
    stored = checkpoint_run_record(path)
    saved = json.load(open(os.path.join(pretrain_overrides["ckpt_dir"], "run_config.json")))
    assert stored["fingerprint"] == saved["fingerprint"] and stored["data"]["n_files"] == 16
    assert torch.load(path, weights_only=True)["trainer"]["iteration"] == 2  # still a plain weights_only checkpoint
    umask = os.umask(0)
    os.umask(umask)
    for name in ("generators.pt", "generators.json", "checkpoints/checkpoint_final.pt"):  # not mkstemp's 0600
        assert os.stat(os.path.join(pretrain_overrides["ckpt_dir"], name)).st_mode & 0o777 == 0o644 & ~umask, name


# ---- leaks and duplicates (issue case 5) ----


def _datalist(dataset: dict[str, str]) -> dict:
    return json.load(open(dataset["data_list_file_path"]))


def _write_datalist(dataset: dict[str, str], content: dict) -> None:
    with open(dataset["data_list_file_path"], "w") as f:
        json.dump(content, f)


def _sections(dataset: dict[str, str], keys=("t1", "t2")) -> dict:
    from bundle.data import load_datalist

    loaded = load_datalist(dataset["data_list_file_path"], dataset["dataset_dir"], list(keys), ("training", "validation"))
    testing = load_datalist(dataset["data_list_file_path"], dataset["dataset_dir"], list(keys), ("testing",))
    return {**loaded, **testing}


def test_leaks_and_duplicates_are_named(dataset_copy):
    import shutil

    from bundle.validation import check_overlaps

    content = _datalist(dataset_copy)
    test_record = content["testing"][0]
    renamed = {"subject": "demo_100"}
    for key in ("t1", "t2", "label"):  # a testing subject copied under another name
        renamed[key] = test_record[key].replace(test_record["subject"], "demo_100")
        os.makedirs(os.path.join(dataset_copy["dataset_dir"], os.path.dirname(renamed[key])), exist_ok=True)
        shutil.copy(*(os.path.join(dataset_copy["dataset_dir"], r[key]) for r in (test_record, renamed)))
    training = content["training"]
    content["training"] = [*training, test_record, renamed, training[0], {**training[2], "subject": training[1]["subject"]}]
    content["validation"] = [training[3]]
    _write_datalist(dataset_copy, content)
    with pytest.raises(ValueError) as err:
        check_overlaps(_sections(dataset_copy), ["t1", "t2"])
    message = str(err.value)
    t, s0, s1, s3 = test_record["subject"], training[0]["subject"], training[1]["subject"], training[3]["subject"]
    assert f"subject {t} is in both 'training' and 'testing'" in message
    assert f"subject {s3} is in both 'training' and 'validation'" in message
    assert f"'training': subject {s0} is listed twice (records 0 and 10)" in message
    assert f"'training': subject id {s1} is used by two records (1 and 11)" in message
    assert f"subjects {t} ('training') and demo_100 ('training') have the same 't1' image content" in message
    assert message.startswith("5 leak(s) or duplicate(s)") and "--allow_overlap True" in message
    assert len(check_overlaps(_sections(dataset_copy), ["t1", "t2"], allow_overlap=True)) == 5  # a warning only


def test_a_leak_stops_pretraining_before_any_compute(pretrain_overrides, dataset_copy):
    content = _datalist(dataset_copy)
    content["training"].append(content["testing"][0])
    _write_datalist(dataset_copy, content)
    overrides = {**pretrain_overrides, **dataset_copy}
    subject = content["testing"][0]["subject"]
    with pytest.raises(SystemExit, match=f"subject {subject} is in both 'training' and 'testing'"):
        _initialize(PRETRAIN, overrides, None)
    assert not os.path.exists(overrides["ckpt_dir"]) and not os.path.exists(overrides["output_dir"])
    _initialize(PRETRAIN, {**overrides, "allow_overlap": True}, None)


# ---- the disk cache (issue case 2) ----


def test_disk_cache_is_keyed_by_file_contents(tmp_path):
    import nibabel as nib
    import numpy as np
    from monai.transforms import LoadImaged

    from bundle.data import cached_dataset

    path = str(tmp_path / "s00_t1.nii.gz")
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 1.0, np.float32), np.eye(4)), path)
    args = {"cache": "disk", "cache_dir": str(tmp_path / "cache")}
    assert float(cached_dataset([{"t1": path}], LoadImaged("t1"), args)[0]["t1"].max()) == 1.0
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 7.0, np.float32), np.eye(4)), path)  # same size, new content
    assert float(cached_dataset([{"t1": path}], LoadImaged("t1"), args)[0]["t1"].max()) == 7.0


# ---- one run per folder (issue cases 3 and 4) ----


def test_a_second_run_into_a_locked_folder_is_refused(pretrain_overrides, tmp_path):
    from conftest import make_workflow

    first = make_workflow(PRETRAIN, {**pretrain_overrides, "epochs": 1}, run_id="training")
    first.parser.get_parsed_content("run_lock").acquire()  # the first step of its run: it is now running
    lock = os.path.join(pretrain_overrides["ckpt_dir"], ".run.lock")
    assert json.load(open(lock))["pid"] == os.getpid()
    other = {**pretrain_overrides, "ckpt_dir": str(tmp_path / "other")}  # the README's ablations share output_dir
    with pytest.raises(SystemExit, match=rf"--output_dir .* is in use by another run \(pre-training started .* pid {os.getpid()}"):
        _initialize(PRETRAIN, other, None).run()
    with pytest.raises(SystemExit, match=r"--ckpt_dir .* is in use by another run"):
        _initialize(PRETRAIN, {**pretrain_overrides, "output_dir": str(tmp_path / "other_out")}, None).run()
    assert not os.path.exists(tmp_path / "other" / ".run.lock")  # a refused run holds nothing
    first.run()
    assert not os.path.exists(lock)  # released on COMPLETED


def test_default_output_dir_follows_ckpt_dir():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(PRETRAIN)
    parser.update({"bundle_root": "/b", "ckpt_dir": "/b/models/pretrain_no_con/"})  # the README's ablation commands
    assert parser.get_parsed_content("output_dir") == "/b/outputs/pretrain_no_con"


def test_stale_and_foreign_locks(tmp_path):
    import subprocess
    import sys

    from ignite.engine import Engine

    from bundle.locks import LOCK_NAME, ReleaseLockHandler, RunLock, process_start_time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": gone.pid, "process_start": "1"}))
    lock = RunLock({"ckpt_dir": str(tmp_path)}).acquire()  # the dead owner's lock is taken over
    assert json.loads(path.read_text())["process_start"] == process_start_time(os.getpid())
    engine = Engine(lambda e, b: 1 / 0)
    ReleaseLockHandler(lock).attach(engine)
    with pytest.raises(ZeroDivisionError):
        engine.run([0])
    assert not path.exists()  # released on EXCEPTION_RAISED, the error still raised
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "2025-01-01T00:00:00", "command": "x"}))
    with pytest.raises(FileExistsError, match=rf"started 2025-01-01T00:00:00 on host elsewhere, pid 1: x\). .*delete {path}"):
        RunLock({"output_dir": str(tmp_path)}).acquire()


# ---- clean errors before any compute (issue case 8) ----


def _replace_volume(dataset: dict[str, str], relative: str, make) -> str:
    import nibabel as nib
    import numpy as np

    path = os.path.join(dataset["dataset_dir"], relative)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(make(np.asarray(img.dataobj)).astype(np.float32), img.affine), path)
    return path


def test_blank_and_2d_volumes_are_named(pretrain_overrides, train_overrides, dataset_copy):
    import numpy as np

    content = _datalist(dataset_copy)
    content["validation"], content["training"] = content["training"][-2:], content["training"][:-2]
    _write_datalist(dataset_copy, content)  # a fixed validation list: the three subjects below are training ones
    s0, s1, s2 = content["training"][:3]
    both = [_replace_volume(dataset_copy, s0[k], np.zeros_like) for k in ("t1", "t2")]
    one = _replace_volume(dataset_copy, s1["t2"], lambda a: np.full_like(a, 3.0))  # a blank B beside a real A
    flat = _replace_volume(dataset_copy, s2["t1"], lambda a: a[:, :, 0])
    with pytest.raises(SystemExit) as err:
        _initialize(PRETRAIN, {**pretrain_overrides, **dataset_copy}, None)
    message = str(err.value)
    for key, path in zip(("t1", "t2"), both):
        assert f"subject {s0['subject']}, key '{key}', file {path}: a blank image (every voxel is 0)" in message
    assert f"subject {s1['subject']}, key 't2', file {one}: a blank image (every voxel is 3)" in message
    assert f"subject {s2['subject']}, key 't1', file {flat}: a 2-D image (shape (32, 32))" in message
    assert not os.path.exists(pretrain_overrides["output_dir"])

    content["validation"] = [s0]  # a blank validation subject of fine-tuning
    content["training"] = content["training"][3:]  # (6 subjects)
    _write_datalist(dataset_copy, content)
    with pytest.raises(SystemExit, match=rf"subject {s0['subject']}, key 'image', file {both[0]}: a blank image"):
        _initialize(TRAIN, {**train_overrides, **dataset_copy})


@pytest.mark.parametrize(
    "override, message",
    [
        ({"batch_size": 0}, r"batch_size must be an integer >= 2 \(the contrastive loss .*\), got 0"),
        ({"batch_size": 1}, r"batch_size must be an integer >= 2 .*got 1"),
        ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
        ({"epoch_length": 0}, r"epoch_length must be an integer >= 1, got 0"),
        ({"log_interval": 0}, r"log_interval must be an integer >= 1, got 0"),
        ({"val_interval": 0}, r"val_interval must be an integer >= 1, got 0"),
        ({"output_dir": 2025}, r"--output_dir 2025 is a int, not a path .* --output_dir ./2025"),
    ],
)
def test_bad_schedule_values_stop_before_anything(pretrain_overrides, override, message):
    with pytest.raises(SystemExit, match=message):
        _initialize(PRETRAIN, {**pretrain_overrides, **override}, None)
    assert not os.path.exists(pretrain_overrides["ckpt_dir"])


def test_unwritable_output_folders_stop_before_anything(train_overrides, tmp_path, monkeypatch):
    existing = tmp_path / "a_file"
    existing.write_text("x")
    with pytest.raises(SystemExit, match=rf"--output_dir {existing} is an existing file, not a folder"):
        _initialize(TRAIN, {**train_overrides, "output_dir": str(existing)})
    with pytest.raises(SystemExit, match=r"batch_size must be an integer >= 1, got 0"):
        _initialize(TRAIN, {**train_overrides, "batch_size": 0})
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(read_only) else real_access(p, mode))
    with pytest.raises(SystemExit, match=rf"--output_dir {read_only}/out cannot be created \({read_only} is not writable"):
        _initialize(TRAIN, {**train_overrides, "output_dir": str(read_only / "out")})
    assert not os.path.exists(train_overrides["ckpt_dir"])


# ---- a failed fine-tune keeps the earlier records (issue case 6) ----


def test_a_failed_finetune_leaves_the_earlier_records(train_overrides, monkeypatch):
    from monai.losses import DiceCELoss

    run_workflow(TRAIN, train_overrides, workflow_type="train")
    models, out = train_overrides["ckpt_dir"], train_overrides["output_dir"]
    files = [os.path.join(models, f) for f in ("model.pt", "model.json", "run_config.json")]
    files += [os.path.join(out, f) for f in ("run_config.json", "init.txt", "label_subjects.json", "run_record.json")]
    before = {path: open(path, "rb").read() for path in files}
    logs = {f: open(os.path.join(out, f), "rb").read() for f in ("train_log.txt", "validation_metrics.csv")}
    assert _json(out)["fingerprint"] == _json(out, "run_config.json")["fingerprint"]  # the record of the earlier run

    def fail(self, *args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(DiceCELoss, "forward", fail)
    failing = {**train_overrides, "pretrained_ckpt": "$None", "label_fraction": 0.5}
    with pytest.raises(RuntimeError) as err:
        run_workflow(TRAIN, failing, workflow_type="train")
    assert "out of memory (simulated)" in str(err.value.__cause__ or err.value)
    assert {path: open(path, "rb").read() for path in files} == before  # records of the model that is still there
    assert not [f for f in os.listdir(models) + os.listdir(out) if f.endswith(".before-run")]
    # the earlier logs were moved aside, not mixed with the failed run's
    (stamp,) = os.listdir(os.path.join(out, "previous"))
    assert {f: open(os.path.join(out, "previous", stamp, f), "rb").read() for f in logs} == logs
    assert not os.path.exists(os.path.join(models, ".run.lock"))


# ---- each output folder's record of what produced its files (run_record.json) ----


def test_pretraining_records_what_produced_its_files(tiny_generators):
    from bundle.records import fingerprint

    ckpt_dir = os.path.dirname(tiny_generators)  # the session's tiny pre-training: no model read
    record = _json(os.path.join(os.path.dirname(ckpt_dir), "out"))
    assert record["workflow"] == "pre-training" and record["models"] == []
    assert record["fingerprint"] == _json(ckpt_dir, "run_config.json")["fingerprint"] == fingerprint(record["settings"])
    stored = checkpoint_run_record(os.path.join(ckpt_dir, "checkpoints", "checkpoint_final.pt"))
    assert record["data"]["fingerprint"] == stored["data"]["fingerprint"] and record["data"]["n_files"] == 16
    assert {tiny_generators, "pretrain_log.txt", "validation_metrics.csv"} <= set(record["outputs"])


def test_the_record_follows_the_last_files_and_precedes_the_lock_release(tmp_path, monkeypatch):
    from ignite.engine import Engine, Events

    import bundle.run_history
    from bundle.locks import LOCK_NAME, ReleaseLockHandler, RunLock
    from bundle.run_history import OutputRecordHandler

    lock_file = tmp_path / LOCK_NAME
    locked_when_written = []
    write = bundle.run_history.write_output_record
    monkeypatch.setattr(
        bundle.run_history, "write_output_record", lambda *a: locked_when_written.append(lock_file.exists()) or write(*a)
    )
    engine = Engine(lambda e, b: None)
    for handler in (  # as in the configs: the record's handler before the lock's
        OutputRecordHandler(str(tmp_path), "test", {"a": 1}, outputs=[str(tmp_path / "final*.txt")]),
        ReleaseLockHandler(RunLock({"output_dir": str(tmp_path)}).acquire()),
    ):
        handler.attach(engine)
    # a handler attached after them (as a workflow's final export is): its file comes before the record
    engine.add_event_handler(Events.COMPLETED, lambda e: (tmp_path / "final_export.txt").write_text("x"))
    engine.run([0])
    assert _json(str(tmp_path))["outputs"] == ["final_export.txt"] and locked_when_written == [True]
    assert not lock_file.exists()


def test_no_progress_bar_when_output_is_not_a_terminal(pretrain_overrides):
    import sys

    assert not sys.stderr.isatty()  # pytest captures it, as a log file would
    wf = _initialize(PRETRAIN, pretrain_overrides, None)
    assert "ignite.handlers.ProgressBar" in [h["_target_"] for h in wf.parser["train"]["handlers"]]  # for terminals
    built = [type(h).__name__ for h in wf.parser.get_parsed_content("train#handlers")]
    assert "ProgressBar" not in built and "EngineCheckpointSaver" in built


# ---- item 9: Ctrl-C, partial files of a killed run, histories after a resume ----


def test_ctrl_c_stops_with_one_line_and_the_resume_continues_cleanly(pretrain_overrides, monkeypatch, capfd):
    import csv

    from bundle.run_history import ValidationHistoryHandler

    overrides = {**pretrain_overrides, "epoch_length": 1, "log_interval": 1}  # 2 epochs of 1 iteration, each saved
    original = ValidationHistoryHandler.__call__

    def interrupted(self, engine):  # Ctrl-C in the validation of epoch 2, after its row, before its checkpoint
        original(self, engine)
        if engine.state.epoch == 2 and type(self) is ValidationHistoryHandler:  # not its subclass LossHistoryHandler
            raise KeyboardInterrupt

    monkeypatch.setattr(ValidationHistoryHandler, "__call__", interrupted)
    capfd.readouterr()
    message = ""
    try:
        run_workflow(PRETRAIN, overrides, run_id="training")
    except KeyboardInterrupt:  # fail this test, not the whole session
        pytest.fail("Ctrl-C ended the run with a KeyboardInterrupt (and tracebacks), not a one-line stop")
    except SystemExit as e:
        message = str(e)
    checkpoints = os.path.join(overrides["ckpt_dir"], "checkpoints")
    assert message.startswith(
        "ERROR: stopped by Ctrl-C at epoch 2, iteration 2. The last complete checkpoint is "
        f"{checkpoints}/checkpoint_epoch=1.pt; continue with: "
    )
    assert message.endswith(" --resume True") and "\n" not in message
    printed = capfd.readouterr()
    printed = printed.out + printed.err
    assert "Traceback" not in printed and "terminating due to exception" not in printed and "Exception:" not in printed
    assert not os.path.exists(os.path.join(overrides["ckpt_dir"], ".run.lock"))  # released
    assert not os.path.exists(os.path.join(overrides["output_dir"], "run_record.json"))  # only a run that completes

    monkeypatch.setattr(ValidationHistoryHandler, "__call__", original)
    orphans = [os.path.join(checkpoints, "tmpab12_x9z"), os.path.join(overrides["ckpt_dir"], ".tmp_k3j_generators.pt")]
    for path in orphans:  # what a kill -9 during the writes leaves
        open(path, "wb").write(b"partial")
    run_workflow(PRETRAIN, {**overrides, "resume": True}, run_id="training")
    assert not [p for p in orphans if os.path.exists(p)]
    out = overrides["output_dir"]
    assert [r["epoch"] for r in csv.DictReader(open(os.path.join(out, "validation_metrics.csv")))] == ["1", "2"]
    assert [r["iteration"] for r in csv.DictReader(open(os.path.join(out, "losses.csv")))] == ["1", "2"]
    record = json.load(open(os.path.join(out, "run_record.json")))
    assert record["fingerprint"] == json.load(open(os.path.join(out, "run_config.json")))["fingerprint"]
    assert f"{checkpoints}/checkpoint_epoch=1.pt" in record["outputs"]  # written before the resume, part of the run


def test_resume_command_drops_resume_and_overwrite():
    from bundle.runs import resume_command

    argv = "/x/monai/bundle/__main__.py run training --config_file configs/pretrain.yaml --overwrite True".split()
    argv += ["--resume=False", "--ckpt_dir", "models/a b"]
    expected = "python -m monai.bundle run training --config_file configs/pretrain.yaml --ckpt_dir 'models/a b'"
    assert resume_command(argv) == expected + " --resume True"


def test_all_empty_validation_labels_are_refused(train_overrides, dataset_copy):
    import numpy as np

    content = _datalist(dataset_copy)
    content["validation"], content["training"] = content["training"][-2:], content["training"][:-2]
    for record in content["validation"]:
        _replace_volume(dataset_copy, record["label"], np.zeros_like)
    _write_datalist(dataset_copy, content)
    subjects = ", ".join(r["subject"] for r in content["validation"])
    message = rf"the labels of all 2 validation subject\(s\) are empty \({subjects}\): the validation Dice"
    with pytest.raises(SystemExit, match=message):
        _initialize(TRAIN, {**train_overrides, **dataset_copy})
    assert not os.path.exists(train_overrides["ckpt_dir"]) and not os.path.exists(train_overrides["output_dir"])


def test_evaluating_weights_of_other_features_stops_before_anything(tiny_dataset, tmp_path):
    from monai.networks.nets import BasicUNet

    from conftest import ROOT, TINY_NET, make_workflow

    models = tmp_path / "models"
    models.mkdir()
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=TINY_NET["features"])
    torch.save(net.state_dict(), models / "model.pt")  # weights without a record (bundle 0.2.0)
    overrides = {"bundle_root": str(ROOT), **tiny_dataset, "ckpt_dir": str(models), "output_dir": str(tmp_path / "ev")}
    with pytest.raises(SystemExit, match=rf"{models}/model.pt does not fit network_def \(size mismatch .*--features"):
        make_workflow([TRAIN, config_path("evaluate.yaml")], overrides)
    assert not os.path.exists(tmp_path / "ev")
