"""The public testing tools: gradcheck catches wrong VJPs; the strategies draw what they promise."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend, ops
from minilora.tensor import Primitive, Tensor, apply
from minilora.testing import GradcheckError, arrays, broadcastable_shapes, gradcheck, lora_dims, shapes


def leaf(xp, shape, seed=0):
    return Tensor(backend.from_numpy(np.random.default_rng(seed).standard_normal(shape), xp), requires_grad=True)


def wrong_square(factor):
    def forward(a):
        return a * a, lambda g, needs: (g * factor * a,)  # the true VJP has factor 2
    return Primitive("square", forward)


def test_gradcheck_passes_a_right_vjp_and_fails_a_wrong_one(xp):
    x = leaf(xp, (3, 2))
    assert gradcheck(lambda a: apply(wrong_square(2.0), a), x) < 1e-6
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a: apply(wrong_square(2.001), a), x)
    assert gradcheck(lambda a: apply(wrong_square(3.0), a), x, raise_on_fail=False) > 1e-6


def test_gradcheck_catches_a_wrong_single_element(xp):
    def forward(a):
        def vjp(g, needs):
            ga = xp.asarray(g * 2 * a, copy=True)
            ga[0, ...] = 0.0  # drops the gradient of one element only
            return (ga,)
        return a * a, vjp
    with pytest.raises(GradcheckError):
        gradcheck(lambda a: apply(Primitive("square", forward), a), leaf(xp, (1,), seed=3))


def test_gradcheck_checks_only_inputs_that_require_grad_and_scalar_outputs(xp):
    a, b = leaf(xp, (2, 3)), Tensor(backend.from_numpy(np.ones((2, 3)), xp))
    gradcheck(lambda p, q: (p * q).sum(), a, b)  # scalar output, constant second input
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda q: q * 2.0, b)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda p: p * 2.0, Tensor(xp.ones((2,), dtype=xp.float32), requires_grad=True))


def test_gradcheck_of_a_composite_through_many_primitives(xp):
    x, w = leaf(xp, (2, 3), 1), leaf(xp, (3, 4), 2)
    gradcheck(lambda a, b: ops.tanh(ops.matmul(a, b)).mean(axis=0) * 3.0, x, w)


@given(shape=shapes(min_dims=1, max_dims=4, max_side=5))
def test_shapes_strategy_bounds(shape):
    assert 1 <= len(shape) <= 4 and all(1 <= s <= 5 for s in shape)


def test_shapes_strategy_draws_size_one_sides_often():
    seen = []

    @given(shapes(min_dims=2, max_dims=2))
    def collect(shape):
        seen.append(shape)
    collect()
    assert any(1 in s for s in seen) and any(all(side > 1 for side in s) for s in seen)


@given(data=st.data())
def test_broadcastable_shapes_broadcast(data):
    shape = data.draw(shapes(max_dims=4))
    other = data.draw(broadcastable_shapes(shape))
    assert len(other) <= len(shape)
    assert np.broadcast_shapes(shape, other) == shape


@given(dims=lora_dims(max_dim=9))
def test_lora_dims_rank_bounds(dims):
    d_in, d_out, r = dims
    assert 1 <= r <= min(d_in, d_out) and max(d_in, d_out) <= 9


@given(data=st.data())
def test_arrays_strategy(xp, data):
    a = data.draw(arrays((2, 3), xp=xp, low=-1.0, high=1.0))
    assert backend.namespace_of(a) is xp and tuple(a.shape) == (2, 3) and a.dtype == xp.float64
    host = backend.to_numpy(a)
    assert host.min() >= -1.0 and host.max() <= 1.0
