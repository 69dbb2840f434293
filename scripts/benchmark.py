# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Label-efficiency benchmark: the paper's protocol (spec ``method.md`` sections 5-7) with one command, driven
entirely by the bundle configs (``configs/pretrain.yaml``, ``configs/train.yaml``, ``configs/evaluate.yaml``, run
in-process through ``monai.bundle.ConfigWorkflow``).

    python scripts/benchmark.py --output_dir /tmp/bench_quick --quick True
    python scripts/benchmark.py --output_dir /tmp/bench --seeds "[0,1,2]" --fractions "[0.05,0.1,0.5,1.0]"
    python scripts/benchmark.py --output_dir /tmp/bench --dataset_dir D --data_list_file_path D/datalist.json \\
        --modalities "['flair','t2']" --pretrain_overrides "{'image_size': 160}" --finetune_overrides "{'image_size': 160}"
    python scripts/benchmark.py --output_dir /tmp/bench --dataset_dir D --data_list_file_path D/datalist.json \\
        --modalities "['flair','t2']" --preset brats

For each pre-training variant (``multi_condos`` and the ablations ``no_contrastive``, ``no_sharing``,
``pix2pix_only``, ``cyclegan_only``) one pre-training (seed 0) is run and reused for every fraction and seed; each
variant and the ``scratch`` baseline are then fine-tuned at every label fraction and seed (the same seeded, nested,
subject-level splits and the same recipe for every method) and evaluated on the datalist's ``testing`` subjects.

Checks that abort the benchmark: a run's recorded ``init:`` line that does not match its method (a scratch run that
loaded weights, a pre-trained one that did not or loaded another file), test subjects among a run's labeled or
validation subjects, label subsets that differ between methods or are not nested across fractions.

Written to ``--output_dir`` (refused inside the repository): ``results.csv`` (one row per method x fraction x seed),
``results.md`` (mean ± std over seeds; headline comparisons), ``label_efficiency.png``, ``progress.log`` and one
folder per run (``pretrain/<variant>/``, ``finetune/<method>/fraction_<f>_seed_<s>/`` with the workflow log, the
checkpoints, ``init.txt``, ``label_subjects.json`` and ``metrics.csv``). Re-running the same command skips every
finished run (marker ``done.json`` / ``result.json``); an unfinished one is deleted and run again.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gc
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SEEDS",
    "DEFAULT_VARIANTS",
    "QUICK",
    "VARIANTS",
    "BenchmarkError",
    "BundleRunner",
    "Job",
    "aggregate",
    "check_init_line",
    "check_splits",
    "plan_jobs",
    "run_benchmark",
]

#: method name -> (label in the tables, overrides of configs/pretrain.yaml; None: no pre-training, from scratch)
VARIANTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "multi_condos": ("Multi-ConDoS", {}),
    "no_contrastive": ("w/o contrastive (λ_con=0)", {"lambda_contrastive": 0.0}),
    "no_sharing": ("w/o domain sharing (shared_blocks=[])", {"shared_blocks": []}),
    "pix2pix_only": ("Pix2Pix only (λ_cyc=0)", {"lambda_cycle": 0.0}),
    "cyclegan_only": ("CycleGAN only (λ_pix=0)", {"lambda_pix2pix": 0.0}),
    "scratch": ("scratch (random init.)", None),
}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
#: --quick True: a small but meaningful CPU grid (< 20 min on 2 CPU cores on the demo data)
QUICK: dict[str, Any] = {
    "variants": ("multi_condos", "scratch", "no_contrastive"),
    "fractions": (0.1, 0.5, 1.0),
    "seeds": (0,),
    "pretrain": {"epochs": 6, "epoch_length": 25},
    "finetune": {"epochs": 10, "epoch_length": 15, "val_interval": 2},
}
#: the pre-training seed (one pre-training per variant, reused across fine-tuning seeds)
PRETRAIN_SEED = 0
#: the loss terms of pre-training, with the config id of their weight
LOSS_WEIGHTS = {
    "adversarial": "lambda_adversarial",
    "cycle": "lambda_cycle",
    "pix2pix": "lambda_pix2pix",
    "contrastive": "lambda_contrastive",
    "identity": "lambda_identity",
}
#: run paths and the dataset location are not part of a run's settings (the resume check compares the rest)
_PATH_IDS = ("bundle_root", "ckpt_dir", "output_dir", "pretrained_ckpt", "default_pretrained_ckpt")
#: results.csv columns (every key of a result row, in this order)
CSV_FIELDS = [
    "method",
    "label",
    "fraction",
    "seed",
    "n_label_subjects",
    "init",
    "test_dice",
    "test_dice_subject_std",
    "test_iou",
    "test_hd95",
    "test_hd95_n_excluded",
    "test_sensitivity",
    "test_precision",
    "n_test_subjects",
    "best_val_dice",
    "best_val_epoch",
    "pretrain_val_psnr_ab",
    "pretrain_val_psnr_ba",
    "pretrain_val_psnr_identity",
    "pretrain_val_mae_ab",
    "pretrain_val_mae_ba",
    "pretrain_val_mae_identity",
    "pretrain_val_ssim_ab",
    "pretrain_val_ssim_identity",
    "pretrain_wall_s",
    "finetune_wall_s",
    "eval_wall_s",
    "finetune_iterations",
    "label_subjects",
    "finished",
]


