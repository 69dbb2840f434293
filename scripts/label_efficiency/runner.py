# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Running the bundle's configs in-process (``ConfigWorkflow``), each run's logs into its own file, and the values
the configs give a run (schedules, loss weights)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .plan import ROOT, BenchmarkError

__all__ = ["BundleRunner"]

#: the config files of each kind of run (before the preset)
_CONFIGS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain.yaml",),
    "finetune": ("train.yaml",),
    "evaluate": ("train.yaml", "evaluate.yaml"),
}


def _all_loggers() -> list[logging.Logger]:
    return [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]


def _detach_handlers(stream: Any) -> None:
    """Remove logging handlers bound to ``stream`` (a per-run log file about to be closed)."""
    for lg in _all_loggers():
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream:
                lg.removeHandler(h)


@contextlib.contextmanager
def _console_handlers_to(stream: Any):
    """Point the console handlers that loggers (MONAI's own) created at import time to ``stream`` meanwhile."""
    console = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    swapped = []
    for lg in _all_loggers():
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and id(getattr(h, "stream", None)) in console:
                swapped.append((h, h.setStream(stream)))
    try:
        yield
    finally:
        for h, old in swapped:
            h.setStream(old)


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().replace("\r", "\n").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines if line.strip())[-4000:] if lines else ""


class BundleRunner:
    """
    Runs the bundle's configs in-process (``ConfigWorkflow``: initialize, run, finalize). Each run's logging,
    stdout and stderr go to ``log_file`` (the benchmark's own progress lines stay on the console); a failing run
    raises ``RuntimeError`` with the end of its log.
    """

    def __init__(self, root: str = ROOT, verbose: bool = False, preset: str | None = None) -> None:
        self.root = root
        self.verbose = verbose
        self.presets = [] if not preset else [self._preset_file(preset)]

    def _preset_file(self, preset: str) -> str:
        """``brats``, ``brats.yaml`` or a path: the preset config merged on top of every workflow."""
        path = (
            preset if os.path.isfile(preset) else self._config(preset if preset.endswith(".yaml") else f"{preset}.yaml")
        )
        if not os.path.isfile(path):
            raise BenchmarkError(f"preset not found: {preset} (e.g. brats, hecktor or a path to a yaml file).")
        return path

    def _config(self, name: str) -> str:
        return os.path.join(self.root, "configs", name)

    def config_files(self, kind: str) -> list[str]:
        """The config files of a ``pretrain``, ``finetune`` or ``evaluate`` run, the preset last."""
        return [self._config(name) for name in _CONFIGS[kind]] + self.presets

    def config_values(self, kind: str, overrides: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
        """
        The values of the top-level ``ids`` a ``kind`` run gets with ``overrides`` (the preset's expressions
        resolved; ``None`` for an id the configs do not resolve), without building the workflow.
        """
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(self.config_files(kind))
        parser.update(dict(overrides))
        values = {}
        for name in ids:
            try:
                values[name] = parser.get_parsed_content(name)
            except Exception:  # an id this config lacks, or one that needs more than plain values
                values[name] = None
        return values

    def schedule(self, kind: str, overrides: Mapping[str, Any]) -> tuple[int | None, int | None]:
        """``(epochs, epoch_length)`` of a ``pretrain`` or ``finetune`` run (``None`` where unresolved)."""
        values = self.config_values(kind, overrides, ("epochs", "epoch_length"))
        return tuple(int(v) if isinstance(v, (int, float)) else None for v in values.values())

    def _run(self, kind: str, overrides: Mapping[str, Any], run_id: str, log_file: str) -> None:
        from monai.bundle import ConfigWorkflow

        config_files = self.config_files(kind)
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        with open(log_file, "a") as log:
            redirect = contextlib.ExitStack()
            if not self.verbose:
                redirect.enter_context(_console_handlers_to(log))
                redirect.enter_context(contextlib.redirect_stdout(log))
                redirect.enter_context(contextlib.redirect_stderr(log))
            try:
                with redirect:
                    wf = ConfigWorkflow(
                        config_file=config_files,
                        meta_file=self._config("metadata.json"),
                        logging_file=self._config("logging.conf"),
                        workflow_type=None,
                        run_id=run_id,
                        **dict(overrides),
                    )
                    wf.initialize()
                    wf.run()
                    wf.finalize()
            except BaseException as e:  # SystemExit of the configs' data checks included
                _detach_handlers(log)
                if isinstance(e, KeyboardInterrupt):
                    raise
                log.flush()
                raise RuntimeError(
                    f"{run_id} of {config_files} failed ({type(e).__name__}: {e}); log {log_file}:\n{_tail(log_file)}"
                ) from e
            finally:
                _detach_handlers(log)
        del wf
        gc.collect()

    def pretrain(self, overrides: Mapping[str, Any], log_file: str) -> None:
        self._run("pretrain", overrides, "training", log_file)

    def finetune(self, overrides: Mapping[str, Any], log_file: str) -> None:
        self._run("finetune", overrides, "run", log_file)

    def evaluate(self, overrides: Mapping[str, Any], log_file: str) -> None:
        self._run("evaluate", overrides, "run", log_file)
