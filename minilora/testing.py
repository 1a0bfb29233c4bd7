"""Public testing tools: a VJP checker and hypothesis strategies, so users can check their own ops.

``gradcheck(fn, *inputs)`` compares the reverse-mode gradient with central finite differences along
random directions, in float64:  for a random cotangent u of the output and a random direction d of
input i,   <u, J_i d>  ~=  (<u, f(x + eps d)> - <u, f(x - eps d)>) / (2 eps)   must equal <grad_i, d>
where grad_i is the VJP of u. This checks the whole Jacobian in expectation with two evaluations per
direction, and is exact up to O(eps^2).
"""
from __future__ import annotations

import numpy as np

from . import backend
from .tensor import Tensor, enable_grad, no_grad


class GradcheckError(AssertionError):
    pass


def _to_host(x):
    return backend.to_numpy(x.data if isinstance(x, Tensor) else x)


def gradcheck(fn, *inputs, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-8, directions: int = 3,
              seed: int = 0, raise_on_fail: bool = True) -> float:
    """Check the VJP of ``fn`` at ``inputs`` (Tensors; those with requires_grad are checked).

    fn: Tensors -> Tensor. Inputs must be float64. Returns the worst relative deviation found;
    raises GradcheckError when it exceeds the tolerance (unless raise_on_fail is False).
    """
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if backend.dtype_name(inputs[i].dtype) != "float64":
            raise ValueError(f"gradcheck: input {i} is {inputs[i].dtype}; finite differences need float64")
    rng = np.random.default_rng(seed)
    xp = inputs[checked[0]].xp

    def value(args):
        with no_grad():
            return fn(*args)

    with enable_grad():
        leaves = [Tensor(x.data, requires_grad=x.requires_grad) if isinstance(x, Tensor) else x for x in inputs]
        out = fn(*leaves)
    u_host = rng.standard_normal(out.shape)
    u = backend.from_numpy(u_host, xp)
    out.backward(u)
    worst = 0.0
    for i in checked:
        grad = leaves[i].grad
        grad_host = np.zeros(inputs[i].shape) if grad is None else _to_host(grad)
        x0 = _to_host(inputs[i])
        for _ in range(directions):
            d = rng.standard_normal(x0.shape)
            args_plus = list(inputs)
            args_minus = list(inputs)
            args_plus[i] = Tensor(backend.from_numpy(x0 + eps * d, xp))
            args_minus[i] = Tensor(backend.from_numpy(x0 - eps * d, xp))
            numeric = (np.sum(u_host * _to_host(value(args_plus))) -
                       np.sum(u_host * _to_host(value(args_minus)))) / (2 * eps)
            analytic = float(np.sum(grad_host * d))
            deviation = abs(numeric - analytic) / (atol + rtol * max(abs(numeric), abs(analytic), 1.0))
            worst = max(worst, deviation * rtol)
            if deviation > 1.0 and raise_on_fail:
                raise GradcheckError(f"gradcheck failed for input {i}: analytic {analytic:.10g} vs "
                                     f"numeric {numeric:.10g} along a random direction")
    return worst


# ------------------------------------------------------------------ hypothesis strategies

def shapes(min_dims: int = 1, max_dims: int = 4, min_side: int = 1, max_side: int = 5):
    """Array shapes, sides drawn so that size-1 dimensions are common."""
    from hypothesis import strategies as st
    side = st.one_of(st.just(1), st.integers(min_side, max_side))
    return st.lists(side, min_size=min_dims, max_size=max_dims).map(tuple)


def broadcastable_shapes(shape):
    """Shapes that broadcast against ``shape``: a suffix of it with some sides set to 1."""
    from hypothesis import strategies as st

    @st.composite
    def draw(draw_):
        keep = draw_(st.integers(0, len(shape)))
        suffix = list(shape[len(shape) - keep:])
        ones = draw_(st.lists(st.booleans(), min_size=len(suffix), max_size=len(suffix)))
        return tuple(1 if one else s for s, one in zip(suffix, ones))
    return draw()


def arrays(shape, xp=None, dtype="float64", seed_strategy=None, low: float = -2.0, high: float = 2.0):
    """Arrays of ``shape`` with values from a drawn seed (fast: no element-wise shrinking)."""
    from hypothesis import strategies as st
    seeds = seed_strategy or st.integers(0, 2**32 - 1)

    def make(seed):
        host = np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)
        return backend.from_numpy(host, xp)
    return seeds.map(make)


def lora_dims(max_dim: int = 12):
    """(d_in, d_out, r) with 1 <= r <= min(d_in, d_out)."""
    from hypothesis import strategies as st

    @st.composite
    def draw(draw_):
        d_in = draw_(st.integers(1, max_dim))
        d_out = draw_(st.integers(1, max_dim))
        r = draw_(st.integers(1, min(d_in, d_out)))
        return d_in, d_out, r
    return draw()
