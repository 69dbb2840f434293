# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
Datalists for public datasets: scan a dataset folder (recursively), recognise its layout, and write a
Decathlon-style datalist with a seeded, subject-level training/validation/testing split and the dataset's label
convention.

Layouts (``layout="auto"`` picks the one matching the most subjects):

- ``brats2021`` (BraTS 2018-2021): ``<ID>_{t1,t1ce,t2,flair,seg}.nii.gz``, possibly under ``HGG/`` and ``LGG/``.
- ``brats2023`` (BraTS 2023+): ``<ID>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, keys normalised to ``t1, t1ce, t2, flair``.
- ``msd`` (MSD Task01_BrainTumour): ``imagesTr/BRATS_NNN.nii.gz`` (4-D, channels FLAIR, T1w, T1gd, T2w) and
  ``labelsTr/BRATS_NNN.nii.gz``; every image key points to the 4-D file and the record's ``channels`` map gives the
  channel of each key (the transforms split it). ``imagesTs`` is only used when labels are not required.
- ``hecktor``: ``<ID>__CT.nii.gz``, ``<ID>__PT.nii.gz`` and the label ``<ID>.nii.gz`` (keys ``ct, pet, label``).
- ``pattern``: one glob per key relative to the dataset folder, each with the placeholder ``{subject}``.

Record paths are relative to the dataset folder (posix separators), so the datalist is portable; hidden files and
folders (``.*``, including macOS ``._*`` files) are ignored. Subjects missing a required file are skipped with a
warning, never half-included. With ``require_label=False`` subjects without a label are kept (no ``label`` key) and
all go to ``training`` (for pre-training); only labeled subjects are split into validation and testing.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .data import read_json

__all__ = [
    "DETECTABLE_LAYOUTS",
    "LABEL_CONVENTIONS",
    "LAYOUTS",
    "LAYOUT_MODALITIES",
    "MSD_CHANNELS",
    "datalist_label_convention",
    "detect_layout",
    "next_commands",
    "prepare_datalist",
    "region_label_map",
    "scan_dataset",
    "split_records",
    "summary_text",
]

#: the layouts ``auto`` chooses from (``pattern`` must be asked for)
DETECTABLE_LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd", "hecktor")

#: every layout name accepted by ``layout``
LAYOUTS: tuple[str, ...] = ("auto", *DETECTABLE_LAYOUTS, "pattern")

#: the image keys (normalised names, in datalist order) of every fixed layout
LAYOUT_MODALITIES: dict[str, tuple[str, ...]] = {
    "brats2021": ("t1", "t1ce", "t2", "flair"),
    "brats2023": ("t1", "t1ce", "t2", "flair"),
    "msd": ("flair", "t1", "t1ce", "t2"),
    "hecktor": ("ct", "pet"),
}

#: channel of every image key in the 4-D MSD Task01_BrainTumour volumes
MSD_CHANNELS: dict[str, int] = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}

#: label values (``{value: name}``) and regions (``{region: [values]}``) of the known datasets
LABEL_CONVENTIONS: dict[str, dict[str, dict[Any, Any]]] = {
    "brats2021": {
        "labels": {1: "NCR/NET", 2: "edema (ED)", 4: "enhancing tumour (ET)"},
        "regions": {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]},
    },
    "brats2023": {
        "labels": {1: "NETC", 2: "SNFH", 3: "ET"},
        "regions": {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]},
    },
    "msd": {
        "labels": {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        "regions": {"wt": [1, 2, 3], "tc": [2, 3], "et": [3]},
    },
    "hecktor": {
        "labels": {1: "GTVp", 2: "GTVn"},
        "regions": {"gtvp": [1], "gtvn": [2], "gtv": [1, 2], "tumour": [1]},
    },
}

#: other names accepted in ``modalities`` for the normalised keys
_MODALITY_ALIASES: dict[str, str] = {
    "t1n": "t1",
    "t1w": "t1",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2w": "t2",
    "t2f": "flair",
    "pt": "pet",
}

