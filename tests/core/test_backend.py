"""Backends: names, precedence, mixing errors, host transfers, seeded random numbers, scatter-add."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend, ops
from minilora.backend import BackendError, Random, use_backend
from minilora.tensor import Tensor

HAVE_STRICT = backend.is_available("array_api_strict")
needs_strict = pytest.mark.skipif(not HAVE_STRICT, reason="array_api_strict is not installed")


def test_unknown_backend_name_is_a_value_error_naming_it():
    for call in (lambda: backend.namespace_named("torchy"), lambda: use_backend("torchy").__enter__()):
        with pytest.raises(ValueError, match="torchy") as info:
            call()
        assert isinstance(info.value, BackendError) and "numpy" in str(info.value)


def test_environment_variable_selects_the_backend(monkeypatch):
    monkeypatch.setenv("MINILORA_BACKEND", "numpy")
    assert backend.backend_name(backend.default_namespace()) == "numpy"
    monkeypatch.setenv("MINILORA_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="MINILORA_BACKEND='nonsense'"):
        backend.default_namespace()
    monkeypatch.delenv("MINILORA_BACKEND")
    assert backend.backend_name(backend.default_namespace()) == "numpy"


@needs_strict
def test_precedence_arrays_over_use_backend_over_env_over_numpy(monkeypatch):
    import array_api_strict as xps
    monkeypatch.delenv("MINILORA_BACKEND", raising=False)
    assert backend.default_namespace() is np
    monkeypatch.setenv("MINILORA_BACKEND", "array_api_strict")
    assert backend.default_namespace() is xps
    assert backend.namespace_of() is xps  # no arrays: the current backend
    with use_backend("numpy"):
        assert backend.default_namespace() is np  # use_backend beats the environment
        with use_backend("array_api_strict") as inner:
            assert inner is xps and backend.backend_name(backend.default_namespace()) == "array_api_strict"
            assert backend.namespace_of(np.ones(2), 1.0, None) is np  # the arrays beat use_backend
            y = ops.add(Tensor(np.ones(2)), Tensor(np.ones(2)))
            assert isinstance(y.data, np.ndarray)
            assert backend.backend_name(Tensor(1.5).data) == "array_api_strict"  # a number: current backend
        assert backend.backend_name(backend.default_namespace()) == "numpy"  # nesting unwinds
    assert backend.backend_name(backend.default_namespace()) == "array_api_strict"


def test_use_backend_unwinds_on_error():
    with pytest.raises(KeyError):
        with use_backend("numpy"):
            with use_backend("numpy"):
                raise KeyError
    assert getattr(backend._local, "stack", []) == []


@needs_strict
def test_arrays_of_two_backends_meeting_raise():
    import array_api_strict as xps
    a, b = Tensor(np.ones(3)), Tensor(xps.ones(3))
    for op in (ops.add, ops.mul, ops.matmul):
        with pytest.raises(BackendError, match="different backends"):
            op(ops.reshape(a, shape=(1, 3)) if op is ops.matmul else a,
               ops.reshape(b, shape=(3, 1)) if op is ops.matmul else b)
    with pytest.raises(BackendError, match="call to_numpy first"):
        backend.from_numpy(xps.ones(2), np)


def test_import_minilora_does_not_import_cupy(tmp_path):
    """Even with a cupy package on the path (here a stub that records its import), it stays unimported."""
    stub = tmp_path / "cupy"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('cupy must not be imported by import minilora')\n")
    code = textwrap.dedent("""
        import sys
        import minilora, minilora.nn, minilora.testing
        print(sorted(name for name in sys.modules if name.split('.')[0] in ('cupy', 'cupyx')))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    env.pop("MINILORA_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_host_transfers_round_trip(xp):
    host = np.arange(6.0).reshape(2, 3)
    arr = backend.from_numpy(host, xp)
    assert backend.namespace_of(arr) is xp
    np.testing.assert_array_equal(backend.to_numpy(arr), host)
    assert isinstance(backend.to_numpy(arr), np.ndarray)
    assert backend.to_numpy(backend.from_numpy(2.5, xp)).shape == ()


@pytest.mark.parametrize("method", ["normal", "uniform", "integers"])
def test_random_is_seeded_and_its_state_round_trips(xp, method):
    def draw(rng):
        if method == "integers":
            return backend.to_numpy(rng.integers(0, 10, (4, 3)))
        return backend.to_numpy(getattr(rng, method)((4, 3), dtype=xp.float64))
    a, b = Random(7, xp), Random(7, xp)
    np.testing.assert_array_equal(draw(a), draw(b))
    state = json.loads(json.dumps(a.state))  # JSON-able
    first = draw(a)
    assert not np.array_equal(first, draw(a))
    a.state = state
    np.testing.assert_array_equal(draw(a), first)
    assert not np.array_equal(draw(Random(8, xp)), draw(Random(7, xp)))


def test_random_dtypes_and_ranges(xp):
    rng = Random(0, xp)
    assert rng.normal((3,)).dtype == xp.float32
    assert rng.uniform((3,), dtype=xp.float64).dtype == xp.float64
    assert rng.integers(0, 5, (3,)).dtype == xp.int64
    assert rng.integers(0, 5, (3,), dtype=xp.int32).dtype == xp.int32
    u = backend.to_numpy(rng.uniform((1000,), low=-1.0, high=3.0, dtype=xp.float64))
    assert u.min() >= -1.0 and u.max() < 3.0
    n = backend.to_numpy(rng.normal((20000,), std=2.0, mean=5.0, dtype=xp.float64))
    assert abs(n.mean() - 5.0) < 0.1 and abs(n.std() - 2.0) < 0.1


@given(rows=st.integers(1, 6), cols=st.integers(1, 4), n=st.integers(0, 20), seed=st.integers(0, 2**32 - 1))
def test_scatter_add_accumulates_repeated_indices(xp, rows, cols, n, seed):
    rng = np.random.default_rng(seed)
    idx, vals = rng.integers(0, rows, n), rng.standard_normal((n, cols))
    expected = np.zeros((rows, cols))
    for i, row in enumerate(idx):
        expected[row] += vals[i]
    out = backend.scatter_add(xp, rows, backend.from_numpy(idx, xp), backend.from_numpy(vals, xp))
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-12, atol=1e-12)