class BenchmarkError(RuntimeError):
    """A failed check (init line, splits, output folder, settings of finished runs): the benchmark stops."""


@dataclass(frozen=True)
class Job:
    """One unit of work: a pre-training of ``variant``, or a fine-tuning + evaluation of ``variant``."""

    kind: str  # "pretrain" | "finetune"
    variant: str
    fraction: float | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain/{self.variant}"
        return f"finetune/{self.variant}/fraction_{_fmt_fraction(self.fraction)}_seed_{self.seed}"

    def describe(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain variant={self.variant}"
        return f"variant={self.variant} fraction={_fmt_fraction(self.fraction)} seed={self.seed}"


def _fmt_fraction(f: float | None) -> str:
    return "none" if f is None else f"{float(f):g}"


def _pct(f: float) -> str:
    return f"{100 * float(f):g}%"


# ---------------------------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------------------------
def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = [value]
    out = list(value)
    if not out:
        raise BenchmarkError(f"--{name} is empty.")
    return out


def normalise_grid(
    variants: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]
) -> tuple[list[str], list[float], list[int]]:
    """Validated grid: known variants (in ``VARIANTS`` order), fractions in (0, 1] ascending, seeds, deduplicated."""
    variants = [str(v) for v in _as_list(variants, "variants")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BenchmarkError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}.")
    fractions = [float(f) for f in _as_list(fractions, "fractions")]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise BenchmarkError(f"label fractions must be in (0, 1], got {bad}.")
    seeds_out = []
    for s in _as_list(seeds, "seeds"):
        if isinstance(s, bool) or int(s) != float(s):
            raise BenchmarkError(f"seeds must be integers, got {s!r}.")
        seeds_out.append(int(s))
    ordered = [v for v in VARIANTS if v in variants]
    return ordered, sorted(set(fractions)), list(dict.fromkeys(seeds_out))


def plan_jobs(variants: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]) -> list[Job]:
    """
    The runs of the grid, in execution order: seed by seed (one complete table per seed as early as possible), for
    each seed the fractions ascending, for each fraction the methods; each variant's pre-training just before its
    first fine-tuning, once for the whole grid.
    """
    variants, fractions, seeds = normalise_grid(variants, fractions, seeds)
    jobs: list[Job] = []
    pretrained: set[str] = set()
    for seed in seeds:
        for fraction in fractions:
            for variant in variants:
                if VARIANTS[variant][1] is not None and variant not in pretrained:
                    jobs.append(Job("pretrain", variant))
                    pretrained.add(variant)
                jobs.append(Job("finetune", variant, fraction, seed))
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------
def check_init_line(line: str, variant: str, generators_file: str | None, run_dir: str = "") -> str:
    """
    The ``init:`` line a fine-tuning recorded must match its method: ``init: scratch`` for ``scratch``,
    ``init: pretrained (N/M tensors from <generators_file>...`` with N > 0 for a pre-trained variant.

    Raises:
        BenchmarkError: otherwise (the benchmark must not report a mislabeled run).
    """
    line = (line or "").strip()
    where = f" ({run_dir})" if run_dir else ""
    if VARIANTS[variant][1] is None:
        if line != "init: scratch":
            raise BenchmarkError(f"the scratch run{where} recorded {line!r} instead of 'init: scratch'.")
        return line
    prefix = "init: pretrained ("
    if not line.startswith(prefix):
        raise BenchmarkError(f"the {variant} run{where} did not load pre-trained weights: it recorded {line!r}.")
    body = line[len(prefix) :]
    try:
        counts, rest = body.split(" tensors from ", 1)
        loaded, total = (int(x) for x in counts.split("/"))
    except ValueError as e:
        raise BenchmarkError(f"the {variant} run{where} recorded an unreadable init line {line!r}.") from e
    if loaded <= 0 or loaded > total:
        raise BenchmarkError(f"the {variant} run{where} loaded {loaded}/{total} tensors: {line!r}.")
    if generators_file is not None and not rest.startswith(os.path.abspath(generators_file)):
        raise BenchmarkError(
            f"the {variant} run{where} loaded another file than its pre-training {generators_file}: {line!r}."
        )
    return line