_NIFTI = r"\.nii(?:\.gz)?"
_BRATS2021_FILE = re.compile(rf"(?P<id>.+)_(?P<key>t1|t1ce|t2|flair|seg){_NIFTI}")
_BRATS2023_FILE = re.compile(rf"(?P<id>.+)-(?P<key>t1n|t1c|t2w|t2f|seg){_NIFTI}")
_MSD_FILE = re.compile(rf"(?P<id>BRATS_\d+){_NIFTI}")
_HECKTOR_IMAGE = re.compile(rf"(?P<id>.+)__(?P<key>CT|PT){_NIFTI}")
_NIFTI_FILE = re.compile(rf"(?P<id>.+){_NIFTI}")
_SUFFIX_KEYS: dict[str, str] = {
    "t1": "t1",
    "t1ce": "t1ce",
    "t2": "t2",
    "flair": "flair",
    "seg": "label",
    "t1n": "t1",
    "t1c": "t1ce",
    "t2w": "t2",
    "t2f": "flair",
    "CT": "ct",
    "PT": "pet",
}
_PLACEHOLDER = "{subject}"
_RESERVED_KEYS = ("subject", "channels")
_SECTIONS = ("training", "validation", "testing")
_MAX_LISTED = 20

# key -> subject id -> relative paths found for it
_Matches = dict[str, dict[str, list[str]]]


# ---------------------------------------------------------------------------------------------------------------------
# argument parsing (the CLI passes strings, lists or dicts)
# ---------------------------------------------------------------------------------------------------------------------


