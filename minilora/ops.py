"""Basic primitives: each op's forward and its VJP side by side.

Each forward receives arrays (or Python scalars for constants) and returns ``(out, vjp)``;
``vjp(g, needs)`` returns one cotangent per input, computing only those in ``needs``.
Binary ops broadcast; their VJPs sum the broadcast dimensions back out (``unbroadcast``).
Fused kernels with hand-written VJPs live in kernels.py.
"""
from __future__ import annotations

import operator

from . import backend
from .tensor import Tensor, primitive


def unbroadcast(xp, g, shape):
    """Sum g over the dimensions that broadcasting added to or stretched in ``shape``."""
    if tuple(g.shape) == tuple(shape):
        return g
    while g.ndim > len(shape):
        g = xp.sum(g, axis=0)
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def _shape(x):
    return tuple(x.shape) if hasattr(x, "shape") else ()


def _xp(*arrays):
    return backend.namespace_of(*arrays)


# ------------------------------------------------------------------ elementwise, binary

@primitive()
def add(a, b):
    """y = a + b. VJP: ga = g, gb = g (broadcast dims summed)."""
    xp, sa, sb = _xp(a, b), _shape(a), _shape(b)  # the VJP keeps shapes, not the inputs

    def vjp(g, needs):
        return (unbroadcast(xp, g, sa) if needs[0] else None,
                unbroadcast(xp, g, sb) if needs[1] else None)
    return a + b, vjp


@primitive()
def sub(a, b):
    """y = a - b. VJP: ga = g, gb = -g."""
    xp, sa, sb = _xp(a, b), _shape(a), _shape(b)  # the VJP keeps shapes, not the inputs

    def vjp(g, needs):
        return (unbroadcast(xp, g, sa) if needs[0] else None,
                unbroadcast(xp, -g, sb) if needs[1] else None)
    return a - b, vjp


@primitive()
def mul(a, b):
    """y = a * b. VJP: ga = g * b, gb = g * a."""
    xp = _xp(a, b)

    def vjp(g, needs):
        return (unbroadcast(xp, g * b, _shape(a)) if needs[0] else None,
                unbroadcast(xp, g * a, _shape(b)) if needs[1] else None)
    return a * b, vjp


@primitive()
def div(a, b):
    """y = a / b. VJP: ga = g / b, gb = -g * a / b^2."""
    xp = _xp(a, b)

    def vjp(g, needs):
        return (unbroadcast(xp, g / b, _shape(a)) if needs[0] else None,
                unbroadcast(xp, -g * a / (b * b), _shape(b)) if needs[1] else None)
    return a / b, vjp


@primitive()
def maximum(a, b):
    """y = max(a, b) elementwise. VJP: g goes to the larger input (to a on ties)."""
    xp = _xp(a, b)
    a_wins = a >= b

    def vjp(g, needs):
        zero = xp.zeros_like(g)
        return (unbroadcast(xp, xp.where(a_wins, g, zero), _shape(a)) if needs[0] else None,
                unbroadcast(xp, xp.where(a_wins, zero, g), _shape(b)) if needs[1] else None)
    return xp.maximum(a, b), vjp


@primitive()
def where(condition, a, b):
    """y = a where condition else b. VJP: ga = g * condition, gb = g * (not condition)."""
    xp = _xp(condition, a, b)

    def vjp(g, needs):
        zero = xp.zeros_like(g)
        return (None,
                unbroadcast(xp, xp.where(condition, g, zero), _shape(a)) if needs[1] else None,
                unbroadcast(xp, xp.where(condition, zero, g), _shape(b)) if needs[2] else None)
    return xp.where(condition, a, b), vjp


# ------------------------------------------------------------------ elementwise, unary

@primitive()
def neg(a):
    """y = -a. VJP: ga = -g."""
    return -a, lambda g, needs: (-g,)


@primitive()
def pow(a, exponent):
    """y = a ** p for a constant p. VJP: ga = g * p * a ** (p - 1)."""
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a Python number, not a Tensor")
    return a ** exponent, lambda g, needs: (g * exponent * a ** (exponent - 1),)


@primitive()
def exp(a):
    """y = exp(a). VJP: ga = g * y."""
    y = _xp(a).exp(a)
    return y, lambda g, needs: (g * y,)


@primitive()
def log(a):
    """y = log(a). VJP: ga = g / a."""
    return _xp(a).log(a), lambda g, needs: (g / a,)


