"""Drawn cases for every registered primitive, each with a plain NumPy float64 reference.

A builder ``build(rng, dtype) -> Case`` draws shapes and values from a seeded NumPy generator (no
hypothesis needed). A ``Case`` holds

    inputs      host float64 arrays, the differentiated inputs (the runner rounds them to ``dtype``)
    call        call(op, xp, dtype) -> fn(*Tensors) -> Tensor, the op applied with its constants
                (masks, ids, rope tables) placed in namespace xp
    reference   reference(*inputs) -> host float64 output, written with NumPy alone

``op`` is the primitive's Tensor-level function, or for a fused kernel its ``composite_*``, so
one case serves the primitive check and the fused-vs-composite check. Shapes keep size-1 and
broadcast dimensions common, as the hypothesis strategies in minilora.testing do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import backend


@dataclass
class Case:
    inputs: list
    call: Callable
    reference: Callable


# ------------------------------------------------------------------ drawing
def draw_shape(rng, min_dims=1, max_dims=3, max_side=4) -> tuple:
    n = int(rng.integers(min_dims, max_dims + 1))
    return tuple(1 if rng.random() < 0.3 else int(rng.integers(1, max_side + 1)) for _ in range(n))


def broadcastable(rng, shape) -> tuple:
    """A shape that broadcasts to ``shape``: some leading axes dropped, some sides set to 1."""
    drop = int(rng.integers(0, len(shape) + 1))
    return tuple(1 if rng.random() < 0.3 else s for s in shape[drop:])


def values(rng, shape, low=-2.0, high=2.0, away_from_zero=False):
    """Uniform float64 values; away_from_zero: |x| in [0.5, 2] (keeps kinks and poles out of reach)."""
    if away_from_zero:
        return np.sign(rng.uniform(-1, 1, size=shape)) * rng.uniform(0.5, 2.0, size=shape)
    return rng.uniform(low, high, size=shape)


def binary_shapes(rng):
    a = draw_shape(rng)
    b = broadcastable(rng, a)
    return (a, b) if rng.random() < 0.5 else (b, a)


def put(host, xp, dtype=None):
    """A host constant in namespace xp (float constants in ``dtype``)."""
    host = np.asarray(host)
    if dtype is not None and host.dtype.kind == "f":
        host = host.astype(dtype)
    return backend.from_numpy(host, xp)


# ------------------------------------------------------------------ builders
def binary(reference, **kw):
    def build(rng, dtype):
        sa, sb = binary_shapes(rng)
        return Case([values(rng, sa), values(rng, sb, **kw)], lambda op, xp, dt: op, reference)
    return build


def unary(reference, **kw):
    def build(rng, dtype):
        return Case([values(rng, draw_shape(rng), **kw)], lambda op, xp, dt: op, reference)
    return build


def case_where(rng, dtype):
    sa, sb = binary_shapes(rng)
    cond = rng.uniform(size=broadcastable(rng, np.broadcast_shapes(sa, sb))) > 0.5
    return Case([values(rng, sa), values(rng, sb)],
                lambda op, xp, dt: (lambda a, b: op(put(cond, xp), a, b)),
                lambda a, b: np.where(cond, a, b))


def case_pow(rng, dtype):
    p = [2, 3, 1, 0.5, -1.5][int(rng.integers(5))]
    return Case([values(rng, draw_shape(rng), low=0.5, high=2.0)],
                lambda op, xp, dt: (lambda a: op(a, exponent=p)), lambda a: a ** p)


def draw_axis(rng, ndim):
    kind = int(rng.integers(3))
    if kind == 0:
        return None
    if kind == 1:
        return int(rng.integers(-ndim, ndim))
    k = int(rng.integers(1, ndim + 1))
    return tuple(int(a) for a in rng.choice(ndim, size=k, replace=False))


def reduction(reference):
    def build(rng, dtype):
        shape = draw_shape(rng)
        axis, keepdims = draw_axis(rng, len(shape)), bool(rng.random() < 0.5)
        return Case([values(rng, shape)], lambda op, xp, dt: (lambda a: op(a, axis=axis, keepdims=keepdims)),
                    lambda a: reference(a, axis=axis, keepdims=keepdims))
    return build


def case_reshape(rng, dtype):
    shape = draw_shape(rng)
    n = int(np.prod(shape))
    target = [(n,), (1, n), tuple(reversed(shape)), (n, 1)][int(rng.integers(4))]
    return Case([values(rng, shape)], lambda op, xp, dt: (lambda a: op(a, shape=target)),
                lambda a: np.reshape(a, target))


def case_permute(rng, dtype):
    shape = draw_shape(rng, max_dims=4, max_side=3)
    axes = tuple(int(a) for a in rng.permutation(len(shape)))
    return Case([values(rng, shape)], lambda op, xp, dt: (lambda a: op(a, axes=axes)),
                lambda a: np.transpose(a, axes))


def case_broadcast_to(rng, dtype):
    target = draw_shape(rng)
    return Case([values(rng, broadcastable(rng, target))], lambda op, xp, dt: (lambda a: op(a, shape=target)),
                lambda a: np.broadcast_to(a, target))


def _index(rng, side):
    start = int(rng.integers(-side, side))
    return [start, slice(None), slice(start, None), slice(None, None, -1), slice(0, side, 2)][int(rng.integers(5))]


def case_getitem(rng, dtype):
    shape = draw_shape(rng)
    key = [_index(rng, side) for side in shape[:int(rng.integers(1, len(shape) + 1))]]
    if rng.random() < 0.5:
        key.insert(int(rng.integers(0, len(key) + 1)), None)
    if rng.random() < 0.5:
        key.append(Ellipsis)
    key = tuple(key)
    return Case([values(rng, shape)], lambda op, xp, dt: (lambda a: op(a, key=key)), lambda a: a[key])


def case_concat(rng, dtype):
    shape = list(draw_shape(rng, max_side=3))
    axis = int(rng.integers(-len(shape), len(shape)))
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        shape[axis] = int(rng.integers(1, 4))
        parts.append(values(rng, tuple(shape)))
    return Case(parts, lambda op, xp, dt: (lambda *ts: op(*ts, axis=axis)),
                lambda *arrays: np.concatenate(arrays, axis=axis))


def case_embedding(rng, dtype):
    v, c = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    ids = rng.integers(0, v, draw_shape(rng, max_dims=2, max_side=6))
    return Case([values(rng, (v, c))], lambda op, xp, dt: (lambda w: op(w, put(ids, xp))), lambda w: w[ids])


def case_matmul(rng, dtype):
    batch = draw_shape(rng, min_dims=0, max_dims=2, max_side=3)
    other = broadcastable(rng, batch)
    n, k, m = (int(rng.integers(1, 5)) for _ in range(3))
    a, b = batch + (n, k), other + (k, m)
    if rng.random() < 0.5:
        a, b = other + (n, k), batch + (k, m)
    return Case([values(rng, a), values(rng, b)], lambda op, xp, dt: op, np.matmul)


def case_linear(rng, dtype):
    lead = draw_shape(rng, min_dims=0, max_dims=2, max_side=3)
    d_in, d_out = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    inputs = [values(rng, lead + (d_in,)), values(rng, (d_out, d_in))]
    if rng.random() < 0.5:
        inputs.append(values(rng, (d_out,)))
    return Case(inputs, lambda op, xp, dt: op, lambda x, w, b=0.0: x @ w.T + b)


def _softmax(x, axis):
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def _log_softmax(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def along_axis(reference):
    def build(rng, dtype):
        shape = draw_shape(rng)
        axis = int(rng.integers(-len(shape), len(shape)))
        return Case([values(rng, shape)], lambda op, xp, dt: (lambda a: op(a, axis=axis)),
                    lambda a: reference(a, axis))
    return build


def case_cross_entropy(rng, dtype):
    n, v = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    targets = rng.integers(0, v, n)
    targets[rng.uniform(size=n) < 0.3] = -100

    def reference(z):
        valid = targets != -100
        nll = -_log_softmax(z, 1)[np.arange(n), np.where(valid, targets, 0)]
        return np.asarray(np.sum(nll * valid) / max(int(valid.sum()), 1))
    return Case([values(rng, (n, v))], lambda op, xp, dt: (lambda z: op(z, put(targets, xp))), reference)


def _normalized(rng):
    c = int(rng.integers(2, 6))
    return draw_shape(rng, min_dims=0, max_dims=2, max_side=3) + (c,), c


def case_layer_norm(rng, dtype):
    shape, c = _normalized(rng)
    # rows spread over [-2, 2] plus noise: a row of nearly equal values is ill-conditioned in float32
    # (the centered values cancel), which would measure the draw rather than the kernel
    spread = np.linspace(-2.0, 2.0, c)[rng.permutation(c)]
    inputs = [values(rng, shape, low=-0.5, high=0.5) + spread, values(rng, (c,))]
    if rng.random() < 0.5:
        inputs.append(values(rng, (c,)))

    def reference(x, w, b=0.0):
        centered = x - x.mean(axis=-1, keepdims=True)
        return centered / np.sqrt((centered ** 2).mean(axis=-1, keepdims=True) + 1e-5) * w + b
    return Case(inputs, lambda op, xp, dt: (lambda x, w, b=None: op(x, w, b, eps=1e-5)), reference)


def case_rms_norm(rng, dtype):
    shape, c = _normalized(rng)
    return Case([values(rng, shape), values(rng, (c,))], lambda op, xp, dt: (lambda x, w: op(x, w, eps=1e-6)),
                lambda x, w: x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * w)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x / (1 + np.exp(-x))


def case_swiglu(rng, dtype):
    shape = draw_shape(rng)
    return Case([values(rng, shape), values(rng, shape)], lambda op, xp, dt: op, lambda g, u: _silu(g) * u)


def case_dropout(rng, dtype):
    shape = draw_shape(rng)
    p = [0.1, 0.5][int(rng.integers(2))]
    keep = rng.uniform(size=shape) >= p
    return Case([values(rng, shape)], lambda op, xp, dt: (lambda x: op(x, put(keep, xp), p=p)),
                lambda x: x * keep / (1 - p))


def _rot(x, interleaved):
    if interleaved:
        pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
        return np.stack((-pairs[..., 1], pairs[..., 0]), axis=-1).reshape(x.shape)
    half = x.shape[-1] // 2
    return np.concatenate((-x[..., half:], x[..., :half]), axis=-1)


def case_rope(rng, dtype):
    b, nh, t = (int(rng.integers(1, 4)) for _ in range(3))
    hs = 2 * int(rng.integers(1, 4))
    interleaved = bool(rng.random() < 0.5)
    angles = np.arange(t)[:, None] * 100.0 ** (-np.arange(0, hs, 2) / hs)[None, :]  # (T, hs/2)
    angles = np.repeat(angles, 2, axis=1) if interleaved else np.concatenate((angles, angles), axis=1)
    cos, sin = (f(angles).astype(dtype).astype(np.float64) for f in (np.cos, np.sin))  # rounded like x
    return Case([values(rng, (b, nh, t, hs))],
                lambda op, xp, dt: (lambda x: op(x, put(cos, xp, dt), put(sin, xp, dt), interleaved=interleaved)),
                lambda x: x * cos + _rot(x, interleaved) * sin)


def attention_reference(q, k, v, causal=True):
    """softmax(q k^T / sqrt(hs) + mask) v with each kv head repeated for its group of query heads."""
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)  # (B, nh, S, hs)
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    if causal:
        t, s = q.shape[2], k.shape[2]
        scores = np.where(np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t), scores, -np.inf)
    return _softmax(scores, -1) @ v


def case_attention(rng, dtype):
    b, nkv, groups, hs = (int(rng.integers(1, 3)) for _ in range(4))
    causal = bool(rng.random() < 0.5)
    s_len = int(rng.integers(1, 5))
    t = int(rng.integers(1, s_len + 1)) if causal else int(rng.integers(1, 5))
    inputs = [values(rng, (b, nkv * groups, t, hs)), values(rng, (b, nkv, s_len, hs)), values(rng, (b, nkv, s_len, hs))]
    return Case(inputs, lambda op, xp, dt: (lambda q, k, v: op(q, k, v, causal=causal)),
                lambda q, k, v: attention_reference(q, k, v, causal))


CASES = {
    "add": binary(np.add), "sub": binary(np.subtract), "mul": binary(np.multiply),
    "div": binary(np.divide, away_from_zero=True), "maximum": binary(np.maximum), "where": case_where,
    "neg": unary(np.negative), "pow": case_pow, "exp": unary(np.exp), "log": unary(np.log, low=0.5),
    "sqrt": unary(np.sqrt, low=0.5), "tanh": unary(np.tanh),
    "relu": unary(lambda a: np.maximum(a, 0.0), away_from_zero=True),
    "sum": reduction(np.sum), "mean": reduction(np.mean), "max": reduction(np.max),
    "reshape": case_reshape, "permute": case_permute, "broadcast_to": case_broadcast_to,
    "getitem": case_getitem, "concat": case_concat, "embedding": case_embedding, "matmul": case_matmul,
    "linear": case_linear, "softmax": along_axis(_softmax), "log_softmax": along_axis(_log_softmax),
    "cross_entropy": case_cross_entropy, "layer_norm": case_layer_norm, "rms_norm": case_rms_norm,
    "gelu": unary(_gelu), "silu": unary(_silu), "swiglu": case_swiglu, "dropout": case_dropout,
    "rope": case_rope, "attention": case_attention,
}
