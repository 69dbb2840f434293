# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""Values of the datalist options as the CLI passes them: Python/JSON literals, lists of names, exclude lists."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["as_str_list", "parse_literal", "read_exclude"]


def parse_literal(value: Any) -> Any:
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


def as_str_list(value: Any, name: str) -> list[str]:
    """A list of strings from a list/tuple, a literal string or a comma-separated string."""
    value = parse_literal(value)
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = [str(v).strip() for v in value]
    else:
        raise ValueError(f"{name} must be a list of names, got {value!r}.")
    return [v for v in items if v]


def read_exclude(exclude: Any) -> list[str]:
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
    return as_str_list(exclude, "exclude")


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or os.path.splitext(value)[1].lower() in (".txt", ".json", ".csv", ".lst")
