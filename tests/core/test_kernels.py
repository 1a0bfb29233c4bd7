"""Each fused kernel equals its composite of basic primitives, in value and gradient (float64, 1e-10),
and the same small network agrees across backends."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend, functional as F, kernels
from minilora.tensor import PRIMITIVES, Tensor
from minilora.testing import shapes

TIGHT = 1e-10


def host(seed, shape, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def compare(fused, composite, arrays, seed=0, rtol=TIGHT, atol=TIGHT):
    """Run both on fresh leaves made from ``arrays``; compare outputs and every input gradient."""
    results = []
    for fn in (fused, composite):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        out = fn(*leaves)
        u = backend.from_numpy(np.random.default_rng(seed).standard_normal(out.shape), out.xp)
        out.backward(u)
        results.append((out.numpy(), [backend.to_numpy(t.grad) if t.grad is not None else None for t in leaves]))
    (y1, g1), (y2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=rtol, atol=atol)
    for i, (a, b) in enumerate(zip(g1, g2)):
        assert (a is None) == (b is None), f"input {i}: only one side has a gradient"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")


def arr(xp, seed, shape, **kw):
    return backend.from_numpy(host(seed, shape, **kw), xp)


seeds = st.integers(0, 2**32 - 1)


@given(lead=shapes(min_dims=0, max_dims=2, max_side=3), d_in=st.integers(1, 5), d_out=st.integers(1, 5),
       bias=st.booleans(), seed=seeds)
def test_linear_matches_composite(xp, lead, d_in, d_out, bias, seed):
    arrays = [arr(xp, seed, lead + (d_in,)), arr(xp, seed + 1, (d_out, d_in))]
    if bias:
        arrays.append(arr(xp, seed + 2, (d_out,)))
    compare(kernels.linear, F.composite_linear, arrays, seed)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(shape=shapes(max_dims=3, max_side=5), data=st.data(), seed=seeds)
def test_softmax_family_matches_composite(xp, name, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    fused, composite = getattr(kernels, name), getattr(F, "composite_" + name)
    compare(lambda x: fused(x, axis=axis), lambda x: composite(x, axis=axis), [arr(xp, seed, shape, low=-30, high=30)],
            seed)


@given(n=st.integers(1, 6), v=st.integers(1, 7), ignore_fraction=st.sampled_from([0.0, 0.4, 1.0]), seed=seeds,
       ignore_index=st.sampled_from([-100, -1, 0]))
def test_cross_entropy_matches_composite(xp, n, v, ignore_fraction, seed, ignore_index):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, v, n)
    targets[rng.uniform(size=n) < ignore_fraction] = ignore_index
    t = backend.from_numpy(targets, xp)
    compare(lambda z: kernels.cross_entropy(z, t, ignore_index=ignore_index),
            lambda z: F.composite_cross_entropy(z, t, ignore_index=ignore_index), [arr(xp, seed, (n, v), low=-20, high=20)],
            seed)


def test_cross_entropy_all_ignored_is_zero_with_zero_gradient(xp):
    z = Tensor(arr(xp, 0, (3, 4)), requires_grad=True)
    loss = kernels.cross_entropy(z, backend.from_numpy(np.full(3, -100), xp))
    loss.backward()
    assert loss.item() == 0.0 and np.all(backend.to_numpy(z.grad) == 0)


def test_cross_entropy_rejects_out_of_range_targets(xp):
    z = Tensor(arr(xp, 0, (2, 4)))
    for bad in ([0, 4], [-1, 2]):
        with pytest.raises(ValueError, match="targets must lie in"):
            kernels.cross_entropy(z, backend.from_numpy(np.array(bad), xp))
    with pytest.raises(ValueError, match="expected logits"):
        kernels.cross_entropy(z, backend.from_numpy(np.array([0, 1, 2]), xp))


def test_cross_entropy_memory_stays_near_one_saved_array():
    """Forward + backward allocate at most ~2.25 (N, V) float32 arrays beyond the logits
    (saved softmax, the gradient, a boolean one-hot; the transient exp lives only in forward)."""
    n, v = 64, 4096
    logits = np.random.default_rng(0).standard_normal((n, v)).astype(np.float32)
    targets = np.random.default_rng(1).integers(0, v, n)
    unit = n * v * 4
    tracemalloc.start()
    try:
        loss, vjp = PRIMITIVES["cross_entropy"].forward(logits, targets)
        grad, _ = vjp(np.asarray(1.0, dtype=np.float32), (True, False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grad.dtype == np.float32 and loss.dtype == np.float32
    assert peak < 2.6 * unit, f"peak {peak / unit:.2f} (N, V) arrays"


def test_a_frozen_linear_keeps_no_reference_to_its_input():
    """y = x W^T with W frozen needs only W for gx, so the input dies with the code that made it; a
    trainable W keeps it for gW = g^T x (before, the VJP closed over x either way)."""
    import gc
    import weakref
    rng = np.random.default_rng(0)
    w_host = rng.standard_normal((3, 4))
    for trainable in (False, True):
        x = Tensor(rng.standard_normal((2, 4)), requires_grad=True)
        w = Tensor(w_host.copy(), requires_grad=trainable)
        h = x * 2.0  # an intermediate whose own VJP keeps nothing of it
        array_ref = weakref.ref(h.data)
        y = kernels.linear(h, w)
        del h
        gc.collect()
        assert (array_ref() is None) is (not trainable), f"trainable={trainable}"
        y.sum().backward()
        np.testing.assert_allclose(x.grad, 2.0 * np.broadcast_to(w_host.sum(axis=0), (2, 4)), rtol=1e-12)
        if trainable:
            np.testing.assert_allclose(w.grad, np.broadcast_to(2.0 * x.data.sum(axis=0), (3, 4)), rtol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_without_its_value_records_the_same_gradients(bias):
    """value=False skips the product (zeros out) but its VJP gives x, W and b the same bits: no
    gradient of a linear reads its output."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((2, 5, 4)), rng.standard_normal((3, 4))] + ([rng.standard_normal(3)] if bias else [])
    g = rng.standard_normal((2, 5, 3))
    grads = []
    for value in (True, False):
        leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
        y = kernels.linear(*leaves, value=value)
        assert y.shape == (2, 5, 3)
        if not value:
            assert not np.any(y.data)
        y.backward(g)
        grads.append([leaf.grad.tobytes() for leaf in leaves])
    assert grads[0] == grads[1]


