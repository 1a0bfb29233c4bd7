"""Shared fixtures: the ``xp`` fixture runs a test on every available backend."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minilora import backend

# The xp fixture is function-scoped but constant across a test's examples, so reusing it is safe.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_SKIPPED: dict[str, str] = {}


def _backend_params():
    params = []
    for name in backend.BACKENDS:
        if backend.is_available(name):
            params.append(pytest.param(name, id=name))
        else:
            reason = ("no CUDA GPU answers (cupy.is_available() is False) or cupy is not installed"
                      if name == "cupy" else f"{name} is not installed")
            _SKIPPED[name] = reason
            params.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=f"backend {name}: {reason}")))
    return params


@pytest.fixture(params=_backend_params())
def xp(request):
    """The array namespace of each available backend; new arrays are created in it too."""
    with backend.use_backend(request.param) as namespace:
        yield namespace


@pytest.fixture
def to_np():
    return backend.to_numpy


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED:
        terminalreporter.write_line("backends skipped: " + "; ".join(f"{k} ({v})" for k, v in _SKIPPED.items()))
    else:
        terminalreporter.write_line("backends: all of " + ", ".join(backend.BACKENDS) + " ran")


def float_dtype(xp, name):
    return getattr(xp, name)


def assert_close(actual, expected, rtol=1e-10, atol=0.0):
    np.testing.assert_allclose(backend.to_numpy(actual), backend.to_numpy(expected), rtol=rtol, atol=atol)
