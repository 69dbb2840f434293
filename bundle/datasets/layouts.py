# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The dataset layouts: their file names, recognising a layout in a folder (``auto``), and the ``pattern`` layout's
globs (validated, turned into regexes with the ``{subject}`` placeholder).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .arguments import parse_literal

__all__ = [
    "DETECTABLE_LAYOUTS",
    "LAYOUTS",
    "LAYOUT_MODALITIES",
    "MSD_CHANNELS",
    "Matches",
    "check_dir",
    "detect_in_files",
    "detect_layout",
    "list_files",
    "match_layout",
    "parse_patterns",
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

# key -> subject id -> relative paths found for it
Matches = dict[str, dict[str, list[str]]]


def parse_patterns(patterns: Any) -> dict[str, str]:
    """
    Validate the ``pattern`` layout's globs: ``{key: glob}``, each glob relative, with ``{subject}``.

    Raises:
        ValueError: a missing or malformed mapping, a glob without ``{subject}``, an absolute glob or one with ``..``.
    """
    patterns = parse_literal(patterns)
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


def check_dir(dataset_dir: str | os.PathLike) -> str:
    """``dataset_dir`` as a path string; raises ``FileNotFoundError`` when it is not a folder."""
    path = os.fspath(dataset_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset folder not found: {os.path.abspath(path)}")
    return path


def list_files(root: str) -> list[str]:
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


def _add(matches: Matches, key: str, subject: str, path: str) -> None:
    matches.setdefault(key, {}).setdefault(subject, []).append(path)


def match_layout(layout: str, files: Sequence[str], patterns: Mapping[str, str] | None, test_images: bool) -> Matches:
    """The files of ``layout`` among ``files``: ``{key: {subject: [paths]}}`` with normalised keys."""
    matches: Matches = {}
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


def _layout_score(layout: str, matches: Matches) -> tuple[int, int, int]:
    """(subjects with every image and the label, subjects with every image, matched files)."""
    image_keys = LAYOUT_MODALITIES[layout]
    with_images = set.intersection(*(set(matches.get(k, {})) for k in image_keys))
    labeled = with_images & set(matches.get("label", {}))
    n_files = len({p for by_id in matches.values() for paths in by_id.values() for p in paths})
    return len(labeled), len(with_images), n_files


def detect_in_files(root: str, files: Sequence[str]) -> str:
    """The layout of ``files`` (listed under ``root``); see :py:func:`detect_layout`."""
    scores = {layout: _layout_score(layout, match_layout(layout, files, None, True)) for layout in DETECTABLE_LAYOUTS}
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
    root = check_dir(dataset_dir)
    return detect_in_files(root, list_files(root))
