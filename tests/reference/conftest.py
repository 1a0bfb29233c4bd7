"""Reference cross-checks against torch, PEFT, transformers and bitsandbytes.

These frameworks are heavy and optional: they live in the separate environment built by
``make .venv-ref/.installed`` (versions pinned in tests/reference/constraints.txt) and run with
``make test-reference``. Where any of them is missing, each test file in this folder is reported
as skipped, naming the missing packages, instead of failing to import: ``pytest tests`` in the
normal environment stays green.
"""
from __future__ import annotations

import importlib.util

import pytest

REQUIRED = ("torch", "transformers", "peft", "bitsandbytes")
MISSING = tuple(name for name in REQUIRED if importlib.util.find_spec(name) is None)
SKIP_REASON = (f"reference frameworks not installed ({', '.join(MISSING)}); "
               "`make test-reference` builds .venv-ref with the pinned versions and runs these tests")


class _SkippedFile(pytest.File):
    """A test file whose imports cannot be satisfied: collecting it reports one skip."""

    def collect(self):
        pytest.skip(SKIP_REASON)


def pytest_pycollect_makemodule(module_path, parent):
    if MISSING:
        return _SkippedFile.from_parent(parent, path=module_path)
    return None