def check_splits(rows: Sequence[Mapping[str, Any]], test_subjects: Iterable[str]) -> None:
    """
    Every method must see the same labeled and validation subjects for one (fraction, seed); for one (method, seed)
    the labeled subjects must be nested across fractions; no test subject may be labeled or used for validation.

    Raises:
        BenchmarkError: naming the first violation.
    """
    test = set(test_subjects)
    by_key: dict[tuple[float, int], tuple[str, list[str], list[str]]] = {}
    for r in rows:
        labeled, validation = list(r["label_subjects"]), list(r.get("validation_subjects", []))
        leaked = sorted(test & (set(labeled) | set(validation)))
        if leaked:
            raise BenchmarkError(f"test subjects {leaked} were used by {r['method']} ({r['fraction']}, {r['seed']}).")
        key = (float(r["fraction"]), int(r["seed"]))
        if key in by_key:
            method, other, other_val = by_key[key]
            if sorted(other) != sorted(labeled) or sorted(other_val) != sorted(validation):
                raise BenchmarkError(
                    f"fraction {key[0]:g}, seed {key[1]}: {r['method']} and {method} used different labeled or "
                    "validation subjects (the same split is required for every method)."
                )
        else:
            by_key[key] = (r["method"], labeled, validation)
    chains: dict[tuple[str, int], list[tuple[float, set[str]]]] = {}
    for r in rows:
        chains.setdefault((r["method"], int(r["seed"])), []).append((float(r["fraction"]), set(r["label_subjects"])))
    for (method, seed), chain in chains.items():
        chain.sort(key=lambda t: t[0])
        for (f_small, small), (f_large, large) in zip(chain, chain[1:]):
            if not small <= large:
                raise BenchmarkError(
                    f"{method}, seed {seed}: the labeled subjects of fraction {f_small:g} are not inside those of "
                    f"{f_large:g} (missing {sorted(small - large)[:5]})."
                )


def check_output_dir(output_dir: str) -> str:
    """The absolute output folder; refuses the repository and any folder inside it."""
    if not output_dir:
        raise BenchmarkError("--output_dir is required (a folder outside the repository, e.g. /tmp/bench).")
    path = os.path.realpath(os.path.abspath(os.path.expanduser(str(output_dir))))
    root = os.path.realpath(ROOT)
    if path == root or path.startswith(root + os.sep):
        raise BenchmarkError(
            f"--output_dir {output_dir} is inside the repository ({root}); the benchmark writes many checkpoints "
            "and logs: choose a folder outside it, e.g. /tmp/bench."
        )
    return path


# ---------------------------------------------------------------------------------------------------------------
# running the bundle configs
# ---------------------------------------------------------------------------------------------------------------
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

    def _run(self, config_file: Any, overrides: Mapping[str, Any], run_id: str, log_file: str) -> Any:
        from monai.bundle import ConfigWorkflow

        config_files = [*(config_file if isinstance(config_file, list) else [config_file]), *self.presets]
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
                    extras = self._extras(wf)
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
        return extras

    @staticmethod
    def _extras(wf: Any) -> dict[str, Any]:
        try:
            evaluator = wf.parser.get_parsed_content("validate#evaluator")
            return {
                "best_val_dice": float(evaluator.state.best_metric),
                "best_val_epoch": int(evaluator.state.best_metric_epoch),
            }
        except Exception:
            return {}

    def pretrain(self, overrides: Mapping[str, Any], log_file: str) -> dict[str, Any]:
        self._run(self._config("pretrain.yaml"), overrides, "training", log_file)
        return {}

    def finetune(self, overrides: Mapping[str, Any], log_file: str) -> dict[str, Any]:
        return self._run(self._config("train.yaml"), overrides, "run", log_file)

    def evaluate(self, overrides: Mapping[str, Any], log_file: str) -> dict[str, Any]:
        self._run([self._config("train.yaml"), self._config("evaluate.yaml")], overrides, "run", log_file)
        return {}


# ---------------------------------------------------------------------------------------------------------------
# reading what the runs wrote
# ---------------------------------------------------------------------------------------------------------------
def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def last_validation(output_dir: str) -> dict[str, float]:
    """The last row of pre-training's ``validation_metrics.csv`` (``{}`` if there is none)."""
    path = os.path.join(output_dir, "validation_metrics.csv")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: v for k, v in ((k, _float(x)) for k, x in rows[-1].items()) if v is not None} if rows else {}


def last_losses(output_dir: str) -> dict[str, float]:
    """The loss terms of the last logged iteration of ``pretrain_log.txt`` (raw values, before the weights)."""
    path = os.path.join(output_dir, "pretrain_log.txt")
    if not os.path.isfile(path):
        return {}
    last = ""
    with open(path, errors="replace") as f:
        for line in f:
            if " -- " in line and "g_total:" in line:
                last = line
    if not last:
        return {}
    tokens = last.split(" -- ", 1)[1].split()
    out = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        v = _float(value)
        if name.endswith(":") and v is not None:
            out[name[:-1]] = v
    return out


def read_metrics_summary(eval_dir: str) -> dict[str, Any]:
    summary = _read_json(os.path.join(eval_dir, "metrics_summary.json"))
    out: dict[str, Any] = {"n_test_subjects": summary.get("n_subjects")}
    for name in ("dice", "iou", "hd95", "sensitivity", "precision"):
        s = summary.get(name) or {}
        out[f"test_{name}"] = s.get("mean")
        if name == "dice":
            out["test_dice_subject_std"] = s.get("std")
        if name == "hd95":
            out["test_hd95_n_excluded"] = s.get("n_excluded")
    return out


def generator_features(generators_file: str) -> list[int]:
    from bundle.records import load_generators

    return [int(f) for f in load_generators(generators_file)[1]["network"]["args"]["features"]]


def testing_subject_ids(data_list_file_path: str, dataset_dir: str, modalities: Sequence[str]) -> list[str]:
    """Subject ids of the datalist's ``testing`` records (the evaluation set)."""
    from bundle.data import load_datalist

    datalist = load_datalist(data_list_file_path, dataset_dir, [modalities[0], "label"], ["testing"])
    return sorted(r["subject"] for r in datalist["testing"])


