# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Run folders: the settings fingerprint (``run_config.json``), refusing to overwrite an earlier run's outputs,
moving them aside when asked to, and the checks of ``--resume``."""

from __future__ import annotations

import datetime
import fnmatch
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

from .files import atomic_write_json
from .handlers import checkpoint_run_record, latest_checkpoint
from .records import data_differences, data_fingerprint, fingerprint

__all__ = [
    "RUN_CONFIG",
    "RestoreOnFailure",
    "RunBackup",
    "check_folders",
    "check_minimums",
    "check_output_dir",
    "check_run_dir",
    "earlier_run_files",
    "fingerprint",
    "interrupted_message",
    "move_aside",
    "move_earlier_outputs",
    "previous_outputs",
    "remove_orphans",
    "resume_command",
    "resume_differences",
    "start_run",
]

logger = logging.getLogger("multi_condos")

RUN_CONFIG = "run_config.json"


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def previous_outputs(ckpt_dir: str, outputs: Sequence[str], checkpoint_subdir: str = "checkpoints") -> list[str]:
    """Files of an earlier run in ``ckpt_dir``: the named ``outputs`` and ``checkpoint_subdir/*.pt``."""
    found = [os.path.join(ckpt_dir, name) for name in outputs if os.path.isfile(os.path.join(ckpt_dir, name))]
    sub = os.path.join(ckpt_dir, checkpoint_subdir)
    if os.path.isdir(sub):
        found += sorted(os.path.join(sub, f) for f in os.listdir(sub) if f.endswith(".pt"))
    return found


def earlier_run_files(folder: str | None, patterns: Sequence[str]) -> list[str]:
    """
    The files of an earlier run in ``folder`` (its top level only): those whose name matches one of ``patterns``
    (``fnmatch``, e.g. ``"validation_metrics*"``). Only the named patterns: an ``output_dir`` may be a folder that
    holds other files too. TensorBoard event files of this process are this run's (a ``TensorBoardStatsHandler``
    creates its file when built, before the run starts; the file name holds the host and the pid).
    """
    if not folder or not patterns or not os.path.isdir(folder):
        return []
    own = f".{socket.gethostname()}.{os.getpid()}."
    names = sorted(
        n
        for n in os.listdir(folder)
        if any(fnmatch.fnmatch(n, p) for p in patterns) and not (n.startswith("events.out.tfevents.") and own in n)
    )
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def _listed(paths: Sequence[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (", ..." if len(paths) > n else "")


def _output_dir_message(output_dir: str, found: Sequence[str]) -> str:
    return (
        f"--output_dir {output_dir} already holds the outputs of an earlier run ({len(found)} file(s): "
        f"{_listed([os.path.basename(p) for p in found])}). Choose another --output_dir, or pass --overwrite True "
        f"(they are moved to {output_dir}/previous/<time>/)."
    )


def _saved_settings(ckpt_dir: str) -> dict[str, Any] | None:
    path = os.path.join(ckpt_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("settings")


def check_folders(folders: Mapping[str, Any]) -> None:
    """
    Check, before any compute and writing nothing, that each output folder (``{id: path}``) can be written: a path
    (not a number, which fire makes of ``--output_dir 2025``), not an existing file, writable or creatable.

    Raises:
        ValueError: naming the id, the path and what is wrong.
    """
    for name, folder in folders.items():
        if not isinstance(folder, (str, os.PathLike)):
            raise ValueError(
                f"--{name} {folder!r} is a {type(folder).__name__}, not a path (the command line reads a bare number as "
                f"one): write it as a path, e.g. --{name} ./{folder}, or quote it: --{name} \"'{folder}'\"."
            )
        path = os.path.abspath(os.fspath(folder))
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            what = "is an existing file" if existing == path else f"is inside {existing}, an existing file"
            raise ValueError(f"--{name} {path} {what}, not a folder: choose another --{name}.")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "is not writable" if existing == path else f"cannot be created ({existing} is not writable)"
            raise ValueError(f"--{name} {path} {what}: choose another --{name} or fix its permissions.")


def check_minimums(values: Mapping[str, Any], minimums: Mapping[str, Any] | None = None) -> None:
    """
    Check that each id of ``values`` is an integer of at least its minimum (``minimums[id]``, default 1, or
    ``[minimum, reason]``); ``None`` (e.g. ``epoch_length``: the whole dataset) passes.

    Raises:
        ValueError: naming every id that is not.
    """
    problems = []
    for name, value in values.items():
        rule = (minimums or {}).get(name, 1)
        minimum, reason = (rule[0], f" ({rule[1]})") if isinstance(rule, (list, tuple)) else (rule, "")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < int(minimum):
            problems.append(f"{name} must be an integer >= {minimum}{reason}, got {value!r}")
    if problems:
        raise ValueError("; ".join(problems) + ".")


def check_run_dir(
    ckpt_dir: str,
    settings: Mapping[str, Any],
    overwrite: bool = False,
    resume: bool = False,
    outputs: Sequence[str] = ("generators.pt",),
    resume_may_change: Sequence[str] = ("epochs",),
    data: Sequence[Mapping[str, Any]] | None = None,
    replaces: bool = False,
    output_dir: str | None = None,
    output_files: Sequence[str] = (),
) -> None:
    """
    Read-only check before a run (nothing is written, so it can run in ``initialize``).

    A resume is compared with the run it continues: the settings and data fingerprint stored in the latest complete
    checkpoint (``bundle.handlers.checkpoint_run_record``), or, for a checkpoint written without them, the settings of
    ``ckpt_dir/run_config.json``. Only the ids of ``resume_may_change`` may differ; ``overwrite`` turns a difference
    into a warning.

    Args:
        ckpt_dir: the run's checkpoint folder.
        settings: the run's settings (``run_config.json``).
        overwrite: the user's ``--overwrite``: a fresh run may replace an earlier run's outputs, a resume may continue
            with other settings or data.
        resume: the user's ``--resume``.
        outputs: the files of an earlier run besides ``checkpoints/*.pt``.
        resume_may_change: the ids a resume may change (e.g. ``epochs``, to extend a run).
        data: the records the run reads (their files' fingerprint is compared on resume).
        replaces: a fresh run moves an earlier run aside without ``--overwrite`` (fine-tuning: MONAI Label retrains
            ``models/model.pt`` in place); a resume is still compared.
        output_dir: the run's output folder: a fresh run refuses one that holds an earlier run's ``output_files``
            unless ``overwrite`` (``replaces`` does not apply to it).
        output_files: the name patterns of a run's files in ``output_dir`` (``earlier_run_files``).

    Raises:
        FileExistsError: a fresh run would replace an earlier run's outputs (in ``ckpt_dir``: unless ``overwrite``
            or ``replaces``; in ``output_dir``: unless ``overwrite``).
        FileNotFoundError: ``resume`` but no complete checkpoint in ``ckpt_dir/checkpoints``.
        ValueError: ``resume`` with settings or data that differ from the run it continues, and not ``overwrite``.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    if resume:
        checkpoint = latest_checkpoint(os.path.join(ckpt_dir, "checkpoints"))
        if checkpoint is None:
            raise FileNotFoundError(f"--resume True, but {ckpt_dir}/checkpoints holds no complete checkpoint.")
        differences = resume_differences(checkpoint, ckpt_dir, settings, resume_may_change, data)
        if differences:
            text = "; ".join(differences)
            data_changed = differences[-1].startswith("data:")
            what = "data" if data_changed and len(differences) == 1 else "settings and data" if data_changed else "settings"
            if not overwrite:
                raise ValueError(
                    f"--resume: the {what} differ from the run that wrote {checkpoint} ({text}). Resume with the "
                    "same settings and data, or pass --overwrite True to resume anyway."
                )
            logger.warning(f"--resume with --overwrite True: continuing {checkpoint} with other settings ({text})")
        return
    found = previous_outputs(ckpt_dir, outputs)
    if found and not (overwrite or replaces):
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints of an earlier run ({_listed(found)}). Continue it with --resume "
            "True, choose another --ckpt_dir, or pass --overwrite True (the earlier files are moved to "
            f"{ckpt_dir}/previous/)."
        )
    found = earlier_run_files(output_dir, output_files)
    if found and not overwrite:
        raise FileExistsError(_output_dir_message(os.fspath(output_dir), found))


def resume_differences(
    checkpoint: str,
    ckpt_dir: str,
    settings: Mapping[str, Any],
    resume_may_change: Sequence[str] = ("epochs",),
    data: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """
    What differs between a resume and the run that wrote ``checkpoint`` (its stored record, else
    ``ckpt_dir/run_config.json``): one ``id: before -> now`` per setting outside ``resume_may_change``, and the
    data files changed, added or removed. Empty when nothing is known of that run.
    """
    stored = checkpoint_run_record(checkpoint)
    saved = stored["settings"] if stored is not None else _saved_settings(ckpt_dir)
    differences: list[str] = []
    if saved is not None:
        now = _jsonable(settings)
        changed = sorted(k for k in set(saved) | set(now) if k not in resume_may_change and saved.get(k) != now.get(k))
        differences += [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed]
    if stored is not None and stored.get("data") and data is not None:
        text = data_differences(stored["data"], data_fingerprint(data))
        if text:
            differences.append(text)
    return differences


def move_aside(folder: str, paths: Sequence[str], copied: Sequence[str] = ()) -> str:
    """
    Move an earlier run's files (``paths``, inside ``folder``) to ``folder/previous/<time stamp>/`` keeping their
    relative paths; those in ``copied`` are copied there and stay in place. Returns the backup folder.
    """
    target = os.path.join(folder, "previous", datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    for path in paths:
        dst = os.path.join(target, os.path.relpath(path, folder))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        (shutil.copy2 if path in set(copied) else shutil.move)(path, dst)
    logger.warning(f"the earlier run's files in {folder} were backed up to {target}")
    return target


def check_output_dir(
    output_dir: str | os.PathLike, patterns: Sequence[str], overwrite: bool = False, what: str = "inference"
) -> list[str]:
    """
    Read-only check before any compute: ``output_dir`` holds no outputs of an earlier ``what`` (its files matching
    ``patterns``, ``earlier_run_files``), unless ``overwrite`` (``move_earlier_outputs`` then moves them aside).
    Returns those files.

    Raises:
        FileExistsError: naming the folder and a few of the earlier files.
    """
    found = earlier_run_files(os.fspath(output_dir), patterns)
    if found and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds the outputs of an earlier {what} ({len(found)} file(s): "
            f"{_listed([os.path.basename(p) for p in found])}). Choose another --output_dir, or pass --overwrite True "
            f"(they are moved to {output_dir}/previous/<time>/)."
        )
    return found


def move_earlier_outputs(
    output_dir: str | os.PathLike, patterns: Sequence[str], overwrite: bool = False, what: str = "inference"
) -> None:
    """Move the outputs of an earlier ``what`` (``check_output_dir``) to ``output_dir/previous/<time>/``."""
    found = check_output_dir(output_dir, patterns, overwrite, what)
    if found:
        move_aside(os.fspath(output_dir), found)


def start_run(
    ckpt_dir: str,
    output_dir: str,
    settings: Mapping[str, Any],
    overwrite: bool = False,
    resume: bool = False,
    outputs: Sequence[str] = ("generators.pt",),
    copy_outputs: bool = False,
    output_files: Sequence[str] = (),
) -> str:
    """
    Start a run (in ``run``, after the checks and the lock): remove the partial files of a run killed while writing
    (``remove_orphans``); for a fresh run, move an earlier run's outputs (allowed by ``overwrite``) to
    ``ckpt_dir/previous/<time stamp>/`` (``copy_outputs``: the named ``outputs`` are copied there and stay in place,
    e.g. a ``model.pt`` that MONAI Label loads to continue training) and its files in ``output_dir`` (the name
    patterns ``output_files``) to ``output_dir/previous/<time stamp>/``; then write ``run_config.json`` (settings and
    their fingerprint) to ``ckpt_dir`` and ``output_dir``. Returns the fingerprint.

    Raises:
        FileExistsError: a fresh run, without ``overwrite``, into folders holding an earlier run's files.
    """
    ckpt_dir, output_dir = os.fspath(ckpt_dir), os.fspath(output_dir)
    remove_orphans(ckpt_dir, output_dir)
    found = [] if resume else previous_outputs(ckpt_dir, outputs)
    found_out = [] if resume else earlier_run_files(output_dir, output_files)
    if (found or found_out) and not overwrite:
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints of an earlier run: {found[:3]}"
            if found
            else _output_dir_message(output_dir, found_out)
        )
    if found and os.path.isfile(os.path.join(ckpt_dir, RUN_CONFIG)):
        found.append(os.path.join(ckpt_dir, RUN_CONFIG))
    kept = [os.path.join(ckpt_dir, name) for name in outputs] if copy_outputs else []
    same = os.path.abspath(ckpt_dir) == os.path.abspath(output_dir)
    moves = {ckpt_dir: list(dict.fromkeys(found + found_out))} if same else {ckpt_dir: found, output_dir: found_out}
    for folder, paths in moves.items():
        if paths:
            move_aside(folder, paths, kept)
    record = {
        "fingerprint": fingerprint(settings),
        "settings": _jsonable(settings),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "resumed": bool(resume),
    }
    for folder in dict.fromkeys([ckpt_dir, output_dir]):
        atomic_write_json(os.path.join(folder, RUN_CONFIG), record)
    return record["fingerprint"]


#: ignite's ``DiskSaver`` writes a checkpoint to ``tempfile.NamedTemporaryFile`` (``tmp`` and 8 characters) first;
#: ``bundle.files.atomic_write`` to ``.tmp_<...>``: a kill during the write leaves them behind
_ORPHAN_PATTERNS = (re.compile(r"^tmp[a-z0-9_]{8}$"), re.compile(r"^\.tmp_.+"))


def remove_orphans(ckpt_dir: str, output_dir: str | None = None, checkpoint_subdir: str = "checkpoints") -> list[str]:
    """
    Remove the temporary files of a run killed while writing a checkpoint or a record (``ckpt_dir``,
    ``ckpt_dir/checkpoint_subdir``, ``output_dir``), with a warning naming them. Call it only with the folders'
    lock held (``bundle.locks.RunLock``): no other run can be writing them. Returns the removed paths.
    """
    folders = [ckpt_dir, os.path.join(ckpt_dir, checkpoint_subdir), *([output_dir] if output_dir else [])]
    removed = []
    for folder in dict.fromkeys(os.path.abspath(os.fspath(f)) for f in folders):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if any(p.match(name) for p in _ORPHAN_PATTERNS) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    if removed:
        logger.warning(f"removed {len(removed)} partial file(s) of a run killed while writing: {', '.join(removed)}")
    return removed


def resume_command(argv: Sequence[str] | None = None) -> str:
    """
    The command line that continues a run: ``argv`` (default ``sys.argv``; ``python -m monai.bundle`` for the
    bundle runner) without its ``--resume`` and ``--overwrite`` options, with ``--resume True``.
    """
    args = list(sys.argv if argv is None else argv)
    head = args[:1]
    if head and head[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        head = ["python", "-m", "monai.bundle"]
    elif head and head[0].endswith(".py"):
        head = ["python", head[0]]
    rest, i = [], 1
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name in ("--resume", "--overwrite"):
            i += 1 if "=" in args[i] else 2
            continue
        rest.append(args[i])
        i += 1
    return shlex.join([*head, *rest, "--resume", "True"])


def interrupted_message(engine: Engine, ckpt_dir: str | None, argv: Sequence[str] | None = None) -> str:
    """
    The one line a run stopped by Ctrl-C ends with: where it stopped, the last complete checkpoint in
    ``ckpt_dir/checkpoints`` (``bundle.handlers.latest_checkpoint``) and the command that continues from it.
    """
    where = f"stopped by Ctrl-C at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
    if not ckpt_dir:
        return f"{where}."
    checkpoint_dir = os.path.join(os.fspath(ckpt_dir), "checkpoints")
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is None:
        return (
            f"{where}: no complete checkpoint in {checkpoint_dir} yet (one is written every save_interval epochs), "
            "nothing to resume; run the command again (with --overwrite True to move this run's files aside)."
        )
    return f"{where}. The last complete checkpoint is {checkpoint}; continue with: {resume_command(argv)}"


class RunBackup:
    """
    The records a run rewrites (``run_config.json``, ``init.txt``, ``label_subjects.json``, ``run_record.json``,
    ``model.pt`` and its record): ``save`` (first in ``run``) keeps a copy of each beside it, ``restore`` (the run
    failed) puts them back and removes those the run created, ``discard`` (it completed) removes the copies. A failed
    run thus leaves the records of the earlier one, describing the model that is still there.
    """

    SUFFIX = ".before-run"

    def __init__(self, files: Sequence[str]) -> None:
        self.files = [os.path.abspath(os.fspath(f)) for f in files]
        self.existed: dict[str, bool] = {}

    def save(self) -> None:
        self.existed = {path: os.path.isfile(path) for path in self.files}
        for path, existed in self.existed.items():
            if existed:
                shutil.copy2(path, path + self.SUFFIX)

    def restore(self, *_: object) -> None:
        for path, existed in self.existed.items():
            if existed and os.path.isfile(path + self.SUFFIX):
                os.replace(path + self.SUFFIX, path)
            elif not existed and os.path.isfile(path):
                os.remove(path)
        if self.existed:
            logger.warning(f"the run failed: its records were rolled back ({', '.join(self.files)})")
        self.existed = {}

    def discard(self, *_: object) -> None:
        for path in self.existed:
            if os.path.isfile(path + self.SUFFIX):
                os.remove(path + self.SUFFIX)
        self.existed = {}


class RestoreOnFailure:
    """
    ``backup.restore`` when the engine fails, ``backup.discard`` when it completes. It does not re-raise the error:
    put it before a handler that does (``bundle.locks.ReleaseLockHandler``).
    """

    def __init__(self, backup: RunBackup) -> None:
        self.backup = backup

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.backup.discard)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.backup.restore)