def test_scatter_add_chunks_and_narrow_index_dtypes(xp, monkeypatch):
    monkeypatch.setattr(backend, "_SCATTER_CHUNK", 8)  # forces several chunks on the portable path
    idx = np.array([0, 2, 2, 1, 0, 2, 2], dtype=np.uint8)
    vals = np.arange(14.0).reshape(7, 2)
    expected = np.zeros((3, 2))
    np.add.at(expected, idx, vals)
    out = backend.scatter_add(xp, 3, backend.from_numpy(idx, xp), backend.from_numpy(vals, xp))
    np.testing.assert_array_equal(backend.to_numpy(out), expected)
    with pytest.raises(ValueError, match="scatter_add"):
        backend.scatter_add(xp, 3, backend.from_numpy(idx[:3], xp), backend.from_numpy(vals, xp))


@needs_strict
def test_random_streams_match_across_host_backends():
    """Same seed, same numbers on numpy and array_api_strict: models built from a seed agree across them."""
    import array_api_strict as xps
    a, b = Random(11, np), Random(11, xps)
    np.testing.assert_array_equal(backend.to_numpy(a.normal((3, 2))), backend.to_numpy(b.normal((3, 2))))
    np.testing.assert_array_equal(backend.to_numpy(a.uniform((4,), dtype=np.float64)),
                                  backend.to_numpy(b.uniform((4,), dtype=xps.float64)))
    np.testing.assert_array_equal(backend.to_numpy(a.integers(0, 9, (5,))), backend.to_numpy(b.integers(0, 9, (5,))))


def test_dtype_name_is_numpy_s_name_on_every_backend(xp):
    assert backend.dtype_name(xp.float32) == "float32" and backend.dtype_name(xp.zeros((1,), dtype=xp.int64).dtype) == "int64"
    assert backend.dtype_name(np.dtype("float64")) == "float64" and backend.dtype_name("uint8") == "uint8"


def test_to_namespace_moves_casts_and_copies_unless_told_not_to(xp):
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    got = backend.to_namespace(host, xp, xp.float32)
    assert backend.backend_name(got) == backend.backend_name(xp) and backend.dtype_name(got.dtype) == "float32"
    np.testing.assert_array_equal(backend.to_numpy(got), host.astype(np.float32))
    same = backend.to_namespace(got, xp, copy=False)
    assert same is got and backend.to_namespace(got, xp) is not got
    if backend.backend_name(xp) == "numpy":
        assert not np.shares_memory(backend.to_namespace(host, xp), host)
    if backend.backend_name(xp) != "array_api_strict":  # an array of another backend goes through the host
        strict = backend.namespace_named("array_api_strict")
        np.testing.assert_array_equal(backend.to_numpy(backend.to_namespace(strict.asarray(host), xp)), host)


def test_backend_name_takes_an_array_or_a_namespace_and_errors_are_minilora_errors(xp):
    from minilora.errors import MiniloraError
    from minilora.nn import StateDictError
    assert backend.backend_name(xp) == backend.backend_name(xp.zeros((2,))) in backend.BACKENDS
    assert backend.namespace_named(backend.backend_name(xp)) is xp is backend.namespace_of(xp.ones((1,)))
    with pytest.raises(BackendError, match="not an array of a known backend"):
        backend.backend_name([1.0])
    with pytest.raises(BackendError, match="unknown backend 'os'"):
        backend.backend_name(os)
    assert issubclass(BackendError, MiniloraError) and issubclass(BackendError, ValueError)
    assert issubclass(StateDictError, MiniloraError) and issubclass(StateDictError, ValueError)


def test_to_numpy_contiguous_is_row_major_and_keeps_0d_arrays():
    """One host copy for files and digests: row-major, a view when already so, 0-d stays 0-d
    (np.ascontiguousarray, which two callers used, makes 0-d arrays (1,))."""
    a = np.arange(12.0).reshape(3, 4)
    assert backend.to_numpy(a, contiguous=True) is a
    t = backend.to_numpy(a.T, contiguous=True)
    assert t.flags.c_contiguous and np.array_equal(t, a.T)
    assert backend.to_numpy(np.float32(2.5) * np.ones(()), contiguous=True).shape == ()