# ---------------------------------------------------------------------------------------------------------------
# aggregation and reports
# ---------------------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the finite values."""
    vals = [float(v) for v in values if _float(v) is not None]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std, len(vals)


def aggregate(rows: Sequence[Mapping[str, Any]], metric: str = "test_dice") -> dict[tuple[str, float], dict]:
    """``{(method, fraction): {"mean", "std", "n", "seeds"}}`` over the seeds of ``rows`` (std: sample, ddof 1)."""
    groups: dict[tuple[str, float], list[tuple[int, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["fraction"])), []).append((int(r["seed"]), r.get(metric)))
    out = {}
    for key, items in groups.items():
        mean, std, n = _mean_std([v for _, v in items])
        out[key] = {"mean": mean, "std": std, "n": n, "seeds": sorted(s for s, _ in items)}
    return out


def paired_difference(
    rows: Sequence[Mapping[str, Any]], a: tuple[str, float], b: tuple[str, float], metric: str = "test_dice"
) -> dict[str, Any] | None:
    """``a`` minus ``b`` over the seeds both have: mean ± std of the per-seed differences, and wins of ``a``."""
    va = {int(r["seed"]): _float(r.get(metric)) for r in rows if (r["method"], float(r["fraction"])) == a}
    vb = {int(r["seed"]): _float(r.get(metric)) for r in rows if (r["method"], float(r["fraction"])) == b}
    seeds = sorted(s for s in set(va) & set(vb) if va[s] is not None and vb[s] is not None)
    if not seeds:
        return None
    diffs = [va[s] - vb[s] for s in seeds]
    mean, std, n = _mean_std(diffs)
    return {
        "a": _mean_std([va[s] for s in seeds])[0],
        "b": _mean_std([vb[s] for s in seeds])[0],
        "diff_mean": mean,
        "diff_std": std,
        "n": n,
        "wins": sum(d > 0 for d in diffs),
        "diffs": diffs,
    }


def _cell(stats: Mapping[str, Any] | None, digits: int = 3, n_expected: int | None = None) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("std") is not None:
        text += f" ± {stats['std']:.{digits}f}"
    if n_expected is not None and stats.get("n") != n_expected:
        text += f" (n={stats.get('n')})"
    return text


def _num(value: Any, fmt: str = ".3f") -> str:
    v = _float(value)
    return "—" if v is None else format(v, fmt)