def _literal(value: Any) -> Any:
    """A Python/JSON literal given as a string (``"['a', 'b']"``, ``"{1: 'x'}"``), else ``value`` itself."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{", "("):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            try:
                return json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"cannot parse {value!r} as a list or dict literal.") from e
    return value


def _as_str_list(value: Any, name: str) -> list[str]:
    """A list of strings from a list/tuple, a literal string or a comma-separated string."""
    value = _literal(value)
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = [str(v).strip() for v in value]
    else:
        raise ValueError(f"{name} must be a list of names, got {value!r}.")
    return [v for v in items if v]


def _read_exclude(exclude: Any) -> list[str]:
    """
    Subject ids to exclude: ``None``, a list of ids, a comma-separated string of ids, or the path of a file with one
    id a line (``#`` comments allowed) or a JSON list.

    Raises:
        FileNotFoundError: ``exclude`` looks like a file path (has a folder or an extension) but is not a file.
        ValueError: a JSON file that is not a list.
    """
    if exclude is None:
        return []
    if isinstance(exclude, os.PathLike) or (
        isinstance(exclude, str) and (os.path.isfile(exclude) or _looks_like_path(exclude))
    ):
        path = os.fspath(exclude)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"exclude file not found: {os.path.abspath(path)}")
        with open(path) as f:
            text = f.read()
        if text.lstrip().startswith("["):
            try:
                ids = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: malformed JSON list of subject ids: {e.msg} (line {e.lineno}).") from e
            if not isinstance(ids, list):
                raise ValueError(f"{path}: expected a JSON list of subject ids.")
            return [str(i).strip() for i in ids if str(i).strip()]
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return [line for line in lines if line]
    return _as_str_list(exclude, "exclude")


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or os.path.splitext(value)[1].lower() in (".txt", ".json", ".csv", ".lst")


def _parse_patterns(patterns: Any) -> dict[str, str]:
    """
    Validate the ``pattern`` layout's globs: ``{key: glob}``, each glob relative, with ``{subject}``.

    Raises:
        ValueError: a missing or malformed mapping, a glob without ``{subject}``, an absolute glob or one with ``..``.
    """
    patterns = _literal(patterns)
    if not isinstance(patterns, Mapping) or not patterns:
        raise ValueError(
            "--layout pattern needs --patterns, a dict {key: glob} relative to dataset_dir with the placeholder "
            "{subject}, e.g. \"{'t1': '{subject}/{subject}_T1.nii.gz', 'label': 'labels/{subject}.nii.gz'}\"."
        )
    out: dict[str, str] = {}
    for key, glob in patterns.items():
        key = str(key).strip()
        if not key or key in _RESERVED_KEYS:
            raise ValueError(f"pattern key {key!r} is not allowed (reserved: {list(_RESERVED_KEYS)}).")
        if not isinstance(glob, str) or _PLACEHOLDER not in glob:
            raise ValueError(f"pattern for '{key}' must be a string containing {_PLACEHOLDER}, got {glob!r}.")
        glob = glob.replace("\\", "/")
        while glob.startswith("./"):
            glob = glob[2:]
        if glob.startswith("/") or os.path.isabs(glob) or ".." in glob.split("/"):
            raise ValueError(f"pattern for '{key}' must be relative to dataset_dir without '..', got {glob!r}.")
        out[key] = glob
    if all(key == "label" for key in out):
        raise ValueError("the patterns need at least one image key besides 'label'.")
    return out


def _glob_regex(glob: str) -> str:
    """Regex of a glob fragment: ``*`` and ``?`` stay within a path component, ``**/`` spans folders."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in glob[i + 2 :]:
            end = glob.index("]", i + 2)
            content = glob[i + 1 : end]
            negate = content.startswith("!")
            content = content[1:] if negate else content
            out.append("[" + ("^" if negate else "") + content.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _pattern_regex(glob: str) -> re.Pattern[str]:
    """Regex of a glob with ``{subject}`` (one path component part; every occurrence the same id)."""
    parts = glob.split(_PLACEHOLDER)
    regex = _glob_regex(parts[0]) + "(?P<id>[^/]+)"
    for part in parts[1:-1]:
        regex += _glob_regex(part) + "(?P=id)"
    return re.compile(regex + _glob_regex(parts[-1]))


def _as_labels(labels: Any) -> dict[int, str]:
    """``{value: name}`` from a dict (or its literal string) with integer-like keys."""
    labels = _literal(labels)
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a dict {{value: name}}, e.g. \"{{1: 'lesion'}}\", got {labels!r}.")
    out = {}
    for value, name in labels.items():
        try:
            v = int(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"label value {value!r} is not an integer.") from None
        if v <= 0 or v != float(value):
            raise ValueError(f"label value {value!r} must be a positive integer (0 is background).")
        out[v] = str(name)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------------------------
# scanning
# ---------------------------------------------------------------------------------------------------------------------


def _check_dir(dataset_dir: str | os.PathLike) -> str:
    path = os.fspath(dataset_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset folder not found: {os.path.abspath(path)}")
    return path


def _list_files(root: str) -> list[str]:
    """Every non-hidden file under ``root`` (recursively, following links once), as sorted relative posix paths."""
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link cycle
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        for name in names:
            if not name.startswith("."):
                files.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(files)


def _add(matches: _Matches, key: str, subject: str, path: str) -> None:
    matches.setdefault(key, {}).setdefault(subject, []).append(path)


def _match_layout(layout: str, files: Sequence[str], patterns: Mapping[str, str] | None, test_images: bool) -> _Matches:
    """The files of ``layout`` among ``files``: ``{key: {subject: [paths]}}`` with normalised keys."""
    matches: _Matches = {}
    if layout in ("brats2021", "brats2023"):
        regex = _BRATS2021_FILE if layout == "brats2021" else _BRATS2023_FILE
        for path in files:
            m = regex.fullmatch(path.rsplit("/", 1)[-1])
            if m:
                _add(matches, _SUFFIX_KEYS[m["key"]], m["id"], path)
    elif layout == "msd":
        image_folders = ("imagesTr", "imagesTs") if test_images else ("imagesTr",)
        for path in files:
            parts = path.split("/")
            m = _MSD_FILE.fullmatch(parts[-1])
            if m and len(parts) > 1 and parts[-2] in image_folders:
                for key in LAYOUT_MODALITIES["msd"]:
                    _add(matches, key, m["id"], path)
            elif m and len(parts) > 1 and parts[-2] == "labelsTr":
                _add(matches, "label", m["id"], path)
    elif layout == "hecktor":
        others = []
        for path in files:
            m = _HECKTOR_IMAGE.fullmatch(path.rsplit("/", 1)[-1])
            if m:
                _add(matches, _SUFFIX_KEYS[m["key"]], m["id"], path)
            else:
                others.append(path)
        ids = set(matches.get("ct", {})) | set(matches.get("pet", {}))
        for path in others:
            m = _NIFTI_FILE.fullmatch(path.rsplit("/", 1)[-1])
            if m and m["id"] in ids:
                _add(matches, "label", m["id"], path)
    elif layout == "pattern":
        regexes = {key: _pattern_regex(glob) for key, glob in (patterns or {}).items()}
        for path in files:
            for key, regex in regexes.items():
                m = regex.fullmatch(path)
                if m:
                    _add(matches, key, m["id"], path)
    else:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}.")
    return matches


def _layout_score(layout: str, matches: _Matches) -> tuple[int, int, int]:
    """(subjects with every image and the label, subjects with every image, matched files)."""
    image_keys = LAYOUT_MODALITIES[layout]
    with_images = set.intersection(*(set(matches.get(k, {})) for k in image_keys))
    labeled = with_images & set(matches.get("label", {}))
    n_files = len({p for by_id in matches.values() for paths in by_id.values() for p in paths})
    return len(labeled), len(with_images), n_files


def _detect(root: str, files: Sequence[str]) -> str:
    scores = {layout: _layout_score(layout, _match_layout(layout, files, None, True)) for layout in DETECTABLE_LAYOUTS}
    best = max(scores.values())
    if best == (0, 0, 0):
        raise ValueError(
            f"no known dataset layout found in {os.path.abspath(root)} ({len(files)} file(s) scanned). Known layouts: "
            "brats2021 (<ID>_{t1,t1ce,t2,flair,seg}.nii.gz), brats2023 (<ID>-{t1n,t1c,t2w,t2f,seg}.nii.gz), "
            "msd (imagesTr/BRATS_NNN.nii.gz + labelsTr/BRATS_NNN.nii.gz), hecktor (<ID>__CT.nii.gz, <ID>__PT.nii.gz, "
            "<ID>.nii.gz). For another naming use --layout pattern --patterns \"{'t1': '{subject}/{subject}_T1.nii.gz', "
            "'t2': '{subject}/{subject}_T2.nii.gz', 'label': 'labels/{subject}.nii.gz'}\"."
        )
    tied = [layout for layout, score in scores.items() if score == best]
    if len(tied) > 1:
        raise ValueError(
            f"{os.path.abspath(root)} matches the layouts {tied} equally well ({best[1]} subject(s) each); choose one "
            "with " + " or ".join(f"--layout {t}" for t in tied) + "."
        )
    return max(scores, key=lambda layout: scores[layout])


def detect_layout(dataset_dir: str | os.PathLike) -> str:
    """
    The layout (one of ``brats2021``, ``brats2023``, ``msd``, ``hecktor``) of ``dataset_dir``, scanned recursively:
    the one with the most complete labeled subjects, then the most complete image sets, then the most files.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        ValueError: no layout matches (the message lists them and the ``pattern`` option) or two match equally.
    """
    root = _check_dir(dataset_dir)
    return _detect(root, _list_files(root))


def _select_modalities(layout: str, modalities: Any, available: Sequence[str]) -> list[str]:
    """The requested image keys (normalised, in the given order), default all of ``available``."""
    if modalities is None:
        return list(available)
    keys = [
        m if m in available else _MODALITY_ALIASES.get(m.lower(), m.lower())
        for m in _as_str_list(modalities, "modalities")
    ]
    unknown = [k for k in keys if k not in available]
    if unknown or not keys:
        raise ValueError(f"modalities {keys} are not image keys of layout {layout}; choose among {list(available)}.")
    if len(set(keys)) != len(keys):
        raise ValueError(f"modalities {keys} contain duplicates.")
    return keys


def _scan(
    dataset_dir: str | os.PathLike,
    layout: str,
    patterns: Any,
    modalities: Any,
    require_label: bool,
) -> tuple[str, list[str], list[dict[str, Any]], dict[str, list[str]]]:
    """``(layout, image keys, records, skipped)``; see :py:func:`scan_dataset`."""
    root = _check_dir(dataset_dir)
    layout = str(layout).strip().lower()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}.")
    if patterns is not None and layout != "pattern":
        raise ValueError(f"--patterns is only used with --layout pattern (got --layout {layout}).")
    files = _list_files(root)
    if layout == "auto":
        layout = _detect(root, files)
    parsed = _parse_patterns(patterns) if layout == "pattern" else None
    if parsed is not None and require_label and "label" not in parsed:
        raise ValueError("the patterns have no 'label' entry: add one, or set --require_label False.")
    available = [k for k in parsed if k != "label"] if parsed is not None else LAYOUT_MODALITIES[layout]
    image_keys = _select_modalities(layout, modalities, available)
    matches = _match_layout(layout, files, parsed, test_images=not require_label)

    relevant = [*image_keys, "label"]
    duplicates = [
        f"subject {sid}, key '{key}': {' and '.join(paths)}"
        for key in relevant
        for sid, paths in sorted(matches.get(key, {}).items())
        if len(paths) > 1
    ]
    if duplicates:
        raise ValueError(
            f"{os.path.abspath(root)}: the same subject id was found more than once for a key (keep one copy, or "
            "scan a narrower folder):\n  " + "\n  ".join(duplicates)
        )

    required = relevant if require_label else image_keys
    subjects = sorted({sid for key in relevant for sid in matches.get(key, {})})
    records, skipped = [], {}
    for sid in subjects:
        missing = [key for key in required if sid not in matches.get(key, {})]
        if missing:
            skipped[sid] = missing
            continue
        record: dict[str, Any] = {"subject": sid}
        for key in relevant:
            if sid in matches.get(key, {}):
                record[key] = matches[key][sid][0]
        if layout == "msd":
            record["channels"] = {key: MSD_CHANNELS[key] for key in image_keys}
        records.append(record)
    if skipped:
        listed = [f"{sid} (missing {', '.join(keys)})" for sid, keys in list(skipped.items())[:_MAX_LISTED]]
        more = f", and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
        warnings.warn(
            f"{os.path.abspath(root)}: skipped {len(skipped)} incomplete subject(s) of layout {layout}: "
            + "; ".join(listed)
            + more,
            stacklevel=3,
        )
    if not records:
        hint = " (or set --require_label False to keep subjects without a label)" if require_label else ""
        raise ValueError(
            f"{os.path.abspath(root)}: no complete subject of layout {layout} with {required}{hint}; "
            f"{len(skipped)} incomplete subject(s)."
        )
    return layout, image_keys, records, skipped


