"""Checks every reader makes before it parses a file: it exists, is a regular file, holds a JSON object."""
from __future__ import annotations

import json
import os

from ..errors import FileFormatError, MissingFileError


def regular_file_size(path, what: str) -> int:
    """Size in bytes of ``path``; MissingFileError if it does not exist, FileFormatError if not a file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(path, what)
    if not os.path.isfile(path):
        raise FileFormatError(path, "not a regular file")
    return os.path.getsize(path)


def read_json(path, what: str | None = None):
    """The JSON value stored in ``path``; FileFormatError naming the file when it is not valid JSON."""
    regular_file_size(path, what or os.path.basename(os.fspath(path)))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise FileFormatError(path, f"not valid JSON: {exc}") from None


def read_json_object(path, what: str | None = None) -> dict:
    """The JSON object stored in ``path``; FileFormatError naming the file when it is not one."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise FileFormatError(path, f"expected a JSON object, got {type(data).__name__}")
    return data