@pytest.mark.parametrize("fast", [True, False])
def test_swiglu_saves_nothing_beyond_its_inputs(fast):
    """Forward returns y and keeps only gate and up for backward: one (N, F) array beyond its inputs.
    s = sigmoid(gate) and silu(gate) = gate s are recomputed in backward (they used to be a second and
    a third saved array)."""
    from minilora import inplace
    rng = np.random.default_rng(0)
    gate, up = (Tensor(rng.standard_normal((64, 1024)).astype(np.float32), requires_grad=True) for _ in range(2))
    unit = 64 * 1024 * 4
    inplace.set_enabled(fast)
    tracemalloc.start()
    try:
        y = kernels.swiglu(gate, up)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        inplace.set_enabled(True)
    assert held < 1.5 * unit, f"forward holds {held / unit:.2f} (N, F) arrays"
    y.backward(np.ones(y.shape, dtype=np.float32))
    s = 1.0 / (1.0 + np.exp(-gate.data.astype(np.float64)))
    np.testing.assert_allclose(up.grad, gate.data * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gate.grad, up.data * s * (1 + gate.data * (1 - s)), rtol=1e-5, atol=1e-6)


@given(shape=shapes(min_dims=1, max_dims=3, max_side=4), seed=seeds, c=st.integers(2, 6))
def test_norms_match_composite(xp, shape, seed, c):
    x = arr(xp, seed, shape[:-1] + (c,), low=-3, high=3)
    w, b = arr(xp, seed + 1, (c,)), arr(xp, seed + 2, (c,))
    compare(lambda x_, w_, b_: kernels.layer_norm(x_, w_, b_, eps=1e-5),
            lambda x_, w_, b_: F.composite_layer_norm(x_, w_, b_, eps=1e-5), [x, w, b], seed)
    compare(lambda x_, w_: kernels.layer_norm(x_, w_, None, eps=1e-5),
            lambda x_, w_: F.composite_layer_norm(x_, w_, None, eps=1e-5), [x, w], seed)  # no bias
    compare(lambda x_, w_: kernels.rms_norm(x_, w_, eps=1e-6),
            lambda x_, w_: F.composite_rms_norm(x_, w_, eps=1e-6), [x, w], seed)


@given(shape=shapes(max_dims=3, max_side=5), seed=seeds)
def test_activations_match_composite(xp, shape, seed):
    x = arr(xp, seed, shape, low=-8, high=8)
    compare(kernels.gelu, F.composite_gelu, [x], seed)
    compare(kernels.silu, F.composite_silu, [x], seed)
    compare(kernels.swiglu, F.composite_swiglu, [x, arr(xp, seed + 1, shape)], seed)


