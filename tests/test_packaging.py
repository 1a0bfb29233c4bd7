"""pyproject.toml: the license is an SPDX expression (PEP 639), so installing prints no deprecation warning.

setuptools deprecated the ``license = { text = ... }`` table (SetuptoolsDeprecationWarning on every
``pip install``); the string form needs setuptools >= 77, which the build requirement asks for.
"""
import pathlib
import re

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_license_is_an_spdx_string_and_the_build_needs_a_setuptools_that_reads_it():
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert data["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", []))  # PEP 639: not both
    (setuptools,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.fullmatch(r"setuptools>=(\d+).*", setuptools).group(1)) >= 77
