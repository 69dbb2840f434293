# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
One run at a time per folder: a lock file in each ``ckpt_dir`` / ``output_dir`` naming its owner (host, pid, the
process's start time, the command). It is taken first in a config's ``run``, after every check of ``initialize``
(``validate_data`` shares those and writes nothing), before anything is written, and released by the engine's ``COMPLETED`` / ``EXCEPTION_RAISED`` events, not in
``finalize``: ``monai.bundle run`` calls that outside any ``try``, and MONAI Label trains inside its server process.
A lock whose process is gone (or whose pid now belongs to another process) is stale and taken over with a warning.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import socket
import sys
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

from .runs import interrupted_message

__all__ = ["LOCK_NAME", "ReleaseLockHandler", "RunLock", "lock_owner", "process_start_time"]

logger = logging.getLogger("multi_condos")

LOCK_NAME = ".run.lock"

#: the locks held by this process (lock file -> holder); a holder that is gone (a workflow that failed before its
#: engine ran, then dropped) leaves a stale lock
_HELD: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from ``/proc``): with the pid it names one process
    (a pid is reused, a start time with it is not). ``None`` where ``/proc`` is unavailable or the process is gone."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def lock_owner(path: str) -> dict[str, Any] | None:
    """The owner recorded in lock file ``path`` (``{}`` for an unreadable one), ``None`` when there is no lock."""
    try:
        with open(path) as f:
            owner = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_stale(path: str, owner: Mapping[str, Any]) -> bool:
    """Whether the run that took lock ``path`` is certainly gone (a lock of another host is never stale here)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    pid = owner["pid"]
    if pid == os.getpid() and owner.get("process_start") == process_start_time(pid):
        gc.collect()  # a failed workflow of this process that was dropped releases its holder
        holder = _HELD.get(path)
        return holder is None or holder.token != owner.get("token")
    return not _running(pid) or process_start_time(pid) != owner.get("process_start")


class RunLock:
    """
    The lock of a run's folders: ``acquire`` (first in ``run``) takes one lock file per folder, ``release`` (by
    ``ReleaseLockHandler``, when the engine completes or fails) removes them. A folder locked by a live run stops this one with a message naming it.

    Args:
        folders: ``{id: folder}``, e.g. ``{"ckpt_dir": ..., "output_dir": ...}`` (the id names the option in messages);
            empty on the ranks of a multi-GPU run that write nothing.
        workflow: what runs (for the owner record).
    """

    def __init__(self, folders: Mapping[str, str | os.PathLike], workflow: str = "run") -> None:
        self.folders: dict[str, str] = {}  # one lock per folder, named by the first id that gives it
        for name, folder in dict(folders).items():
            self.folders.setdefault(os.path.abspath(os.fspath(folder)), name)
        self.workflow = workflow
        self.token = uuid.uuid4().hex
        self.held: list[str] = []

    def owner(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": process_start_time(os.getpid()),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
            "token": self.token,
        }

    def acquire(self) -> RunLock:
        """
        Take the lock of every folder (creating the folder), or none.

        Raises:
            FileExistsError: a folder is locked by a run that is not known to be gone, naming it.
        """
        try:
            for folder, name in self.folders.items():
                self._take(os.path.join(folder, LOCK_NAME), name)
        except BaseException:
            self.release()
            raise
        return self

    def _take(self, path: str, name: str) -> None:
        if path in self.held:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        content = json.dumps(self.owner(), indent=2) + "\n"
        for _ in range(3):  # another run may take or clear the lock between the attempts
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(path)
                if owner is None:
                    continue
                if not _is_stale(path, owner):
                    raise FileExistsError(self._locked_message(path, name, owner)) from None
                logger.warning(f"removing the stale lock {path} of a run that is gone ({_describe(owner)})")
                try:  # a rename is atomic: of two runs clearing the same stale lock, one wins
                    os.replace(path, f"{path}.stale-{self.token}")
                    os.remove(f"{path}.stale-{self.token}")
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(content)
            self.held.append(path)
            _HELD[path] = self
            return
        raise FileExistsError(f"could not take the lock {path} of --{name} (other runs keep taking it).")

    def _locked_message(self, path: str, name: str, owner: Mapping[str, Any]) -> str:
        return (
            f"--{name} {os.path.dirname(path)} is in use by another run ({_describe(owner)}). Wait for it to finish, "
            f"or choose another --{name}. If that run is gone (e.g. on another host), delete {path}."
        )

    def release(self, *_: Any) -> None:
        """Remove the lock files this lock holds (a lock file taken over by another run is left alone)."""
        for path in self.held:
            owner = lock_owner(path)
            if owner is not None and owner.get("token") == self.token:
                os.remove(path)
            _HELD.pop(path, None)
        self.held = []


class ReleaseLockHandler:
    """
    Release ``lock`` when the engine completes or fails. Put it first among the engine's handlers: the first
    ``EXCEPTION_RAISED`` handler that re-raises the error stops the others. Its ``COMPLETED`` handler is added when
    the engine starts, after those attached when the workflow was built: the last files (``generators.pt``, the final
    checkpoint, ``run_record.json`` of a ``bundle.run_history.OutputRecordHandler`` put before this one) are written
    under the lock.

    A Ctrl-C (``KeyboardInterrupt``) ends the run with one line instead of tracebacks: a ``SystemExit`` naming where
    it stopped, the last complete checkpoint in the lock's ``ckpt_dir`` and the command that resumes from it
    (``bundle.runs.interrupted_message``); the error records that ignite and MONAI's ``StatsHandler`` log for it
    (with a traceback) are left out while the run lasts.
    """

    def __init__(self, lock: RunLock) -> None:
        self.lock = lock
        self._quiet: list[logging.Logger] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._quiet_interrupts)
        engine.add_event_handler(Events.STARTED, self._release_last)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def _release_last(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.completed, Events.COMPLETED):  # an engine run twice adds it once
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def _quiet_interrupts(self, engine: Engine) -> None:
        # the loggers of the engines (the trainer and the evaluators it runs: ``ignite.engine.engine.<class>``) and of
        # MONAI's handlers (``StatsHandler`` logs the error with its traceback): they exist once the engines are built
        names = [n for n in logging.root.manager.loggerDict if n.startswith(("ignite.engine.", "monai.handlers."))]
        for logger_ in {engine.logger, *(logging.getLogger(n) for n in names)}:
            logger_.addFilter(_not_an_interrupt_error)
            self._quiet.append(logger_)

    def _unquiet(self) -> None:
        for logger_ in self._quiet:
            logger_.removeFilter(_not_an_interrupt_error)
        self._quiet = []

    def completed(self, engine: Engine) -> None:
        self.lock.release()
        self._unquiet()

    def failed(self, engine: Engine, e: BaseException) -> None:
        self.lock.release()
        self._unquiet()
        if isinstance(e, KeyboardInterrupt):
            ckpt_dir = next((folder for folder, name in self.lock.folders.items() if name == "ckpt_dir"), None)
            raise SystemExit(f"ERROR: {interrupted_message(engine, ckpt_dir)}") from None
        raise e


def _not_an_interrupt_error(record: logging.LogRecord) -> bool:
    """A logging filter: ``False`` for an error record logged while a ``KeyboardInterrupt`` is being handled."""
    return not (record.levelno >= logging.ERROR and isinstance(sys.exc_info()[1], KeyboardInterrupt))


def _describe(owner: Mapping[str, Any]) -> str:
    if not owner:
        return "an unreadable lock file"
    return (
        f"{owner.get('workflow', 'a run')} started {owner.get('started', '?')} on host {owner.get('host', '?')}, "
        f"pid {owner.get('pid', '?')}: {owner.get('command', '')}"
    )
