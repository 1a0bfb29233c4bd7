"""Every file minilora writes goes through io/atomic.py; every JSON file it reads through io/files.py."""
from __future__ import annotations

import pathlib
import re

import minilora

ROOT = pathlib.Path(minilora.__file__).parent


def _sources():
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in ROOT.rglob("*.py")}


def test_only_io_atomic_renames_temporary_files_into_place():
    found = [name for name, text in _sources().items()
             if re.search(r"os\.replace\(|os\.rename\(|tempfile\.mkstemp\(|NamedTemporaryFile\(", text)]
    assert found == ["io/atomic.py"]


def test_only_io_files_parses_json_files():
    found = [name for name, text in _sources().items() if re.search(r"json\.load\(", text)]
    assert found == ["io/files.py"]
