# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The model-file record: one JSON file beside each weights file (``models/model.json`` for ``models/model.pt``,
``generators.json`` for ``generators.pt``) saying exactly what the weights are and how their input must be prepared.

A record holds the network's constructor arguments, one preprocessing record (modalities, intensity rule and its
parameters, orientation, spacing, resampling, image size, backgrounds), for a segmentation model its labels, the
training settings and their fingerprint, the bundle version and the weights file's SHA-256. The weights stay a bare
state dict (the Model Zoo's ``ckpt_export`` loads ``model.pt`` strictly and MONAI Label's ``CheckpointLoader`` reads
only a plain dict or its ``"model"`` entry), so the record lives beside them. ``write_record`` is the one writer,
``read_record`` the one reader (it refuses a record whose hash does not match its weights).

Workflows that consume a model take their settings from its record: ``resolve_settings`` fills every id left null
from the record(s) and stops on an explicit value that contradicts one, unless forced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from . import __version__
from .files import atomic_torch_save, atomic_write_json, sha256_file

__all__ = [
    "DEFAULT_SETTINGS",
    "GENERATOR_KIND",
    "LABEL_IDS",
    "OUTPUT_RECORD",
    "OUTPUT_RECORD_SCHEMA",
    "PREPROCESSING_IDS",
    "RECORD_SCHEMA",
    "SEGMENTATION_KIND",
    "ModelSource",
    "data_differences",
    "data_fingerprint",
    "fingerprint",
    "label_names",
    "load_generators",
    "preprocessing_record",
    "read_record",
    "record_path",
    "record_settings",
    "resolve_settings",
    "save_generators",
    "write_output_record",
    "write_record",
]

logger = logging.getLogger("multi_condos")

RECORD_SCHEMA = "multi_condos.model_record/1"
#: the record of an output folder (what produced its files), beside them as ``run_record.json``
OUTPUT_RECORD_SCHEMA = "multi_condos.output_record/1"
OUTPUT_RECORD = "run_record.json"
SEGMENTATION_KIND = "segmentation"
GENERATOR_KIND = "generators"

#: ids of the input preparation a model was trained with (the configs' names)
PREPROCESSING_IDS: tuple[str, ...] = (
    "modalities",
    "source",
    "image_size",
    "intensity",
    "intensity_clip",
    "ct_window",
    "pet_range",
    "orientation",
    "spacing",
    "resample_to",
    "crop_foreground",
)
#: ids of a segmentation model's network and outputs
LABEL_IDS: tuple[str, ...] = ("features", "num_classes", "label_map", "region")