@primitive()
def sqrt(a):
    """y = sqrt(a). VJP: ga = g / (2 y)."""
    y = _xp(a).sqrt(a)
    return y, lambda g, needs: (g / (2 * y),)


@primitive()
def tanh(a):
    """y = tanh(a). VJP: ga = g * (1 - y^2)."""
    y = _xp(a).tanh(a)
    return y, lambda g, needs: (g * (1 - y * y),)


@primitive()
def relu(a):
    """y = max(a, 0). VJP: ga = g * [a > 0]."""
    xp = _xp(a)
    positive = a > 0
    return xp.where(positive, a, xp.zeros_like(a)), lambda g, needs: (xp.where(positive, g, xp.zeros_like(g)),)


# ------------------------------------------------------------------ reductions

def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _expand_to(xp, g, shape, axes, keepdims):
    """Broadcast a reduced cotangent back to ``shape`` (re-inserting reduced axes)."""
    if not keepdims:
        kept = [1 if i in axes else s for i, s in enumerate(shape)]
        g = xp.reshape(g, tuple(kept))
    return xp.broadcast_to(g, tuple(shape))


@primitive()
def sum(a, axis=None, keepdims=False):
    """y = sum of a over ``axis``. VJP: ga = g broadcast back over the summed axes."""
    xp = _xp(a)
    axes, shape = _normalize_axes(axis, a.ndim), tuple(a.shape)  # the VJP keeps the shape, not a
    return (xp.sum(a, axis=axes, keepdims=keepdims),
            lambda g, needs: (_expand_to(xp, g, shape, axes, keepdims),))


@primitive()
def mean(a, axis=None, keepdims=False):
    """y = mean of a over ``axis`` (n elements each). VJP: ga = g / n broadcast back."""
    xp = _xp(a)
    axes, shape = _normalize_axes(axis, a.ndim), tuple(a.shape)  # the VJP keeps the shape, not a
    n = 1
    for i in axes:
        n *= shape[i]
    return (xp.mean(a, axis=axes, keepdims=keepdims),
            lambda g, needs: (_expand_to(xp, g / n, shape, axes, keepdims),))


@primitive()
def max(a, axis=None, keepdims=False):
    """y = max of a over ``axis``. VJP: g shared equally among the positions that attain the max."""
    xp = _xp(a)
    axes = _normalize_axes(axis, a.ndim)
    y_keep = xp.max(a, axis=axes, keepdims=True)

    def vjp(g, needs):
        winners = xp.astype(a == y_keep, a.dtype)
        count = xp.sum(winners, axis=axes, keepdims=True)
        return (_expand_to(xp, g, a.shape, axes, keepdims) * winners / count,)
    y = y_keep if keepdims else xp.reshape(y_keep, tuple(s for i, s in enumerate(a.shape) if i not in axes))
    return y, vjp


# ------------------------------------------------------------------ shape

@primitive()
def reshape(a, shape):
    """y = a viewed with ``shape`` (same C-order elements). VJP: ga = g reshaped to a.shape."""
    xp = _xp(a)
    try:
        y = xp.reshape(a, tuple(shape))
    except ValueError as exc:
        raise ValueError(f"reshape: cannot view shape {tuple(a.shape)} as {tuple(shape)}") from exc
    before = tuple(a.shape)
    return y, lambda g, needs: (xp.reshape(g, before),)


@primitive()
def permute(a, axes):
    """y = a with dimensions reordered by ``axes``. VJP: ga = g permuted by the inverse order."""
    xp = _xp(a)
    axes = tuple(ax % a.ndim for ax in axes)
    if sorted(axes) != list(range(a.ndim)):
        raise ValueError(f"permute: axes {axes} is not a permutation of {a.ndim} dimensions")
    inverse = tuple(axes.index(i) for i in range(a.ndim))
    return xp.permute_dims(a, axes), lambda g, needs: (xp.permute_dims(g, inverse),)


@primitive()
def broadcast_to(a, shape):
    """y = a broadcast to ``shape``. VJP: ga = g summed over the broadcast dimensions."""
    xp = _xp(a)
    before = tuple(a.shape)
    return xp.broadcast_to(a, tuple(shape)), lambda g, needs: (unbroadcast(xp, g, before),)