@given(shape=shapes(max_dims=3, max_side=5), p=st.sampled_from([0.0, 0.1, 0.5, 0.9]), seed=seeds)
def test_dropout_matches_composite(xp, shape, p, seed):
    keep = backend.from_numpy(np.random.default_rng(seed).uniform(size=shape) >= p, xp)
    compare(lambda x: kernels.dropout(x, keep, p=p), lambda x: F.composite_dropout(x, keep, p=p),
            [arr(xp, seed, shape)], seed)


@pytest.mark.parametrize("interleaved", [False, True])
@given(b=st.integers(1, 2), nh=st.integers(1, 3), t=st.integers(1, 5), half=st.integers(1, 4), seed=seeds,
       offset=st.integers(0, 50))
def test_rope_matches_composite(xp, interleaved, b, nh, t, half, seed, offset):
    cos, sin = F.rope_tables(xp, xp.arange(offset, offset + t), 2 * half, base=10000.0, interleaved=interleaved,
                             dtype=xp.float64)
    compare(lambda x: kernels.rope(x, cos, sin, interleaved=interleaved),
            lambda x: F.composite_rope(x, cos, sin, interleaved=interleaved), [arr(xp, seed, (b, nh, t, 2 * half))],
            seed)


def test_rope_layouts_rotate_the_documented_pairs(xp):
    """Half layout pairs (i, i + hs/2); interleaved pairs (2i, 2i+1): rotating by the angle preserves
    each pair's norm, and position 0 is the identity."""
    x = arr(xp, 3, (1, 1, 2, 6))
    for interleaved, pairs in ((False, [(0, 3), (1, 4), (2, 5)]), (True, [(0, 1), (2, 3), (4, 5)])):
        cos, sin = F.rope_tables(xp, xp.arange(2), 6, interleaved=interleaved, dtype=xp.float64)
        y = kernels.rope(Tensor(x), cos, sin, interleaved=interleaved).numpy()[0, 0]
        xh = backend.to_numpy(x)[0, 0]
        np.testing.assert_allclose(y[0], xh[0], rtol=1e-12)
        for i, j in pairs:
            np.testing.assert_allclose(y[1, i] ** 2 + y[1, j] ** 2, xh[1, i] ** 2 + xh[1, j] ** 2, rtol=1e-12)


@given(b=st.integers(1, 2), nkv=st.integers(1, 2), groups=st.integers(1, 3), hs=st.integers(1, 4),
       s_len=st.integers(1, 5), data=st.data(), causal=st.booleans(), seed=seeds)
def test_attention_matches_composite(xp, b, nkv, groups, hs, s_len, data, causal, seed):
    """GQA (groups query heads per kv head), causal and not, and T <= S as with a KV cache."""
    t = data.draw(st.integers(1, s_len)) if causal else data.draw(st.integers(1, 5))
    arrays = [arr(xp, seed, (b, nkv * groups, t, hs)), arr(xp, seed + 1, (b, nkv, s_len, hs)),
              arr(xp, seed + 2, (b, nkv, s_len, hs))]
    compare(lambda q, k, v: kernels.attention(q, k, v, causal=causal),
            lambda q, k, v: F.composite_attention(q, k, v, causal=causal), arrays, seed)


def test_attention_with_cache_equals_the_last_rows_of_full_attention(xp):
    """Queries for the last T of S positions (KV cache) see what the full causal pass shows them."""
    q, k, v = (arr(xp, s, (1, 4, 5, 3)) for s in range(3))
    k2, v2 = (xp.reshape(a, (1, 2, 2, 5, 3))[:, :, 0, ...] for a in (k, v))  # 2 kv heads
    full = kernels.attention(Tensor(q), Tensor(k2), Tensor(v2), causal=True).numpy()
    tail = kernels.attention(Tensor(q[:, :, 3:, :]), Tensor(k2), Tensor(v2), causal=True).numpy()
    np.testing.assert_allclose(tail, full[:, :, 3:, :], rtol=1e-12)