def scan_dataset(
    dataset_dir: str | os.PathLike,
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    modalities: Sequence[str] | str | None = None,
    require_label: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """
    Scan ``dataset_dir`` recursively for the subjects of ``layout``.

    Args:
        dataset_dir: the dataset folder.
        layout: ``auto`` (detected, see :py:func:`detect_layout`), ``brats2021``, ``brats2023``, ``msd``,
            ``hecktor`` or ``pattern``.
        patterns: for ``pattern`` only: ``{key: glob}`` relative to ``dataset_dir``, each glob with ``{subject}``
            (one path component part; every occurrence the same id) and optionally ``*``, ``?``, ``[...]``, ``**/``.
            The key ``label`` is the segmentation; the others are image keys.
        modalities: the image keys to require and write (normalised names; ``t1n``, ``t1c``, ``t2w``, ``t2f`` are
            accepted too), default all of the layout's.
        require_label: skip subjects without a label (default); when False they are kept without ``label`` key
            (and the MSD ``imagesTs`` volumes are included).

    Returns:
        the records sorted by subject (``{"subject": id, key: path relative to dataset_dir, ...}``, MSD records
        with ``"channels": {key: channel}``) and the skipped subjects ``{id: [missing keys]}`` (also warned about).

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        ValueError: an unknown or undetectable layout, bad patterns or modalities, the same subject id twice for one
            key, or no complete subject.
    """
    _, _, records, skipped = _scan(dataset_dir, layout, patterns, modalities, require_label)
    return records, skipped


# ---------------------------------------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------------------------------------


def _check_fraction(value: Any, name: str) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.") from None
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    return fraction


def _count(fraction: float, n: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * n))