def _basic_key(key, ndim):
    """``key`` as a tuple that names every axis (the Array API wants a trailing ``...``), or ValueError."""
    key = key if isinstance(key, tuple) else (key,)
    normalized = []
    for k in key:
        if k is None or k is Ellipsis or isinstance(k, slice):
            normalized.append(k)
            continue
        try:  # Python and NumPy integers (anything with __index__ that is not a bool or a real array)
            if isinstance(k, bool) or getattr(k, "ndim", 0) != 0:
                raise TypeError
            normalized.append(operator.index(k))
        except TypeError:
            raise ValueError(f"getitem: only basic indexing (ints, slices, None, ...) is differentiable here, "
                             f"got {type(k).__name__}; use ops.embedding or xp.take for gathers") from None
    key = tuple(normalized)
    if Ellipsis not in key and len([k for k in key if k is not None]) < ndim:  # (sum is shadowed here)
        key = key + (Ellipsis,)
    return key


@primitive()
def getitem(a, key):
    """y = a[key] for basic indexing (ints, slices, None, Ellipsis). VJP: ga = zeros with ga[key] = g.

    ``None`` (new axes) is dropped for the scatter: g is reshaped to a[key without None].
    """
    xp = _xp(a)
    key = _basic_key(key, a.ndim)
    plain = tuple(k for k in key if k is not None)

    def vjp(g, needs):
        ga = xp.zeros(a.shape, dtype=g.dtype)
        ga[plain] = xp.reshape(g, tuple(a[plain].shape))
        return (ga,)
    return a[key], vjp


@primitive()
def concat(*arrays, axis=0):
    """y = the arrays joined along ``axis``. VJP: each input gets its slice of g."""
    xp = _xp(*arrays)
    sizes = [x.shape[axis] for x in arrays]

    def vjp(g, needs):
        grads, start = [], 0
        for size, needed in zip(sizes, needs):
            index = [slice(None)] * g.ndim
            index[axis] = slice(start, start + size)
            grads.append(g[tuple(index)] if needed else None)
            start += size
        return tuple(grads)
    return xp.concat(arrays, axis=axis), vjp


@primitive()
def embedding(weight, indices):
    """y[..., :] = weight[indices[...], :] (gather rows). weight (V, C), indices int (...,) -> (..., C).

    VJP: gweight = scatter_add over rows (repeated indices accumulate); indices get no gradient.
    """
    xp = _xp(weight, indices)
    if not xp.isdtype(indices.dtype, "integral"):
        raise ValueError(f"embedding: indices must be integers, got dtype {indices.dtype}")
    flat = xp.reshape(indices, (-1,))
    if flat.shape[0] and bool(xp.any((flat < 0) | (flat >= weight.shape[0]))):
        # negative ids would wrap in take (and padding ids like -100 would read real rows)
        raise ValueError(f"embedding: indices must lie in [0, {weight.shape[0]}), got min {int(xp.min(flat))} "
                         f"and max {int(xp.max(flat))}")
    rows = backend.take_rows(xp, weight, flat)  # (N, C)

    def vjp(g, needs):
        g2 = xp.reshape(g, (-1, weight.shape[1]))
        return (backend.scatter_add(xp, weight.shape[0], flat, g2), None)
    return xp.reshape(rows, tuple(indices.shape) + (weight.shape[1],)), vjp


# ------------------------------------------------------------------ linear algebra

@primitive()
def matmul(a, b):
    """y = a @ b with batch broadcasting; 1-D operands are not supported (reshape first).

    a (..., n, k), b (..., k, m) -> (..., n, m).
    VJP: ga = g @ b^T, gb = a^T @ g (batched dims summed by unbroadcast).
    """
    xp = _xp(a, b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit "
                         "(need (..., n, k) @ (..., k, m), both at least 2-D)")

    def vjp(g, needs):
        return (unbroadcast(xp, xp.matmul(g, b.mT), a.shape) if needs[0] else None,
                unbroadcast(xp, xp.matmul(a.mT, g), b.shape) if needs[1] else None)
    return xp.matmul(a, b), vjp


def stack(tensors, axis=0):
    """Stack tensors along a new axis (reshape each, then concat)."""
    expanded = []
    for t in tensors:
        shape = list(t.shape)
        shape.insert(axis % (len(shape) + 1), 1)
        expanded.append(reshape(t, shape=tuple(shape)))
    return concat(*expanded, axis=axis)
