"""Every registered primitive passes a float64 gradient check over drawn shapes, on every backend.

CASES maps a primitive's name to a builder ``case(data, xp) -> (fn, inputs)``; the meta-test fails
when a registered primitive (in any minilora module) has no builder here.
"""
from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilora
from minilora import backend, functional as F, kernels, ops
from minilora.tensor import PRIMITIVES, Tensor
from minilora.testing import broadcastable_shapes, gradcheck, shapes


def leaf(data, shape, low=-2.0, high=2.0, requires_grad=True, away_from_zero=False, salt=0):
    """A float64 Tensor of ``shape`` with values from a drawn seed (``salt`` separates equal seeds)."""
    rng = np.random.default_rng([data.draw(st.integers(0, 2**32 - 1), label="seed"), salt])
    host = rng.uniform(low, high, size=shape)
    if away_from_zero:  # |x| in [0.5, 2]: keeps log/sqrt/div/relu/pow away from their kinks
        host = np.sign(rng.uniform(-1, 1, size=shape)) * rng.uniform(0.5, 2.0, size=shape)
    return Tensor(backend.from_numpy(host.astype(np.float64), backend.default_namespace()),
                  requires_grad=requires_grad)


def host_array(array, xp):
    return backend.from_numpy(np.asarray(array), xp)


def binary_shapes(data):
    """Two broadcast-compatible shapes (either may be the larger), size-1 sides common."""
    a = data.draw(shapes(max_dims=3, max_side=4), label="shape")
    b = data.draw(broadcastable_shapes(a), label="other")
    return (a, b) if data.draw(st.booleans(), label="swap") else (b, a)


def binary(fn, **leaf_options):
    def case(data, xp):
        sa, sb = binary_shapes(data)
        return fn, [leaf(data, sa), leaf(data, sb, **leaf_options)]
    return case


def unary(fn, **leaf_options):
    def case(data, xp):
        return fn, [leaf(data, data.draw(shapes(max_dims=3, max_side=4)), **leaf_options)]
    return case


def axis_for(data, ndim):
    return data.draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1),
                               st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                               .map(tuple)), label="axis")


def reduction(fn):
    def case(data, xp):
        shape = data.draw(shapes(max_dims=3, max_side=4))
        axis, keepdims = axis_for(data, len(shape)), data.draw(st.booleans())
        return (lambda a: fn(a, axis=axis, keepdims=keepdims)), [leaf(data, shape)]
    return case


def case_where(data, xp):
    sa, sb = binary_shapes(data)
    cond_shape = data.draw(broadcastable_shapes(sa))
    cond = host_array(np.random.default_rng(data.draw(st.integers(0, 99))).uniform(size=cond_shape) > 0.5, xp)
    return (lambda a, b: ops.where(cond, a, b)), [leaf(data, sa), leaf(data, sb)]


def case_pow(data, xp):
    p = data.draw(st.sampled_from([2, 3, 1, 0.5, -1.5]), label="exponent")
    shape = data.draw(shapes(max_dims=3, max_side=4))
    return (lambda a: ops.pow(a, exponent=p)), [leaf(data, shape, low=0.5, high=2.0)]


def case_reshape(data, xp):
    shape = data.draw(shapes(max_dims=3, max_side=4))
    n = int(np.prod(shape))
    target = data.draw(st.sampled_from([(n,), (1, n), tuple(reversed(shape)), (n, 1)]))
    return (lambda a: ops.reshape(a, shape=target)), [leaf(data, shape)]


def case_permute(data, xp):
    shape = data.draw(shapes(max_dims=4, max_side=3))
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    return (lambda a: ops.permute(a, axes=axes)), [leaf(data, shape)]


def case_broadcast_to(data, xp):
    target = data.draw(shapes(max_dims=3, max_side=4))
    small = data.draw(broadcastable_shapes(target))
    return (lambda a: ops.broadcast_to(a, shape=target)), [leaf(data, small)]


def index_for(data, side):
    start = data.draw(st.integers(-side, side - 1))
    return data.draw(st.sampled_from([start, slice(None), slice(start, None), slice(None, None, -1),
                                      slice(0, side, 2)]))


def case_getitem(data, xp):
    shape = data.draw(shapes(max_dims=3, max_side=4))
    used = data.draw(st.integers(1, len(shape)))
    key = [index_for(data, side) for side in shape[:used]]
    if data.draw(st.booleans()):
        key.insert(data.draw(st.integers(0, len(key))), None)
    if data.draw(st.booleans()):
        key.append(Ellipsis)
    key = tuple(key)
    return (lambda a: ops.getitem(a, key=key)), [leaf(data, shape)]


