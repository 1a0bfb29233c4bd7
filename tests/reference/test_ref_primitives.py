"""Every primitive in minilora.tensor.PRIMITIVES against torch: forward value and gradient.

For each registered primitive, CASES holds (input builder, minilora call, torch call). A test draws
shapes and options with hypothesis, runs both frameworks on the same host arrays, then back-propagates
the same random cotangent u through both and compares every input gradient:

    forward:   |y_minilora - y_torch| <= rtol * (|y_torch| + max(max|y_torch|, 1))   elementwise
    gradient:  the same for u^T J, per differentiable input

with rtol 1e-10 in float64 and 1e-5 in float32. The oracle is torch in float64 (from the same,
float32-representable inputs and cotangent): torch in float32 carries rounding errors of its own (e.g.
layer_norm's weight gradient for C=1 is exactly 0, torch's float32 CPU kernel returns ~2e-5), so the
float32 rows measure minilora's float32 accuracy; where float32 cannot reach 1e-5 because the problem
is ill-conditioned, minilora may be off by at most twice torch's own float32 error (see
assert_matches). minilora runs on
every backend of the ``xp`` fixture. ``test_every_primitive_has_a_torch_case`` fails when a primitive
is registered (by any minilora module) without a case here or an explicit, reasoned exclusion.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import minilora
from minilora import backend, kernels, ops
from minilora.tensor import PRIMITIVES, Tensor
from minilora.testing import broadcastable_shapes, shapes

RTOL = {"float64": 1e-10, "float32": 1e-5}

# Primitives that may be registered without a torch case here, each with the reason.
EXCLUDED: dict[str, str] = {}


@dataclass
class Inputs:
    arrays: list  # host NumPy arrays, in the primitive's argument order
    grad: list  # which of them are differentiable (float inputs the VJP returns a cotangent for)
    options: dict = field(default_factory=dict)  # keyword options, passed to both calls


@dataclass(frozen=True)
class Case:
    build: Callable  # (draw, rng, dtype) -> Inputs
    minilora: Callable  # (*Tensors, **options) -> Tensor
    torch: Callable  # (*torch.Tensors, **options) -> torch.Tensor


def uniform(rng, shape, dtype, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


def away_from_zero(rng, shape, dtype):
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)).astype(dtype)


def pair_shapes(draw):
    """Two broadcast-compatible shapes, either one the larger."""
    big = draw(shapes(1, 4))
    small = draw(broadcastable_shapes(big))
    return (big, small) if draw(st.booleans()) else (small, big)


def axes(draw, ndim):
    """An axis option: None, one axis (maybe negative) or a tuple of distinct axes."""
    kind = draw(st.sampled_from(["none", "one", "tuple"]))
    if kind == "none":
        return None
    if kind == "one":
        return draw(st.integers(-ndim, ndim - 1))
    return tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)))


def torch_dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


# ------------------------------------------------------------------ input builders

def binary(make_b=uniform):
    def build(draw, rng, dtype):
        sa, sb = pair_shapes(draw)
        return Inputs([uniform(rng, sa, dtype), make_b(rng, sb, dtype)], [True, True])
    return build


def unary(low=-2.0, high=2.0):
    def build(draw, rng, dtype):
        return Inputs([uniform(rng, draw(shapes(1, 4)), dtype, low, high)], [True])
    return build


def build_where(draw, rng, dtype):
    sa, sb = pair_shapes(draw)
    cond_shape = draw(broadcastable_shapes(np.broadcast_shapes(sa, sb)))
    return Inputs([np.asarray(rng.random(cond_shape) < 0.5), uniform(rng, sa, dtype), uniform(rng, sb, dtype)],
                  [False, True, True])


def build_pow(draw, rng, dtype):
    exponent = draw(st.sampled_from([2, 3, -1, 0.5, -1.5, 1.7]))
    shape = draw(shapes(1, 4))
    base = uniform(rng, shape, dtype, 0.5, 2.0) if isinstance(exponent, float) else away_from_zero(rng, shape, dtype)
    return Inputs([base], [True], {"exponent": exponent})


def build_relu(draw, rng, dtype):
    shape = draw(shapes(1, 4))
    x = uniform(rng, shape, dtype)
    if draw(st.booleans()):  # exact zeros: both frameworks give the subgradient 0 there
        x = np.where(rng.random(shape) < 0.3, 0.0, x).astype(dtype)
    return Inputs([x], [True])


def build_reduce(allow_ties=False):
    def build(draw, rng, dtype):
        shape = draw(shapes(1, 4))
        x = uniform(rng, shape, dtype)
        if allow_ties and draw(st.booleans()):  # ties: the gradient is shared equally by the maxima
            x = rng.integers(-1, 2, size=shape).astype(dtype)
        return Inputs([x], [True], {"axis": axes(draw, len(shape)), "keepdims": draw(st.booleans())})
    return build


def build_reshape(draw, rng, dtype):
    shape = draw(shapes(1, 4))
    target = draw(st.sampled_from([tuple(reversed(shape)), (-1,), (1,) + shape, shape + (1,)]))
    return Inputs([uniform(rng, shape, dtype)], [True], {"shape": target})


def build_permute(draw, rng, dtype):
    shape = draw(shapes(1, 4))
    return Inputs([uniform(rng, shape, dtype)], [True], {"axes": tuple(draw(st.permutations(range(len(shape)))))})


def build_broadcast_to(draw, rng, dtype):
    target = draw(shapes(1, 4))
    return Inputs([uniform(rng, draw(broadcastable_shapes(target)), dtype)], [True], {"shape": target})


def build_getitem(draw, rng, dtype):
    shape = draw(shapes(1, 4))
    key = []
    for side in shape[:draw(st.integers(1, len(shape)))]:
        if draw(st.booleans()):
            key.append(draw(st.integers(-side, side - 1)))
        else:
            # in-range bounds only: the Array API leaves out-of-range slice bounds unspecified
            start = draw(st.one_of(st.none(), st.integers(-side, side)))
            stop = draw(st.one_of(st.none(), st.integers(-side, side)))
            key.append(slice(start, stop, draw(st.sampled_from([None, 1, 2]))))
    if draw(st.booleans()):
        key.insert(draw(st.integers(0, len(key))), None)
    return Inputs([uniform(rng, shape, dtype)], [True], {"key": tuple(key)})


def build_concat(draw, rng, dtype):
    shape = draw(shapes(1, 3))
    axis = draw(st.integers(0, len(shape) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    arrays = [uniform(rng, shape[:axis] + (n,) + shape[axis + 1:], dtype) for n in sizes]
    return Inputs(arrays, [True] * len(arrays), {"axis": axis})


def build_embedding(draw, rng, dtype):
    vocab, dim = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    ids = rng.integers(0, vocab, size=draw(shapes(1, 3)))  # repeated ids accumulate in the VJP
    return Inputs([uniform(rng, (vocab, dim), dtype), ids], [True, False])


def build_matmul(draw, rng, dtype):
    n, k, m = (draw(st.integers(1, 5)) for _ in range(3))
    batch_a = draw(shapes(0, 2, max_side=3))
    batch_b = draw(broadcastable_shapes(batch_a))
    if draw(st.booleans()):
        batch_a, batch_b = batch_b, batch_a
    return Inputs([uniform(rng, batch_a + (n, k), dtype), uniform(rng, batch_b + (k, m), dtype)], [True, True])


def build_linear(draw, rng, dtype):
    d_in, d_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    arrays = [uniform(rng, draw(shapes(0, 3)) + (d_in,), dtype), uniform(rng, (d_out, d_in), dtype)]
    if draw(st.booleans()):
        arrays.append(uniform(rng, (d_out,), dtype))
    return Inputs(arrays, [True] * len(arrays))


def build_softmax(draw, rng, dtype):
    shape = draw(shapes(1, 4))
    return Inputs([uniform(rng, shape, dtype, -5, 5)], [True], {"axis": draw(st.integers(-len(shape), len(shape) - 1))})


def build_cross_entropy(draw, rng, dtype):
    n, v = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    ignore_index = draw(st.sampled_from([-100, 0, -1]))
    targets = rng.integers(0, v, size=n)
    targets = np.where(rng.random(n) < 0.3, ignore_index, targets)
    targets[draw(st.integers(0, n - 1))] = draw(st.integers(0, v - 1))
    if targets[targets != ignore_index].size == 0:  # torch's mean over no target is nan; minilora's is 0
        ignore_index = -100
    return Inputs([uniform(rng, (n, v), dtype, -5, 5), targets], [True, False], {"ignore_index": ignore_index})


def build_norm(with_bias):
    def build(draw, rng, dtype):
        x = uniform(rng, draw(shapes(0, 3)) + (draw(st.integers(1, 8)),), dtype, -3, 3)
        params = [uniform(rng, x.shape[-1:], dtype) for _ in range(2 if with_bias and draw(st.booleans()) else 1)]
        return Inputs([x] + params, [True] * (1 + len(params)), {"eps": draw(st.sampled_from([1e-5, 1e-6, 0.1]))})
    return build


def build_swiglu(draw, rng, dtype):
    shape = draw(shapes(1, 4))
    return Inputs([uniform(rng, shape, dtype, -5, 5), uniform(rng, shape, dtype)], [True, True])


def build_dropout(draw, rng, dtype):
    shape, p = draw(shapes(1, 4)), draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)  # torch's own mask, recovered from dropping out ones
    keep = F.dropout(torch.ones(shape, dtype=torch.float64), p, training=True) != 0
    return Inputs([away_from_zero(rng, shape, dtype), keep.numpy()], [True, False], {"p": p, "seed": seed})


def torch_dropout(x, keep, p, seed):
    torch.manual_seed(seed)
    return F.dropout(x, p, training=True)


def build_rope(draw, rng, dtype):
    b, nh, t = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    hs = 2 * draw(st.integers(1, 4))
    base = draw(st.sampled_from([10000.0, 100.0]))
    positions = draw(st.integers(0, 50)) + np.arange(t)
    inv_freq = 1.0 / base ** (np.arange(0, hs, 2, dtype=np.float64) / hs)  # (hs/2,) as in HF and llama.cpp
    angles = positions[:, None] * inv_freq[None, :]  # (T, hs/2)
    interleaved = draw(st.booleans())
    table = np.repeat(angles, 2, axis=1) if interleaved else np.concatenate([angles, angles], axis=1)  # (T, hs)
    return Inputs([uniform(rng, (b, nh, t, hs), dtype), np.cos(table).astype(dtype), np.sin(table).astype(dtype)],
                  [True, False, False], {"interleaved": interleaved, "angles": angles})


def torch_rope(x, cos, sin, interleaved, angles):
    if not interleaved:  # Hugging Face: x * cos + rotate_half(x) * sin
        return apply_rotary_pos_emb(x, x, cos[None], sin[None], unsqueeze_dim=1)[0]
    # Meta/llama.cpp pairs (x[2i], x[2i+1]) as complex numbers, rotated by exp(i * angle)
    pairs = torch.view_as_complex(x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2)))  # (B, nh, T, hs/2)
    angles = torch.from_numpy(angles).to(x.dtype)
    turned = pairs * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(turned).reshape(x.shape)


def build_attention(draw, rng, dtype):
    b, nkv, groups = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    t, hs, causal = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.booleans())
    s = t + draw(st.integers(0, 3)) if causal else draw(st.integers(1, 6))
    scale = draw(st.sampled_from([None, 0.3]))
    return Inputs([uniform(rng, (b, nkv * groups, t, hs), dtype), uniform(rng, (b, nkv, s, hs), dtype),
                   uniform(rng, (b, nkv, s, hs), dtype)], [True, True, True], {"causal": causal, "scale": scale})


def torch_attention(q, k, v, causal, scale):
    mask = None
    if causal:  # queries are the last T of S positions (torch's is_causal would align them first)
        t, s = q.shape[2], k.shape[2]
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def kw(fn, *names):
    """Call fn with only the named options (the others are for the other framework)."""
    return lambda *args, **options: fn(*args, **{n: options[n] for n in names})


# ------------------------------------------------------------------ the cases

CASES: dict[str, Case] = {
    "add": Case(binary(), ops.add, torch.add),
    "sub": Case(binary(), ops.sub, torch.sub),
    "mul": Case(binary(), ops.mul, torch.mul),
    "div": Case(binary(away_from_zero), ops.div, torch.div),
    "maximum": Case(binary(), ops.maximum, torch.maximum),  # continuous draws: no ties (conventions differ)
    "where": Case(build_where, ops.where, torch.where),
    "neg": Case(unary(), ops.neg, torch.neg),
    "pow": Case(build_pow, ops.pow, lambda a, exponent: torch.pow(a, exponent)),
    "exp": Case(unary(), ops.exp, torch.exp),
    "log": Case(unary(0.1, 3.0), ops.log, torch.log),
    "sqrt": Case(unary(0.1, 3.0), ops.sqrt, torch.sqrt),
    "tanh": Case(unary(-4.0, 4.0), ops.tanh, torch.tanh),
    "relu": Case(build_relu, ops.relu, torch.relu),
    "sum": Case(build_reduce(), ops.sum,
                lambda a, axis, keepdims: torch.sum(a, dim=torch_dims(axis, a.ndim), keepdim=keepdims)),
    "mean": Case(build_reduce(), ops.mean,
                 lambda a, axis, keepdims: torch.mean(a, dim=torch_dims(axis, a.ndim), keepdim=keepdims)),
    "max": Case(build_reduce(allow_ties=True), ops.max,  # amax shares the gradient among ties, like minilora
                lambda a, axis, keepdims: torch.amax(a, dim=torch_dims(axis, a.ndim), keepdim=keepdims)),
    "reshape": Case(build_reshape, ops.reshape, lambda a, shape: torch.reshape(a, shape)),
    "permute": Case(build_permute, ops.permute, lambda a, axes: torch.permute(a, axes)),
    "broadcast_to": Case(build_broadcast_to, ops.broadcast_to, lambda a, shape: torch.broadcast_to(a, shape)),
    "getitem": Case(build_getitem, ops.getitem, lambda a, key: a[key]),
    "concat": Case(build_concat, ops.concat, lambda *ts, axis: torch.cat(ts, dim=axis)),
    "embedding": Case(build_embedding, ops.embedding, lambda w, ids: F.embedding(ids, w)),
    "matmul": Case(build_matmul, ops.matmul, torch.matmul),
    "linear": Case(build_linear, kernels.linear, F.linear),
    "softmax": Case(build_softmax, kernels.softmax, lambda x, axis: torch.softmax(x, dim=axis)),
    "log_softmax": Case(build_softmax, kernels.log_softmax, lambda x, axis: torch.log_softmax(x, dim=axis)),
    "cross_entropy": Case(build_cross_entropy, kernels.cross_entropy, F.cross_entropy),
    "layer_norm": Case(build_norm(True), kernels.layer_norm,
                       lambda x, w, b=None, eps=1e-5: F.layer_norm(x, w.shape, w, b, eps)),
    "rms_norm": Case(build_norm(False), kernels.rms_norm, lambda x, w, eps: F.rms_norm(x, w.shape, w, eps)),
    "gelu": Case(unary(-5.0, 5.0), kernels.gelu, lambda x: F.gelu(x, approximate="tanh")),
    "silu": Case(unary(-6.0, 6.0), kernels.silu, F.silu),
    "swiglu": Case(build_swiglu, kernels.swiglu, lambda gate, up: F.silu(gate) * up),
    "dropout": Case(build_dropout, kw(kernels.dropout, "p"), torch_dropout),
    "rope": Case(build_rope, kw(kernels.rope, "interleaved"), torch_rope),
    "attention": Case(build_attention, kernels.attention, torch_attention),
}


def _register_every_primitive():
    """Import every minilora module, so that primitives registered outside the core are listed too."""
    for info in pkgutil.walk_packages(minilora.__path__, prefix="minilora."):
        if not info.name.endswith("__main__"):  # running a __main__ would start the command line
            importlib.import_module(info.name)


def test_every_primitive_has_a_torch_case():
    _register_every_primitive()
    missing = sorted(set(PRIMITIVES) - set(CASES) - set(EXCLUDED))
    assert not missing, f"primitives without a torch comparison in {__file__}: {missing}"
    stale = sorted((set(CASES) | set(EXCLUDED)) - set(PRIMITIVES))
    assert not stale, f"cases for primitives that are not registered: {stale}"


def to_torch(a, dtype="float64", requires_grad=False):
    """A torch tensor of a host array; float arrays are cast to ``dtype``, ints and bools kept."""
    a = np.array(a)
    if a.dtype.kind == "f":
        a = a.astype(dtype)
    return torch.from_numpy(a).requires_grad_(requires_grad)


def run_torch(case, inputs, u, dtype):
    """torch's output and input gradients (host arrays, float64) for cotangent u, computing in dtype."""
    theirs = [to_torch(a, dtype, g) for a, g in zip(inputs.arrays, inputs.grad)]
    out = case.torch(*theirs, **inputs.options)
    wanted = [t for t, g in zip(theirs, inputs.grad) if g]
    grads = torch.autograd.grad(out, wanted, grad_outputs=to_torch(u, dtype), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wanted, grads)]
    return [np.asarray(t.detach().numpy(), dtype=np.float64) for t in [out] + grads]