#: the bundle's defaults, used for an id that neither the command line, a preset nor a record sets
DEFAULT_SETTINGS: dict[str, Any] = {
    "modalities": ["t1", "t2"],
    "source": "g_ab",
    "image_size": 64,
    "intensity": "mri",
    "intensity_clip": 5.0,
    "ct_window": [-200.0, 250.0],
    "pet_range": [0.0, 10.0],
    "orientation": "RAS",
    "spacing": None,
    "resample_to": None,
    "crop_foreground": True,
    "features": [32, 32, 64, 128, 256, 32],
    "num_classes": 2,
    "label_map": {1: 1, 2: 1},
    "region": None,
}


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of settings (JSON with sorted keys; non-JSON values as ``str``)."""
    return hashlib.sha256(json.dumps(_jsonable(dict(settings)), sort_keys=True).encode()).hexdigest()


def data_fingerprint(records: Sequence[Mapping[str, Any]], with_files: bool = True) -> dict[str, Any]:
    """
    The input files of ``records`` as they are now: the digest of every file path with its size and modification
    time (ns), their number and (``with_files``) the ``{path: [size, mtime_ns]}`` map that names what changed.
    A value of a record that is not an existing file (a subject id, a channel map) is not part of it.
    """
    files: dict[str, list[int]] = {}
    for record in records:
        for value in dict(record).values():
            if isinstance(value, str) and os.path.isfile(value):
                st = os.stat(value)
                files[os.path.abspath(value)] = [int(st.st_size), int(st.st_mtime_ns)]
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    out: dict[str, Any] = {"fingerprint": digest, "n_files": len(files)}
    if with_files:
        out["files"] = files
    return out


def data_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """
    How the data of ``current`` (``data_fingerprint``) differ from ``recorded``: the files changed, added and
    removed (a few named), or ``None`` when they are the same.
    """
    if recorded.get("fingerprint") == current.get("fingerprint"):
        return None
    old, new = dict(recorded.get("files") or {}), dict(current.get("files") or {})
    if not old or not new:
        return f"data fingerprint {str(recorded.get('fingerprint'))[:12]}... -> {str(current.get('fingerprint'))[:12]}..."
    parts = []
    for what, names in (
        ("changed", sorted(k for k in set(old) & set(new) if list(old[k]) != list(new[k]))),
        ("added", sorted(set(new) - set(old))),
        ("removed", sorted(set(old) - set(new))),
    ):
        if names:
            parts.append(f"{len(names)} file(s) {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return "data: " + "; ".join(parts)


def preprocessing_record(
    settings: Mapping[str, Any], modalities: Sequence[str], input_keys: Sequence[str], source: str | None = None
) -> dict[str, Any]:
    """
    The preprocessing part of a record: the modality pair, the modalities the network reads (``input_keys``) with
    their intensity rules and backgrounds, the rules' parameters, the geometry and the slice size.
    """
    from .data import as_image_size
    from .transforms import background_value, intensity_rule

    rules = {key: intensity_rule(settings["intensity"], key) for key in input_keys}
    record = {
        "modalities": list(modalities),
        "input_keys": list(input_keys),
        "intensity": rules,
        "intensity_clip": settings["intensity_clip"],
        "ct_window": list(settings["ct_window"]),
        "pet_range": list(settings["pet_range"]),
        "orientation": settings["orientation"],
        "spacing": None if settings["spacing"] is None else list(settings["spacing"]),
        "resample_to": settings["resample_to"],
        "image_size": list(as_image_size(settings["image_size"])),
        "backgrounds": {key: background_value(rule) for key, rule in rules.items()},
        "crop_foreground": bool(settings["crop_foreground"]),
    }
    if source is not None:
        record["source"] = source
    return record


def label_names(num_classes: int) -> dict[str, str]:
    """The class names of a segmentation model (metadata.json's ``channel_def`` must say the same)."""
    n = int(num_classes)
    return {"0": "background", **{str(i): ("lesion" if n == 2 else f"class_{i}") for i in range(1, n)}}


def record_path(weights_path: str | os.PathLike) -> str:
    """The record beside a weights file: ``model.pt`` -> ``model.json``."""
    root, _ = os.path.splitext(os.fspath(weights_path))
    return root + ".json"


def write_record(weights_path: str | os.PathLike, record: Mapping[str, Any]) -> str:
    """
    Write the record of ``weights_path`` (which must exist) atomically, adding the schema, the weights' file name and
    SHA-256, the bundle version and the time. Returns the record's path.

    Args:
        weights_path: the weights file the record describes.
        record: ``kind`` (``segmentation`` or ``generators``), ``network``, ``preprocessing`` and, where they apply,
            ``labels`` and ``training``.
    """
    weights_path = os.fspath(weights_path)
    if record.get("kind") not in (SEGMENTATION_KIND, GENERATOR_KIND):
        raise ValueError(f"a model record needs kind '{SEGMENTATION_KIND}' or '{GENERATOR_KIND}', got {record.get('kind')!r}.")
    content = {
        "schema": RECORD_SCHEMA,
        **_jsonable(dict(record)),
        "weights": {"file": os.path.basename(weights_path), "sha256": sha256_file(weights_path)},
        "bundle_version": __version__,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = record_path(weights_path)
    atomic_write_json(path, content)
    return path


def write_output_record(
    output_dir: str | os.PathLike,
    workflow: str,
    settings: Mapping[str, Any],
    models: Sequence[str | os.PathLike] = (),
    inputs: Sequence[Mapping[str, Any]] = (),
    outputs: Sequence[str] = (),
) -> str:
    """
    Write ``output_dir/run_record.json`` on a run's success: what produced the folder's files: the workflow, its
    settings and their fingerprint, each input model file with its SHA-256 (the one its model record names, checked
    by ``read_record``, else hashed here), the data fingerprint of ``inputs``, the ``outputs`` and the bundle version.
    Every workflow writes it through this function (``bundle.run_history.OutputRecordHandler``, inference's ``run``).
    Returns the record's path.

    Args:
        output_dir: the folder the record describes.
        workflow: what ran (``pre-training``, ``fine-tuning``, ``evaluation``, ``translation``, ``inference``).
        settings: the run's settings (their fingerprint is ``run_config.json``'s where the workflow writes one).
        models: the model files the run read.
        inputs: the records of the data the run read (``data_fingerprint``).
        outputs: the files the run wrote: named relative to ``output_dir`` when inside it, else by absolute path
            (e.g. pre-training's ``generators.pt`` in ``ckpt_dir``).
    """
    model_entries = []
    for model in models:
        model = os.path.abspath(os.fspath(model))
        record = read_record(model) if os.path.isfile(record_path(model)) else None
        digest = (record or {}).get("weights", {}).get("sha256") or sha256_file(model)
        model_entries.append({"file": model, "sha256": digest, "record": record_path(model) if record else None})
    content = {
        "schema": OUTPUT_RECORD_SCHEMA,
        "workflow": workflow,
        "settings": _jsonable(dict(settings)),
        "fingerprint": fingerprint(settings),
        "models": model_entries,
        "data": data_fingerprint(inputs),
        "outputs": sorted(_output_name(o, output_dir) for o in outputs),
        "bundle_version": __version__,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = os.path.join(os.fspath(output_dir), OUTPUT_RECORD)
    atomic_write_json(path, content)
    return path


def _output_name(path: str | os.PathLike, output_dir: str | os.PathLike) -> str:
    """``path`` relative to ``output_dir`` when inside it, else absolute (the record stays valid if moved with it)."""
    path, folder = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(output_dir))
    return os.path.relpath(path, folder) if os.path.commonpath([path, folder]) == folder else path


def read_record(
    weights_path: str | os.PathLike, kind: str | None = None, required: bool = False
) -> dict[str, Any] | None:
    """
    The validated record of ``weights_path``.

    A weights file without a record (written by bundle 0.2.0) gives ``None`` with a warning, or an error when
    ``required``.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist, or (``required``) its record does not.
        ValueError: a malformed record, another kind, or a record whose SHA-256 does not match the weights (naming
            both files).
    """
    weights_path = os.fspath(weights_path)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{os.path.abspath(weights_path)} not found.")
    path = record_path(weights_path)
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"{weights_path} has no model record ({path} is missing).")
        logger.warning(
            f"{weights_path} has no model record ({os.path.basename(path)}; written by bundle 0.2.0 or copied "
            "without it): its settings cannot be checked, the configs' values are used as given."
        )
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as a model record ({e}).") from None
    if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: not a model record of this bundle (schema {found!r}, expected {RECORD_SCHEMA!r}).")
    if kind is not None and record.get("kind") != kind:
        raise ValueError(f"{path} describes a {record.get('kind')!r} model, not {kind!r} weights.")
    expected = (record.get("weights") or {}).get("sha256")
    actual = sha256_file(weights_path)
    if expected != actual:
        raise ValueError(
            f"{path} does not describe {weights_path}: the record was written for weights with SHA-256 "
            f"{str(expected)[:12]}..., the file has {actual[:12]}... (replaced or copied without its record). "
            "Copy the record that belongs to these weights, or delete the stale record."
        )
    return record


def record_settings(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The configs' ids a record supplies (its preprocessing, and for a segmentation model its labels/features)."""
    if not record:
        return {}
    settings = {k: v for k, v in dict(record.get("preprocessing") or {}).items() if k in PREPROCESSING_IDS}
    labels = dict(record.get("labels") or {})
    settings.update({k: labels[k] for k in ("num_classes", "label_map", "region") if k in labels})
    if record.get("kind") == SEGMENTATION_KIND:
        args = (record.get("network") or {}).get("args") or {}
        if "features" in args:
            settings["features"] = list(args["features"])
    if "label_map" in settings:
        settings["label_map"] = {int(float(k)): int(v) for k, v in settings["label_map"].items()}
    return settings


def save_generators(state: Mapping[str, Any], path: str | os.PathLike, record: Mapping[str, Any]) -> str:
    """
    Write ``generators.pt`` (``{"g_ab": state_dict, "g_ba": state_dict}``, plain ``BasicUNet`` state dicts) and its
    record ``generators.json`` (``kind: generators``), both atomically. Returns the weights' path.
    """
    path = os.fspath(path)
    atomic_torch_save({"g_ab": dict(state["g_ab"]), "g_ba": dict(state["g_ba"])}, path)
    write_record(path, {**record, "kind": GENERATOR_KIND})
    return path


#: the inline entries of a bundle-0.2.0 ``generators.pt`` (no record beside it)
_LEGACY_PREPROCESSING = ("image_size", "intensity", "intensity_clip", "ct_window", "pet_range", "orientation", "spacing")


def load_generators(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Read a ``generators.pt`` and its record: ``({"g_ab", "g_ba"}, record)``. A file of bundle 0.2.0 (settings stored
    inline, no record) loads with a warning; its record is rebuilt from the inline entries.

    Raises:
        FileNotFoundError: the file is missing (the message says how to make it).
        ValueError: not a generators file, or a record that does not describe it.
    """
    from .data import read_torch_file  # data imports demo_data, which imports this module's users

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"generators file not found: {path}. Run the pre-training first "
            "(python -m monai.bundle run training --config_file configs/pretrain.yaml), or point --ckpt_dir "
            "(or --generators_file) at the folder (file) it wrote."
        )
    record = read_record(path, GENERATOR_KIND)
    content = read_torch_file(path, "a generators.pt file", map_location)
    if not isinstance(content, dict) or not {"g_ab", "g_ba"} <= set(content):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: not a generators file of pre-training (needs 'g_ab' and 'g_ba', has {found}).")
    if record is None:
        if "network_args" not in content:
            raise ValueError(f"{path}: a generators file without a record and without 'network_args'.")
        record = _legacy_generator_record(content)
    return {"g_ab": content["g_ab"], "g_ba": content["g_ba"]}, record


def _legacy_generator_record(content: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a bundle-0.2.0 ``generators.pt`` from its inline entries (what they do not say stays unset)."""
    preprocessing = {k: content[k] for k in _LEGACY_PREPROCESSING if k in content}
    modalities = list(content.get("modalities") or [])
    if modalities:
        preprocessing["modalities"] = modalities
    return {
        "schema": RECORD_SCHEMA,
        "kind": GENERATOR_KIND,
        "network": {
            "target": "monai.networks.nets.BasicUNet",
            "args": dict(content["network_args"]),
            "shared_blocks": list(content.get("shared_blocks") or []),
        },
        "preprocessing": preprocessing,
        "training": {"epoch": content.get("epoch")},
        "bundle_version": "0.2.0",
    }


class ModelSource:
    """
    A model record that supplies settings: ``name`` (for messages: the record's file), its ``settings``, the ids that
    must agree with an explicit value (``strict``; the others are only inherited) and the input key whose intensity
    rule matters (``input_keys``).
    """

    def __init__(
        self,
        weights_path: str | os.PathLike | None,
        record: Mapping[str, Any] | None,
        strict: Sequence[str] = PREPROCESSING_IDS + LABEL_IDS,
    ) -> None:
        self.name = record_path(weights_path) if weights_path else "the model record"
        self.record = record
        self.settings = record_settings(record)
        self.strict = tuple(strict)


def resolve_settings(
    given: Mapping[str, Any],
    sources: Sequence[ModelSource | None] = (),
    force: bool = False,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The settings a workflow runs with: for each id of ``given``, its explicit (non-null) value, else the first
    source's value, else the bundle default (``DEFAULT_SETTINGS``, or ``defaults``).

    An explicit value that differs from a source's value for one of that source's ``strict`` ids is an error
    naming the id, both values and the record, unless ``force`` (then a warning).

    Raises:
        ValueError: a conflict (see above).
    """
    defaults = DEFAULT_SETTINGS if defaults is None else defaults
    sources = [s for s in sources if s is not None and s.record is not None]
    out: dict[str, Any] = {}
    conflicts: list[str] = []
    for key, value in given.items():
        if value is not None:
            out[key] = value
            for source in sources:
                if key in source.strict and key in source.settings and _applies(key, source.settings):
                    if not _same(key, value, source.settings[key], source.settings):
                        conflicts.append(f"{key}: given {value!r}, {source.name} has {source.settings[key]!r}")
            continue
        found = next((s for s in sources if key in s.settings), None)
        out[key] = found.settings[key] if found is not None else defaults.get(key)
    if conflicts:
        text = "; ".join(conflicts)
        if not force:
            raise ValueError(
                f"the settings contradict the model's record ({text}). Leave these ids unset to use the record's "
                "values, or pass --force_settings True to override them."
            )
        logger.warning(f"--force_settings True: overriding the model record's settings ({text})")
    return out


#: the intensity rule that each rule parameter belongs to
_RULE_OF_PARAMETER = {"intensity_clip": "mri", "ct_window": "ct", "pet_range": "pet"}


def _applies(key: str, settings: Mapping[str, Any]) -> bool:
    """A rule parameter matters only when one of the record's modalities uses its rule."""
    if key not in _RULE_OF_PARAMETER:
        return True
    rules = settings.get("intensity")
    rules = rules.values() if isinstance(rules, Mapping) else [rules]
    return _RULE_OF_PARAMETER[key] in rules


def _same(key: str, given: Any, stored: Any, stored_settings: Mapping[str, Any]) -> bool:
    """Whether an explicit value agrees with a record's: one intensity rule matches a map of equal rules,
    lists/tuples and 5/5.0 compare by value, an int image size equals its square."""
    if key == "intensity":
        if isinstance(stored, Mapping):
            given_map = given if isinstance(given, Mapping) else dict.fromkeys(stored, given)
            return all(given_map.get(k) == rule for k, rule in stored.items())
        return given == stored
    if key == "image_size":
        return _square(given) == _square(stored)
    if key == "label_map":
        return {int(float(k)): int(v) for k, v in dict(given).items()} == dict(stored)
    return _plain(given) == _plain(stored)


def _square(size: Any) -> list[int]:
    return [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