def case_concat(data, xp):
    shape = list(data.draw(shapes(max_dims=3, max_side=3)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = []
    for _ in range(data.draw(st.integers(1, 3))):
        shape[axis] = data.draw(st.integers(1, 3))
        parts.append(leaf(data, tuple(shape)))
    return (lambda *ts: ops.concat(*ts, axis=axis)), parts


def case_embedding(data, xp):
    v, c = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    ids_shape = data.draw(shapes(max_dims=2, max_side=6))
    ids = host_array(np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, v, ids_shape), xp)
    return (lambda w: ops.embedding(w, ids)), [leaf(data, (v, c))]


def case_matmul(data, xp):
    batch = data.draw(shapes(min_dims=0, max_dims=2, max_side=3))
    other_batch = data.draw(broadcastable_shapes(batch))
    n, k, m = (data.draw(st.integers(1, 4)) for _ in range(3))
    a, b = batch + (n, k), other_batch + (k, m)
    if data.draw(st.booleans()):
        a, b = other_batch + (n, k), batch + (k, m)
    return ops.matmul, [leaf(data, a), leaf(data, b)]


def case_linear(data, xp):
    lead = data.draw(shapes(min_dims=0, max_dims=2, max_side=3))
    d_in, d_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    inputs = [leaf(data, lead + (d_in,)), leaf(data, (d_out, d_in))]
    if data.draw(st.booleans()):
        inputs.append(leaf(data, (d_out,)))
    return kernels.linear, inputs


def along_axis(fn):
    def case(data, xp):
        shape = data.draw(shapes(max_dims=3, max_side=4))
        axis = data.draw(st.integers(-len(shape), len(shape) - 1))
        return (lambda a: fn(a, axis=axis)), [leaf(data, shape)]
    return case


def case_cross_entropy(data, xp):
    n, v = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    targets = rng.integers(0, v, n)
    targets[rng.uniform(size=n) < 0.3] = -100
    t = host_array(targets, xp)
    return (lambda z: kernels.cross_entropy(z, t)), [leaf(data, (n, v))]


def normalized(data):
    lead = data.draw(shapes(min_dims=0, max_dims=2, max_side=3))
    c = data.draw(st.integers(2, 5))
    return lead + (c,), c


def case_layer_norm(data, xp):
    shape, c = normalized(data)
    inputs = [leaf(data, shape), leaf(data, (c,))]
    if data.draw(st.booleans(), label="bias"):
        inputs.append(leaf(data, (c,)))
    return (lambda x, w, b=None: kernels.layer_norm(x, w, b, eps=1e-5)), inputs


def case_rms_norm(data, xp):
    shape, c = normalized(data)
    return (lambda x, w: kernels.rms_norm(x, w, eps=1e-6)), [leaf(data, shape), leaf(data, (c,))]


def case_swiglu(data, xp):
    shape = data.draw(shapes(max_dims=3, max_side=4))
    return kernels.swiglu, [leaf(data, shape), leaf(data, shape)]


def case_dropout(data, xp):
    shape = data.draw(shapes(max_dims=3, max_side=4))
    p = data.draw(st.sampled_from([0.1, 0.5]))
    keep = host_array(np.random.default_rng(data.draw(st.integers(0, 99))).uniform(size=shape) >= p, xp)
    return (lambda x: kernels.dropout(x, keep, p=p)), [leaf(data, shape)]


def case_rope(data, xp):
    b, nh, t = (data.draw(st.integers(1, 3)) for _ in range(3))
    hs = 2 * data.draw(st.integers(1, 3))
    interleaved = data.draw(st.booleans())
    cos, sin = F.rope_tables(xp, xp.arange(t), hs, base=100.0, interleaved=interleaved, dtype=xp.float64)
    return (lambda x: kernels.rope(x, cos, sin, interleaved=interleaved)), [leaf(data, (b, nh, t, hs))]


def case_attention(data, xp):
    b, nkv, groups, hs = (data.draw(st.integers(1, 2)) for _ in range(4))
    causal = data.draw(st.booleans())
    s_len = data.draw(st.integers(1, 4))
    t = data.draw(st.integers(1, s_len)) if causal else data.draw(st.integers(1, 4))
    q, k, v = leaf(data, (b, nkv * groups, t, hs)), leaf(data, (b, nkv, s_len, hs)), leaf(data, (b, nkv, s_len, hs))
    return (lambda q_, k_, v_: kernels.attention(q_, k_, v_, causal=causal)), [q, k, v]


CASES = {
    "add": binary(ops.add), "sub": binary(ops.sub), "mul": binary(ops.mul),
    "div": binary(ops.div, away_from_zero=True), "maximum": binary(ops.maximum, salt=1), "where": case_where,
    "neg": unary(ops.neg), "pow": case_pow, "exp": unary(ops.exp), "log": unary(ops.log, low=0.5),
    "sqrt": unary(ops.sqrt, low=0.5), "tanh": unary(ops.tanh), "relu": unary(ops.relu, away_from_zero=True),
    "sum": reduction(ops.sum), "mean": reduction(ops.mean), "max": reduction(ops.max),
    "reshape": case_reshape, "permute": case_permute, "broadcast_to": case_broadcast_to,
    "getitem": case_getitem, "concat": case_concat, "embedding": case_embedding, "matmul": case_matmul,
    "linear": case_linear, "softmax": along_axis(kernels.softmax), "log_softmax": along_axis(kernels.log_softmax),
    "cross_entropy": case_cross_entropy, "layer_norm": case_layer_norm, "rms_norm": case_rms_norm,
    "gelu": unary(kernels.gelu), "silu": unary(kernels.silu), "swiglu": case_swiglu, "dropout": case_dropout,
    "rope": case_rope, "attention": case_attention,
}


def _import_all_minilora_modules():
    """Import every minilora module so that primitives registered outside the core are seen too."""
    for info in pkgutil.walk_packages(minilora.__path__, "minilora."):
        if info.name.endswith("__main__"):  # runs the command line when imported
            continue
        try:
            importlib.import_module(info.name)
        except (Exception, SystemExit):  # a module that fails to import registers nothing; its tests say so
            continue


def test_every_registered_primitive_has_a_gradcheck_case():
    _import_all_minilora_modules()
    missing = sorted(set(PRIMITIVES) - set(CASES))
    assert not missing, f"primitives without a gradcheck case in tests/core/test_primitives.py: {missing}"


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_gradcheck_primitive(xp, name, data):
    fn, inputs = CASES[name](data, xp)
    prim, calls = PRIMITIVES[name], []
    original = prim.forward

    def counting(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)
    object.__setattr__(prim, "forward", counting)  # the case must exercise the primitive it is named for
    try:
        gradcheck(fn, *inputs)
    finally:
        object.__setattr__(prim, "forward", original)
    assert calls, f"the gradcheck case for {name!r} never calls that primitive"