def test_attention_shape_errors(xp):
    q, k = Tensor(arr(xp, 0, (1, 3, 2, 4))), Tensor(arr(xp, 1, (1, 2, 2, 4)))
    with pytest.raises(ValueError, match="not a multiple"):
        kernels.attention(q, k, k)
    with pytest.raises(ValueError, match="T <= S"):
        kernels.attention(Tensor(arr(xp, 0, (1, 2, 3, 4))), k, k, causal=True)
    with pytest.raises(ValueError, match="equal shape"):
        kernels.attention(Tensor(arr(xp, 0, (1, 2, 2, 4))), k, Tensor(arr(xp, 1, (1, 2, 3, 4))))
    with pytest.raises(ValueError, match="head size"):
        kernels.attention(Tensor(arr(xp, 0, (1, 2, 2, 5))), k, k)
    with pytest.raises(ValueError, match="even hs"):
        cos = arr(xp, 0, (2, 3))
        kernels.rope(Tensor(arr(xp, 0, (1, 1, 2, 3))), cos, cos)


def test_every_fused_kernel_has_a_composite():
    fused = sorted(name for name, p in PRIMITIVES.items() if p.fused)
    assert fused, "no fused kernels registered"
    missing = [name for name in fused if not hasattr(F, "composite_" + name)]
    assert not missing, f"fused kernels without functional.composite_*: {missing}"


# ------------------------------------------------------------------ cross-backend agreement

def block(xp, dtype, seed=0):
    """A pre-norm transformer block (RMSNorm, RoPE, GQA attention, SwiGLU MLP) and its loss."""
    b, t, c, nh, nkv, hs, ffn, vocab = 2, 5, 8, 4, 2, 2, 12, 11
    rng = np.random.default_rng(seed)

    def p(*shape, scale=0.5):
        return Tensor(xp.asarray(rng.standard_normal(shape) * scale, dtype=dtype), requires_grad=True)
    x, wq, wk, wv, wo = p(b, t, c), p(nh * hs, c), p(nkv * hs, c), p(nkv * hs, c), p(c, nh * hs)
    wg, wu, wd, w_out, norm_w = p(ffn, c), p(ffn, c), p(c, ffn), p(vocab, c), p(c)
    params = [x, wq, wk, wv, wo, wg, wu, wd, w_out, norm_w]
    cos, sin = F.rope_tables(xp, xp.arange(t), hs, dtype=dtype)
    h = F.rms_norm(x, norm_w)
    q = F.linear(h, wq).reshape(b, t, nh, hs).permute(0, 2, 1, 3)  # (B, nh, T, hs)
    k = F.linear(h, wk).reshape(b, t, nkv, hs).permute(0, 2, 1, 3)  # (B, nkv, T, hs)
    v = F.linear(h, wv).reshape(b, t, nkv, hs).permute(0, 2, 1, 3)
    att = F.attention(F.rope(q, cos, sin), F.rope(k, cos, sin), v, causal=True)
    x = x + F.linear(att.permute(0, 2, 1, 3).reshape(b, t, nh * hs), wo)
    x = x + F.linear(F.swiglu(F.linear(x, wg), F.linear(x, wu)), wd)
    logits = F.linear(F.layer_norm(x, norm_w, norm_w * 0.0), w_out).reshape(b * t, vocab)  # (B*T, V)
    targets = xp.asarray(rng.integers(0, vocab, b * t))
    loss = F.cross_entropy(F.log_softmax(logits) + 0.0, targets)
    loss.backward()
    return [loss.numpy()] + [backend.to_numpy(t.grad) for t in params]


@pytest.mark.parametrize("dtype_name, rtol, atol", [("float64", 1e-12, 1e-14), ("float32", 1e-5, 1e-6)])
def test_backends_agree_on_a_transformer_block(dtype_name, rtol, atol):
    outputs = {}
    for name in ("numpy", "array_api_strict"):
        if not backend.is_available(name):
            pytest.skip(f"backend {name} not available")
        with backend.use_backend(name) as xp:
            outputs[name] = block(xp, getattr(xp, dtype_name))
    for i, (a, b) in enumerate(zip(outputs["numpy"], outputs["array_api_strict"])):
        assert a.dtype == np.dtype(dtype_name), f"output {i} has dtype {a.dtype}"
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"output {i}")


class _NoVecdot:
    """NumPy without vecdot: the namespace row_dot falls back on."""

    def __getattr__(self, name):
        if name == "vecdot":
            raise AttributeError(name)
        return getattr(np, name)


@given(lead=shapes(min_dims=0, max_dims=2, max_side=4), n=st.integers(1, 130), seed=seeds)
def test_row_dot_is_the_sum_of_the_product_over_the_last_axis(lead, n, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(lead + (n,), dtype=np.float32) for _ in range(2))
    expected = np.sum(a.astype(np.float64) * b, axis=-1, keepdims=True)
    for xp in (np, _NoVecdot()):
        got = kernels.row_dot(xp, a, b)
        assert got.shape == lead + (1,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.sqrt(n))