def headline(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paper's headline checks: Multi-ConDoS@5% vs scratch@50%, Multi-ConDoS@10% vs scratch@100%."""
    lines = [
        "| comparison | Multi-ConDoS Dice | scratch Dice | difference (paired over seeds) | seeds where Multi-ConDoS is higher |",
        "|---|---|---|---|---|",
    ]
    for fa, fb in ((0.05, 0.5), (0.1, 1.0)):
        name = f"Multi-ConDoS@{_pct(fa)} vs scratch@{_pct(fb)}"
        d = paired_difference(rows, ("multi_condos", fa), ("scratch", fb))
        if d is None:
            lines.append(f"| {name} | — | — | not in this grid | — |")
            continue
        diff = f"{d['diff_mean']:+.3f}" + (f" ± {d['diff_std']:.3f}" if d["diff_std"] is not None else "")
        lines.append(f"| {name} | {d['a']:.3f} | {d['b']:.3f} | {diff} | {d['wins']}/{d['n']} |")
    return lines


def render_markdown(
    rows: Sequence[Mapping[str, Any]],
    pretrains: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
) -> str:
    """``results.md``: settings, Dice and HD95 tables (rows: methods, columns: fractions), comparisons, pre-training."""
    methods = [m for m in VARIANTS if any(r["method"] == m for r in rows)]
    fractions = sorted({float(r["fraction"]) for r in rows})
    n_seeds = len(info.get("seeds") or []) or None
    out = [
        "# Label-efficiency benchmark results",
        "",
        f"Written by `scripts/benchmark.py` on {info.get('written', '')}. Command: `{info.get('command', '')}`",
        "",
        f"- grid: methods {info.get('variants')}, label fractions {info.get('fractions')}, seeds {info.get('seeds')} "
        f"({len(rows)} fine-tuning runs finished)",
        f"- data: `{info.get('data_list_file_path')}` (modalities {info.get('modalities')}); "
        f"{info.get('n_test_subjects')} test subjects, never used by pre-training or fine-tuning",
        f"- pre-training overrides (besides the variant's): `{info.get('pretrain_overrides')}`; one run per variant, "
        f"seed {PRETRAIN_SEED}",
        f"- fine-tuning overrides: `{info.get('finetune_overrides')}`",
        f"- device: {info.get('device')}; torch {info.get('torch')}, monai {info.get('monai')}",
        f"- wall time of the runs: {info.get('wall_total_s', 0):.0f} s in all (pre-training "
        f"{sum(float(p.get('wall_s') or 0) for p in pretrains.values()):.0f} s, fine-tuning + evaluation "
        f"{sum(float(r.get('finetune_wall_s') or 0) + float(r.get('eval_wall_s') or 0) for r in rows):.0f} s)",
        "",
    ]
    for metric, title, digits in (
        ("test_dice", "Test Dice (3-D, per subject, mean over test subjects)", 3),
        ("test_hd95", "Test HD95 in mm (mean over test subjects with non-empty masks)", 1),
    ):
        agg = aggregate(rows, metric)
        out += [f"## {title}: mean ± std over seeds", ""]
        out.append("| method | " + " | ".join(f"{_pct(f)} labels" for f in fractions) + " |")
        out.append("|---|" + "---|" * len(fractions))
        for m in methods:
            cells = [_cell(agg.get((m, f)), digits, n_seeds) for f in fractions]
            out.append(f"| {VARIANTS[m][0]} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Headline comparisons (the paper's claim)", ""] + headline(rows) + [""]
    pretrained = [m for m in methods if VARIANTS[m][1] is not None]
    if "scratch" in methods and pretrained:
        out += [
            "## Pre-trained minus scratch at the same label fraction (test Dice, paired over seeds)",
            "",
            "Each cell: mean ± std of the per-seed difference, and in how many seeds the pre-trained model was higher.",
            "",
            "| method | " + " | ".join(f"{_pct(f)} labels" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions),
        ]
        for m in pretrained:
            cells = []
            for f in fractions:
                d = paired_difference(rows, (m, f), ("scratch", f))
                if d is None:
                    cells.append("—")
                else:
                    std = f" ± {d['diff_std']:.3f}" if d["diff_std"] is not None else ""
                    cells.append(f"{d['diff_mean']:+.3f}{std} ({d['wins']}/{d['n']})")
            out.append(f"| {VARIANTS[m][0]} | " + " | ".join(cells) + " |")
        out.append("")
    if pretrains:
        out += [
            "## Pre-training (last validation on held-out training subjects; last logged losses)",
            "",
            "PSNR in dB and MAE on [-1, 1] intensities of G_AB(A) vs B and G_BA(B) vs A, beside the identity mapping "
            "(A vs B). Loss columns: raw value × weight = contribution to the generator loss.",
            "",
            "| variant | PSNR A→B | PSNR B→A | PSNR identity | MAE A→B | MAE identity | adversarial | cycle | pix2pix "
            "| contrastive | iterations | wall |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in pretrained:
            p = pretrains.get(m)
            if not p:
                continue
            v, losses, weights = p.get("validation", {}), p.get("losses", {}), p.get("weights", {})
            loss_cells = []
            for term in ("adversarial", "cycle", "pix2pix", "contrastive"):
                raw, w = losses.get(term), weights.get(term)
                if raw is None:
                    loss_cells.append("—")
                else:
                    loss_cells.append(f"{raw:.3g} × {w:g} = {raw * w:.3g}" if w is not None else f"{raw:.3g}")
            out.append(
                f"| {VARIANTS[m][0]} | {_num(v.get('val_psnr_ab'), '.2f')} | {_num(v.get('val_psnr_ba'), '.2f')} | "
                f"{_num(v.get('val_psnr_identity'), '.2f')} | {_num(v.get('val_mae_ab'), '.4f')} | "
                f"{_num(v.get('val_mae_identity'), '.4f')} | "
                + " | ".join(loss_cells)
                + f" | {p.get('iterations', '—')} | "
                f"{_num(p.get('wall_s'), '.0f')} s |"
            )
        out.append("")
    walls = aggregate(rows, "finetune_wall_s")
    evals = aggregate(rows, "eval_wall_s")
    out += [
        "## Wall time per run (s, mean over seeds): fine-tuning / evaluation",
        "",
        "| method | " + " | ".join(f"{_pct(f)} labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for m in methods:
        cells = [
            f"{_num((walls.get((m, f)) or {}).get('mean'), '.0f')} / {_num((evals.get((m, f)) or {}).get('mean'), '.0f')}"
            for f in fractions
        ]
        out.append(f"| {VARIANTS[m][0]} | " + " | ".join(cells) + " |")
    out += ["", "![Dice vs label fraction](label_efficiency.png)", ""]
    return "\n".join(out)


def plot(rows: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """``label_efficiency.png``: test Dice vs label fraction, one line per method, error bars = std over seeds."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows, "test_dice")
    methods = [m for m in VARIANTS if any(r["method"] == m for r in rows)]
    fractions = sorted({float(r["fraction"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for f in fractions:
            s = agg.get((m, f))
            if s and s["mean"] is not None:
                xs.append(f * (1 + 0.025 * (i - (len(methods) - 1) / 2)))  # small offsets: error bars stay readable
                ys.append(s["mean"])
                es.append(s["std"] or 0.0)
        style = {"linestyle": "--", "color": "black"} if m == "scratch" else {}
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=VARIANTS[m][0], **style)
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([_pct(f) for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labeled training subjects")
    ax.set_ylabel("test Dice (3-D, mean over subjects)")
    seeds = sorted({int(r["seed"]) for r in rows})
    ax.set_title(f"Label efficiency (mean ± std over {len(seeds)} seed(s))")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(
    output_dir: str, rows: Sequence[Mapping[str, Any]], pretrains: Mapping[str, Mapping[str, Any]], info: Mapping
) -> None:
    rows = sorted(rows, key=lambda r: (list(VARIANTS).index(r["method"]), float(r["fraction"]), int(r["seed"])))
    with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "label_subjects": " ".join(r.get("label_subjects", []))})
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(render_markdown(rows, pretrains, info))
    plot(rows, os.path.join(output_dir, "label_efficiency.png"))


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------
def _settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(
        json.dumps({k: v for k, v in overrides.items() if k not in _PATH_IDS}, sort_keys=True, default=str)
    )


def _check_settings(marker: Mapping[str, Any], settings: Mapping[str, Any], run_dir: str) -> None:
    if marker.get("settings") != settings:
        old = marker.get("settings") or {}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise BenchmarkError(
            f"{run_dir} holds a finished run with other settings ({', '.join(diff)}): use another --output_dir "
            "for these settings (or delete that run folder to redo it)."
        )


def run_benchmark(
    output_dir: str,
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
    modalities: Sequence[str] = ("t1", "t2"),
    variants: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    pretrain_overrides: Mapping[str, Any] | None = None,
    finetune_overrides: Mapping[str, Any] | None = None,
    runner: Any = None,
    dry_run: bool = False,
    report_only: bool = False,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Plan the grid, run what is not finished yet, check every run, write the reports; returns the result rows."""
    output_dir = check_output_dir(output_dir)
    variants = list(variants if variants is not None else (QUICK["variants"] if quick else DEFAULT_VARIANTS))
    fractions = list(fractions if fractions is not None else (QUICK["fractions"] if quick else DEFAULT_FRACTIONS))
    seeds = list(seeds if seeds is not None else (QUICK["seeds"] if quick else DEFAULT_SEEDS))
    variants, fractions, seeds = normalise_grid(variants, fractions, seeds)
    jobs = plan_jobs(variants, fractions, seeds)
    modalities = [str(m) for m in _as_list(modalities, "modalities")]
    if len(modalities) != 2:
        raise BenchmarkError(f"--modalities needs two datalist keys [A, B], got {modalities}.")
    dataset_dir = os.path.abspath(dataset_dir or os.path.join(ROOT, "data", "demo"))
    data_list_file_path = os.path.abspath(data_list_file_path or os.path.join(dataset_dir, "datalist.json"))

    common = {
        "bundle_root": ROOT,
        "dataset_dir": dataset_dir,
        "data_list_file_path": data_list_file_path,
        "modalities": modalities,
    }
    pre_common = {
        **common,
        "seed": PRETRAIN_SEED,
        **(QUICK["pretrain"] if quick else {}),
        **dict(pretrain_overrides or {}),
    }
    ft_common = {**common, **(QUICK["finetune"] if quick else {}), **dict(finetune_overrides or {})}
    if "epochs" in ft_common and "val_interval" not in ft_common:
        ft_common["val_interval"] = min(2, int(ft_common["epochs"]))  # the config's 2, at most the epochs

    if dry_run:
        for k, job in enumerate(jobs, 1):
            echo(f"[{k}/{len(jobs)}] {job.describe()} (planned: {os.path.join(output_dir, job.name)})")
        return []

    os.makedirs(output_dir, exist_ok=True)
    if os.path.abspath(data_list_file_path) == os.path.abspath(os.path.join(ROOT, "data", "demo", "datalist.json")):
        from bundle.demo_data import ensure_demo_dataset

        ensure_demo_dataset(dataset_dir, data_list_file_path)
    test_subjects = testing_subject_ids(data_list_file_path, dataset_dir, modalities)
    if not test_subjects:
        raise BenchmarkError(f"{data_list_file_path} has no 'testing' records: the benchmark evaluates on them.")

    import monai
    import torch

    info = {
        "command": command or "run_benchmark(...)",
        "variants": variants,
        "fractions": fractions,
        "seeds": seeds,
        "quick": bool(quick),
        "data_list_file_path": data_list_file_path,
        "modalities": modalities,
        "n_test_subjects": len(test_subjects),
        "pretrain_overrides": _settings({k: v for k, v in pre_common.items() if k not in common}),
        "finetune_overrides": _settings({k: v for k, v in ft_common.items() if k not in common}),
        "device": f"cuda ({torch.cuda.get_device_name(0)})"
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if not report_only:
        _write_json(info, os.path.join(output_dir, "benchmark_config.json"))
    runner = runner or BundleRunner()
    progress_log = os.path.join(output_dir, "progress.log")

    def say(text: str) -> None:
        echo(text)
        with open(progress_log, "a") as f:
            f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {text}\n")

    say(f"benchmark: {len(jobs)} runs ({sum(j.kind == 'pretrain' for j in jobs)} pre-trainings) into {output_dir}")
    rows: list[dict[str, Any]] = []
    pretrains: dict[str, dict[str, Any]] = {}
    wall_total = 0.0
    try:
        for k, job in enumerate(jobs, 1):
            run_dir = os.path.join(output_dir, job.name)
            if job.kind == "pretrain":
                record, skipped, wall = _pretrain(job, run_dir, pre_common, runner, report_only)
                if record is None:
                    say(f"[{k}/{len(jobs)}] {job.describe()} not finished (report only)")
                    continue
                pretrains[job.variant] = record
                v = record["validation"]
                summary = (
                    f"val PSNR A→B {_num(v.get('val_psnr_ab'), '.2f')} dB, B→A {_num(v.get('val_psnr_ba'), '.2f')} dB "
                    f"(identity {_num(v.get('val_psnr_identity'), '.2f')} dB)"
                )
            else:
                pre = pretrains.get(job.variant)
                record, skipped, wall = _finetune(job, run_dir, ft_common, pre, runner, test_subjects, report_only)
                if record is None:
                    say(f"[{k}/{len(jobs)}] {job.describe()} not finished (report only)")
                    continue
                rows.append(record)
                check_splits(rows, test_subjects)
                summary = f"test Dice {_num(record.get('test_dice'))} (HD95 {_num(record.get('test_hd95'), '.1f')} mm)"
            wall_total += wall
            when = "skipped (finished earlier)" if skipped else f"done in {wall:.1f}s"
            say(f"[{k}/{len(jobs)}] {job.describe()} {when}, {summary}")
    finally:
        info = {**info, "wall_total_s": wall_total, "written": datetime.datetime.now().isoformat(timespec="seconds")}
        if rows or pretrains:
            write_reports(output_dir, rows, pretrains, info)
    say(f"benchmark finished: {os.path.join(output_dir, 'results.md')}")
    return rows


def _pretrain(
    job: Job, run_dir: str, pre_common: Mapping[str, Any], runner: Any, report_only: bool = False
) -> tuple[dict | None, bool, float]:
    overrides = {**pre_common, **VARIANTS[job.variant][1]}
    settings = _settings(overrides)
    marker_path = os.path.join(run_dir, "done.json")
    generators_file = os.path.join(run_dir, "ckpt", "generators.pt")
    if os.path.isfile(marker_path) and os.path.isfile(generators_file):
        marker = _read_json(marker_path)
        _check_settings(marker, settings, run_dir)
        return marker, True, float(marker.get("wall_s") or 0)
    if report_only:
        return None, False, 0.0
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # an unfinished run of ours: start it again
    overrides.update({"ckpt_dir": os.path.join(run_dir, "ckpt"), "output_dir": os.path.join(run_dir, "out")})
    start = time.perf_counter()
    runner.pretrain(overrides, os.path.join(run_dir, "workflow.log"))
    wall = time.perf_counter() - start
    if not os.path.isfile(generators_file):
        raise BenchmarkError(f"pre-training {job.variant} finished without {generators_file}.")
    recorded = os.path.join(overrides["ckpt_dir"], "run_config.json")
    used = _read_json(recorded).get("settings", {}) if os.path.isfile(recorded) else {}
    defaults = _config_defaults("pretrain.yaml")
    weights = {term: _float(used.get(key, overrides.get(key, defaults.get(key)))) for term, key in LOSS_WEIGHTS.items()}
    record = {
        "variant": job.variant,
        "settings": settings,
        "generators_file": generators_file,
        "validation": last_validation(overrides["output_dir"]),
        "losses": last_losses(overrides["output_dir"]),
        "weights": weights,
        "iterations": _iterations(overrides, "pretrain.yaml"),
        "wall_s": wall,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(record, marker_path)
    return record, False, wall


def _config_defaults(name: str = "pretrain.yaml") -> dict[str, Any]:
    """The top-level values of ``configs/<name>`` as written (loss weights, schedules), ``{}`` if unreadable."""
    from monai.bundle import ConfigParser

    try:
        return dict(ConfigParser.load_config_file(os.path.join(ROOT, "configs", name)))
    except Exception:
        return {}


def _iterations(overrides: Mapping[str, Any], config: str) -> str:
    """``epochs x epoch_length`` of a run (its overrides, else the config's values)."""
    defaults = _config_defaults(config)
    epochs, length = (overrides.get(k, defaults.get(k)) for k in ("epochs", "epoch_length"))
    return f"{epochs} x {length}"


def _finetune(
    job: Job,
    run_dir: str,
    ft_common: Mapping[str, Any],
    pre: Mapping[str, Any] | None,
    runner: Any,
    test_subjects: Sequence[str],
    report_only: bool = False,
) -> tuple[dict | None, bool, float]:
    pretrained = VARIANTS[job.variant][1] is not None
    if pretrained and pre is None and report_only:
        return None, False, 0.0
    if pretrained and pre is None:
        raise BenchmarkError(f"{job.name}: no pre-training of {job.variant} (planning error).")
    overrides = {**ft_common, "label_fraction": float(job.fraction), "seed": int(job.seed)}
    settings = _settings(overrides)
    settings["pretraining"] = pre["settings"] if pretrained else None
    marker_path = os.path.join(run_dir, "result.json")
    if os.path.isfile(marker_path):
        marker = _read_json(marker_path)
        _check_settings(marker, settings, run_dir)
        return marker, True, float(marker.get("finetune_wall_s") or 0) + float(marker.get("eval_wall_s") or 0)
    if report_only:
        return None, False, 0.0
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    generators_file = pre["generators_file"] if pretrained else None
    overrides.update(
        {
            "pretrained_ckpt": generators_file,  # None: from scratch (checked through init.txt below)
            "ckpt_dir": os.path.join(run_dir, "models"),
            "output_dir": os.path.join(run_dir, "train"),
        }
    )
    log_file = os.path.join(run_dir, "workflow.log")
    start = time.perf_counter()
    extras = runner.finetune(overrides, log_file) or {}
    finetune_wall = time.perf_counter() - start
    init_path = os.path.join(overrides["output_dir"], "init.txt")
    if not os.path.isfile(init_path):
        raise BenchmarkError(f"{run_dir}: the fine-tuning wrote no init.txt, so its initialisation is unknown.")
    with open(init_path) as f:
        init_line = check_init_line(f.readline(), job.variant, generators_file, run_dir)
    selection = _read_json(os.path.join(overrides["output_dir"], "label_subjects.json"))
    # the evaluation network must have the fine-tuned topology: the generator's features when pre-trained
    eval_overrides = {**overrides, "output_dir": os.path.join(run_dir, "eval")}
    if generators_file is not None:
        eval_overrides["features"] = generator_features(generators_file)
    start = time.perf_counter()
    runner.evaluate(eval_overrides, log_file)
    eval_wall = time.perf_counter() - start
    validation = pre.get("validation", {}) if pretrained else {}
    record = {
        "method": job.variant,
        "label": VARIANTS[job.variant][0],
        "fraction": float(job.fraction),
        "seed": int(job.seed),
        "n_label_subjects": len(selection["training_subjects"]),
        "label_subjects": sorted(selection["training_subjects"]),
        "validation_subjects": sorted(selection.get("validation_subjects", [])),
        "init": init_line,
        **read_metrics_summary(eval_overrides["output_dir"]),
        "best_val_dice": extras.get("best_val_dice"),
        "best_val_epoch": extras.get("best_val_epoch"),
        **{
            f"pretrain_{k}": validation.get(k)
            for k in (
                "val_psnr_ab",
                "val_psnr_ba",
                "val_psnr_identity",
                "val_mae_ab",
                "val_mae_ba",
                "val_mae_identity",
                "val_ssim_ab",
                "val_ssim_identity",
            )
        },
        "pretrain_wall_s": pre.get("wall_s") if pretrained else None,
        "finetune_wall_s": finetune_wall,
        "eval_wall_s": eval_wall,
        "finetune_iterations": _iterations(overrides, "train.yaml"),
        "settings": settings,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    leaked = sorted(set(test_subjects) & (set(record["label_subjects"]) | set(record["validation_subjects"])))
    if leaked:
        raise BenchmarkError(f"{run_dir}: test subjects {leaked} were used for fine-tuning.")
    _write_json(record, marker_path)
    return record, False, finetune_wall + eval_wall


def main(
    output_dir: str = "",
    dataset_dir: str | None = None,
    data_list_file_path: str | None = None,
    modalities: Sequence[str] = ("t1", "t2"),
    variants: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    pretrain_overrides: dict | None = None,
    finetune_overrides: dict | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    threads: int | None = None,
    verbose: bool = False,
    preset: str | None = None,
) -> None:
    """
    Run the label-efficiency benchmark (see the module docstring).

    Args:
        output_dir: where everything is written (required; not inside the repository).
        dataset_dir, data_list_file_path, modalities: the data (default: the embedded demo dataset, [t1, t2]).
        variants: methods among multi_condos, no_contrastive, no_sharing, pix2pix_only, cyclegan_only, scratch
            (default: all six; --quick: multi_condos, scratch, no_contrastive).
        fractions: label fractions (default [0.05, 0.1, 0.5, 1.0]; --quick: [0.1, 0.5, 1.0]).
        seeds: fine-tuning seeds (default [0, 1, 2]; --quick: [0]).
        quick: a small grid with short schedules (pre-training 6 x 25 iterations, fine-tuning 10 x 15).
        pretrain_overrides, finetune_overrides: other config ids, e.g. "{'epochs': 20}" (fine-tuning ones also
            apply to the evaluation).
        dry_run: print the planned runs only.
        report_only: run nothing; write the reports from the runs of the grid finished so far (e.g. while another
            invocation is still running, or to merge grids run separately into one output folder).
        threads: torch CPU threads (default: torch's choice; 1 can be faster on a CPU shared with other jobs).
        verbose: show the workflows' logs on the console (default: into each run's workflow.log).
        preset: a dataset preset merged on top of every workflow, e.g. ``brats`` (configs/brats.yaml: image size,
            intensity rules, region and paper-scale schedule; pass the matching --modalities).
    """
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:])
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        run_benchmark(
            output_dir,
            dataset_dir=dataset_dir,
            data_list_file_path=data_list_file_path,
            modalities=modalities,
            variants=variants,
            fractions=fractions,
            seeds=seeds,
            quick=bool(quick),
            pretrain_overrides=pretrain_overrides,
            finetune_overrides=finetune_overrides,
            runner=BundleRunner(verbose=bool(verbose), preset=preset),
            dry_run=bool(dry_run),
            report_only=bool(report_only),
            command=command,
            echo=lambda text: print(text, flush=True),
        )
    except (BenchmarkError, RuntimeError) as e:
        print(f"benchmark stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