def split_records(
    records: Sequence[Mapping[str, Any]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    exclude: Sequence[str] | str | os.PathLike | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """
    Seeded, subject-level, disjoint ``training``/``validation``/``testing`` split of ``records``.

    The excluded subjects are removed first. Labeled subjects (records with ``label``) are sorted by id and permuted
    with ``numpy.random.default_rng(seed)``: the first ``round(test_fraction * n)`` go to testing, the next
    ``round(val_fraction * n)`` to validation (at least 1 each when the fraction is > 0), the rest to training.
    Unlabeled subjects all go to training. The result only depends on the subject ids and ``seed``, not on the
    order of ``records``; every section is sorted by subject.

    Args:
        records: datalist records with ``subject``.
        val_fraction, test_fraction: fractions of the labeled subjects, each in [0, 1).
        seed: random seed.
        exclude: subject ids to leave out: a list, a comma-separated string, or a file (one id a line, ``#``
            comments allowed, or a JSON list). Ids not among ``records`` are warned about.

    Raises:
        ValueError: bad fractions, records without ``subject``, or no labeled training subject left.
        FileNotFoundError: a missing exclude file.
    """
    val = _check_fraction(val_fraction, "val_fraction")
    test = _check_fraction(test_fraction, "test_fraction")
    if val + test >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val} + {test}.")
    excluded = set(_read_exclude(exclude))
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for i, record in enumerate(records):
        if not record.get("subject"):
            raise ValueError(f"record {i} has no 'subject': {dict(record)!r}.")
        by_subject.setdefault(str(record["subject"]), []).append(dict(record))
    unknown = sorted(excluded - set(by_subject))
    if unknown:
        warnings.warn(f"excluded subject id(s) not found in the dataset: {unknown}", stacklevel=2)
    subjects = sorted(set(by_subject) - excluded)
    labeled = [s for s in subjects if all("label" in r for r in by_subject[s])]
    n = len(labeled)
    n_test, n_val = (_count(test, n), _count(val, n)) if n else (0, 0)
    if n and n - n_test - n_val < 1:
        raise ValueError(
            f"{n} labeled subject(s) are too few for {n_test} testing and {n_val} validation subject(s) with at "
            "least one training subject; lower --test_fraction/--val_fraction."
        )
    order = np.random.default_rng(int(seed)).permutation(n)
    testing = {labeled[i] for i in order[:n_test]}
    validation = {labeled[i] for i in order[n_test : n_test + n_val]}
    out: dict[str, list[dict[str, Any]]] = {section: [] for section in _SECTIONS}
    for sid in subjects:
        section = "testing" if sid in testing else "validation" if sid in validation else "training"
        out[section].extend(by_subject[sid])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# label conventions
# ---------------------------------------------------------------------------------------------------------------------


def _stored_convention(name: str, labels: Mapping[int, str], regions: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The JSON form of a convention (string label values)."""
    return {
        "name": name,
        "labels": {str(v): str(n) for v, n in sorted(labels.items())},
        "regions": {r: [int(v) for v in values] for r, values in regions.items()},
    }


def _custom_convention(labels: Mapping[int, str] | None) -> dict[str, Any]:
    """A user-given convention: region ``foreground`` (every value) and one region per label name."""
    if not labels:
        return _stored_convention("custom", {}, {})
    regions: dict[str, list[int]] = {"foreground": sorted(labels)}
    for value, name in labels.items():
        slug = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
        if slug and slug not in regions:
            regions[slug] = [value]
    return _stored_convention("custom", labels, regions)


def _convention(label_convention: Mapping[str, Any] | str) -> tuple[str, dict[int, str], dict[str, list[int]]]:
    if isinstance(label_convention, str):
        if label_convention not in LABEL_CONVENTIONS:
            raise ValueError(
                f"unknown label convention {label_convention!r}; known: {sorted(LABEL_CONVENTIONS)} (or the "
                "label_convention dict of a datalist written by scripts/prepare_datalist.py)."
            )
        conv = LABEL_CONVENTIONS[label_convention]
        return label_convention, dict(conv["labels"]), {r: list(v) for r, v in conv["regions"].items()}
    if not isinstance(label_convention, Mapping) or not isinstance(label_convention.get("labels"), Mapping):
        raise ValueError(f"a label convention must be a name or a dict with 'labels', got {label_convention!r}.")
    labels = {int(float(v)): str(n) for v, n in label_convention["labels"].items()}
    regions = {str(r): [int(float(v)) for v in vs] for r, vs in dict(label_convention.get("regions") or {}).items()}
    return str(label_convention.get("name", "custom")), labels, regions


def region_label_map(label_convention: Mapping[str, Any] | str, region: str) -> dict[int, int]:
    """
    The ``label_map`` (``{value: class}``) of a binary segmentation of ``region``: ``1`` for the convention's label
    values in the region, ``0`` for its other values (mapped to background, never rejected).

    Args:
        label_convention: a name of ``LABEL_CONVENTIONS`` or the ``label_convention`` dict stored in a datalist.
        region: a region of the convention, e.g. ``wt``, ``tc``, ``et`` (BraTS, MSD) or ``gtvp``, ``gtvn``,
            ``gtv``, ``tumour`` (HECKTOR).

    Raises:
        ValueError: an unknown convention name (listing the known ones) or region (listing the convention's).
    """
    name, labels, regions = _convention(label_convention)
    key = str(region).strip().lower()
    if key not in regions:
        known = sorted(regions) if regions else "none (set --label_map instead)"
        raise ValueError(f"unknown region {region!r} of label convention {name!r}; its regions: {known}.")
    inside = set(regions[key])
    return {value: int(value in inside) for value in sorted(set(labels) | inside)}


def datalist_label_convention(data_list_file_path: str | os.PathLike) -> dict[str, Any]:
    """
    The ``label_convention`` dict (``name``, ``labels``, ``regions``) of a datalist written by
    :py:func:`prepare_datalist`.

    Raises:
        FileNotFoundError: the datalist does not exist.
        ValueError: malformed JSON, or a datalist without a label convention dict (e.g. the demo datalist or a
            hand-written one): then ``--label_map`` must be set instead.
    """
    path = os.fspath(data_list_file_path)
    content = read_json(path)
    conv = content.get("label_convention") if isinstance(content, dict) else None
    if isinstance(conv, str) and conv in LABEL_CONVENTIONS:
        spec = LABEL_CONVENTIONS[conv]
        return _stored_convention(conv, spec["labels"], spec["regions"])
    if not isinstance(conv, Mapping) or not isinstance(conv.get("labels"), Mapping) or not conv.get("regions"):
        raise ValueError(
            f"{path} has no label convention with regions (it was not written by scripts/prepare_datalist.py, or "
            'its labels are custom): set --label_map instead, e.g. --label_map "{1: 1, 2: 1}".'
        )
    return dict(conv)


# ---------------------------------------------------------------------------------------------------------------------
# the datalist
# ---------------------------------------------------------------------------------------------------------------------


def _write_json(data: Mapping[str, Any], path: str, overwrite: bool) -> None:
    """Write ``data`` to ``path`` atomically; an existing ``path`` is only replaced when ``overwrite``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic "create if absent"
        except FileExistsError:
            raise FileExistsError(
                f"{os.path.abspath(path)} already exists; set --overwrite True to replace it."
            ) from None
        except OSError:  # no hard links on this file system
            if os.path.exists(path):
                raise FileExistsError(
                    f"{os.path.abspath(path)} already exists; set --overwrite True to replace it."
                ) from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike,
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    modalities: Sequence[str] | str | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    exclude: Sequence[str] | str | os.PathLike | None = None,
    require_label: bool = True,
    labels: Mapping[Any, str] | str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """
    Scan ``dataset_dir`` (:py:func:`scan_dataset`), split it (:py:func:`split_records`) and write the datalist JSON
    to ``output`` (atomically, indent 2).

    The datalist has ``name`` (the folder's name), ``layout``, ``modalities`` (image keys), ``label_convention``
    (``{"name", "labels": {"1": ...}, "regions": {...}}``), ``seed``, ``test_fraction``, ``val_fraction``,
    ``excluded`` (the excluded subject ids found in the dataset), ``skipped`` (``{id: [missing keys]}``) and the
    ``training``, ``validation`` and ``testing`` records (paths relative to ``dataset_dir``).

    Args:
        labels: for ``layout="pattern"`` only: ``{value: name}`` of the label values (convention ``custom`` with
            the region ``foreground`` and one region per label name); without it the convention has no labels.
        overwrite: replace an existing ``output`` (never done otherwise).
        others: see :py:func:`scan_dataset` and :py:func:`split_records`.

    Returns:
        the datalist written.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        FileNotFoundError: ``dataset_dir`` or an exclude file is missing.
        ValueError: see :py:func:`scan_dataset` and :py:func:`split_records`; ``labels`` with a fixed layout.
    """
    output = os.fspath(output)
    if os.path.isdir(output):
        raise ValueError(f"output {os.path.abspath(output)} is a folder; give the datalist file path.")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(output)} already exists; set --overwrite True to replace it.")
    layout, image_keys, records, skipped = _scan(dataset_dir, layout, patterns, modalities, bool(require_label))
    if layout == "pattern":
        convention = _custom_convention(_as_labels(labels) if labels is not None else None)
    elif labels is not None:
        raise ValueError(f"--labels is only used with --layout pattern; layout {layout} has a fixed label convention.")
    else:
        spec = LABEL_CONVENTIONS[layout]
        convention = _stored_convention(layout, spec["labels"], spec["regions"])
    # excluded subjects that were skipped as incomplete are excluded too (not warned about as unknown ids)
    exclude_ids = _read_exclude(exclude)
    excluded = sorted(set(exclude_ids) & ({r["subject"] for r in records} | set(skipped)))
    splits = split_records(
        records, val_fraction, test_fraction, int(seed), exclude=[i for i in exclude_ids if i not in skipped]
    )
    skipped = {sid: keys for sid, keys in skipped.items() if sid not in excluded}
    if not splits["training"]:
        raise ValueError("no training subject left after the exclusions.")
    datalist = {
        "name": os.path.basename(os.path.normpath(os.path.abspath(os.fspath(dataset_dir)))),
        "layout": layout,
        "modalities": image_keys,
        "label_convention": convention,
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "val_fraction": float(val_fraction),
        "require_label": bool(require_label),
        "excluded": excluded,
        "skipped": skipped,
        **splits,
    }
    _write_json(datalist, output, overwrite=bool(overwrite))
    return datalist


def summary_text(datalist: Mapping[str, Any]) -> str:
    """A readable summary of a datalist written by :py:func:`prepare_datalist` (counts, keys, labels)."""
    counts = {section: len(datalist.get(section) or []) for section in _SECTIONS}
    unlabeled = sum("label" not in r for r in datalist.get("training") or [])
    conv = datalist.get("label_convention")
    lines = [
        f"dataset: {datalist.get('name', '?')} (layout {datalist.get('layout', '?')})",
        f"subjects: {sum(counts.values())} (training {counts['training']}"
        + (f" of which {unlabeled} without label" if unlabeled else "")
        + f", validation {counts['validation']}, testing {counts['testing']})",
        f"split: seed {datalist.get('seed')}, test_fraction {datalist.get('test_fraction')}, "
        f"val_fraction {datalist.get('val_fraction')}",
        f"modalities: {', '.join(datalist.get('modalities') or [])}",
    ]
    if isinstance(conv, Mapping):
        labels = ", ".join(f"{v} {n}" for v, n in (conv.get("labels") or {}).items()) or "unknown"
        regions = ", ".join(f"{r} {list(vs)}" for r, vs in (conv.get("regions") or {}).items()) or "none"
        lines += [
            f"label convention: {conv.get('name', '?')}",
            f"  labels: {labels}",
            f"  regions: {regions}",
        ]
    else:
        lines.append(f"label convention: {conv if conv else 'none'}")
    skipped = datalist.get("skipped") or {}
    listed = "; ".join(f"{s} (missing {', '.join(k)})" for s, k in list(skipped.items())[:_MAX_LISTED])
    lines.append(f"skipped (incomplete): {len(skipped)}" + (f": {listed}" if listed else ""))
    if len(skipped) > _MAX_LISTED:
        lines[-1] += f", and {len(skipped) - _MAX_LISTED} more"
    excluded = list(datalist.get("excluded") or [])
    lines.append(f"excluded: {len(excluded)}" + (f": {', '.join(excluded)}" if excluded else ""))
    return "\n".join(lines)


def next_commands(
    datalist: Mapping[str, Any], dataset_dir: str | os.PathLike, data_list_file_path: str | os.PathLike
) -> list[str]:
    """
    The pre-training and fine-tuning commands for a datalist written by :py:func:`prepare_datalist`: with the
    preset ``configs/brats.yaml`` (BraTS, MSD) or ``configs/hecktor.yaml``, and ``--modalities`` (the first two
    image keys) when the datalist has a subset of the layout's keys or a custom layout; for a custom layout also
    ``--label_map`` (every label value to the foreground). A datalist with one modality gets a comment instead
    (the workflows need a pair).
    """
    data = f"--dataset_dir {shlex.quote(os.fspath(dataset_dir))} --data_list_file_path {shlex.quote(os.fspath(data_list_file_path))}"
    layout = datalist.get("layout")
    keys = [str(k) for k in datalist.get("modalities") or []]
    mods = ' --modalities "[' + ",".join(f"'{k}'" for k in keys[:2]) + ']"'
    if layout in LAYOUT_MODALITIES and sorted(keys) == sorted(LAYOUT_MODALITIES[layout]):
        mods = ""  # the preset's pair
    if layout in LAYOUT_MODALITIES:
        preset = "configs/hecktor.yaml" if layout == "hecktor" else "configs/brats.yaml"
        pretrain = f"\"['configs/pretrain.yaml','{preset}']\""
        train = f"\"['configs/train.yaml','{preset}']\""
        label_map = ""
    else:
        pretrain, train = "configs/pretrain.yaml", "configs/train.yaml"
        conv = datalist.get("label_convention")
        values = list(conv.get("labels") or {}) if isinstance(conv, Mapping) else []
        label_map = ' --label_map "{' + (", ".join(f"{v}: 1" for v in values) or "VALUE: 1, ...") + '}"'
    commands = [
        f"python -m monai.bundle run training --config_file {pretrain} {data}{mods}",
        f"python -m monai.bundle run --config_file {train} {data}{mods}{label_map}",
    ]
    if len(keys) < 2:
        return [f"# the bundle's workflows need a pair of image modalities; this datalist has only {', '.join(keys)}"]
    return commands