def assert_matches(actual, oracle, rtol, what, peer=None):
    """|actual - oracle| <= rtol * (|oracle| + max(max|oracle|, 1)) [+ 2 |peer - oracle|].

    Inputs are O(1), so below an absolute 1 only rounding is left (e.g. a gradient that is exactly 0).
    peer: torch's own float32 result. Where float32 cannot reach rtol because the problem is
    ill-conditioned (layer_norm of a row whose spread is tiny next to its mean), minilora may be off
    by twice torch's own float32 error, and no more.
    """
    actual = np.asarray(backend.to_numpy(actual), dtype=np.float64)
    assert actual.shape == oracle.shape, f"{what}: shape {actual.shape}, torch {oracle.shape}"
    scale = max(float(np.max(np.abs(oracle))), 1.0) if oracle.size else 1.0
    allowed = rtol * (np.abs(oracle) + scale)
    if peer is not None:
        peer_error = np.abs(peer - oracle)
        assert np.all(peer_error <= 1e-3 * (np.abs(oracle) + scale)), f"{what}: torch float32 is off its float64"
        allowed = allowed + 2 * peer_error
    bad = np.abs(actual - oracle) > allowed
    assert not np.any(bad), (f"{what}: {int(bad.sum())} of {bad.size} elements differ from torch; worst "
                             f"|diff| {np.max(np.abs(actual - oracle)):.3g} (allowed there {allowed[bad].min():.3g}); "
                             f"minilora {actual[bad][:4]}, torch {oracle[bad][:4]}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_primitive_matches_torch(name, dtype, xp, data):
    case, rtol = CASES[name], RTOL[dtype]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    inputs = case.build(data.draw, rng, dtype)
    ours = [Tensor(backend.from_numpy(a, xp), requires_grad=g) for a, g in zip(inputs.arrays, inputs.grad)]
    out = case.minilora(*ours, **inputs.options)
    assert str(out.dtype).endswith(dtype), f"{name}: output dtype {out.dtype} for {dtype} inputs"
    u = np.asarray(rng.standard_normal(tuple(out.shape)), dtype=dtype)
    out.backward(backend.from_numpy(u, xp))
    mine = [out.data] + [t.grad for t, g in zip(ours, inputs.grad) if g]
    oracle = run_torch(case, inputs, u, "float64")
    peers = run_torch(case, inputs, u, "float32") if dtype == "float32" else [None] * len(oracle)
    for i, (got, want, peer) in enumerate(zip(mine, oracle, peers)):
        assert got is not None, f"{name}: no gradient for differentiable input {i - 1}"
        assert_matches(got, want, rtol, f"{name} {'forward' if i == 0 else f'gradient of input {i - 1}'}", peer)
