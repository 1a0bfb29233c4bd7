"""The NumPy fast paths of inplace.py against the portable kernels they replace: the same numbers."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minilora import inplace, kernels
from minilora.tensor import Tensor


def both_paths(kernel, arrays, cotangent_seed=0, **options):
    """[(outputs and input gradients) with the fast path, the same with the portable one]."""
    results = []
    for fast in (True, False):
        inplace.set_enabled(fast)
        try:
            tensors = [Tensor(a, requires_grad=True) for a in arrays]
            y = kernel(*tensors, **options)
            g = np.random.default_rng(cotangent_seed).standard_normal(y.shape).astype(y.dtype)
            y.backward(g)
            results.append([y.data] + [t.grad for t in tensors])
        finally:
            inplace.set_enabled(True)
    return results


shapes = st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 9))
dtypes = st.sampled_from([np.float32, np.float64])


@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16))
def test_swiglu_fast_path_gives_the_same_numbers(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    gate, up = (rng.standard_normal(shape).astype(dtype) * 3 for _ in range(2))
    fast, plain = both_paths(kernels.swiglu, [gate, up])
    for a, b in zip(fast, plain):
        np.testing.assert_array_equal(a, b)


@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16))
def test_rms_norm_fast_path_gives_the_same_numbers(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape[-1:]).astype(dtype)
    (y, gx, gw), (y0, gx0, gw0) = both_paths(kernels.rms_norm, [x, w], eps=1e-5)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(gx, gx0)
    np.testing.assert_array_equal(gw, gw0)


@given(b=st.integers(1, 4), t=st.integers(1, 5), heads=st.integers(1, 3), half=st.integers(1, 4),
       dtype=dtypes, seed=st.integers(0, 2**16))
def test_rope_fast_path_gives_the_same_numbers(b, t, heads, half, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, heads, 2 * half)).astype(dtype)
    cos, sin = (rng.standard_normal((t, 1, 2 * half)).astype(dtype) for _ in range(2))  # any tables, not just RoPE's
    fast, plain = [], []
    for fast_path, out in ((True, fast), (False, plain)):
        inplace.set_enabled(fast_path)
        try:
            xt = Tensor(x, requires_grad=True)
            y = kernels.rope(xt, cos, sin)
            y.backward(np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype))
            out += [y.data, xt.grad]
        finally:
            inplace.set_enabled(True)
    for a, c in zip(fast, plain):
        np.testing.assert_array_equal(a, c)


def test_fast_paths_are_numpy_only_and_can_be_turned_off():
    import array_api_strict as strict
    assert inplace.enabled(np) and not inplace.enabled(strict)
    inplace.set_enabled(False)
    try:
        assert not inplace.enabled(np)
    finally:
        inplace.set_enabled(True)


def test_a_strided_input_gives_the_same_numbers():
    x = np.random.default_rng(0).standard_normal((6, 8, 4)).transpose(1, 0, 2)  # not C-ordered
    w = np.random.default_rng(1).standard_normal(4)
    inplace.set_enabled(False)
    try:
        plain = kernels.rms_norm.primitive.forward(x, w)[0]
    finally:
        inplace.set_enabled(True)
    np.testing.assert_array_equal(inplace.rms_norm(np, x, w, 1e-6)[0], plain)
