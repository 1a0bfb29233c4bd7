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


def test_json_text_is_parsed_only_where_it_is_not_a_file():
    """json.loads is for JSON that lives inside another format (checkpoint and 4-bit state metadata,
    one JSONL line at a time); a JSON file is read through io/files.py."""
    found = sorted(name for name, text in _sources().items() if re.search(r"json\.loads\(", text))
    assert found == ["checkpoint.py", "data/jsonl.py", "quant/state.py"]
