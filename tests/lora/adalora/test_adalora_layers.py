"""SVDLinear: AdaLoRA's triplet form (issue 6) over drawn shapes, on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import backend, nn
from minilora.nn import Parameter
from minilora.lora.adalora import SVDLinear
from minilora.quant import Linear4bit
from minilora.tensor import Tensor, no_grad
from minilora.testing import gradcheck, lora_dims, shapes

TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


def close(a, b, dtype="float64"):
    np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), **TOL[dtype])


def make_layer(xp, d_in, d_out, r, alpha=8.0, dtype="float64", seed=0, name="default"):
    base = nn.Linear(d_in, d_out, dtype=getattr(xp, dtype), rng=backend.Random(seed, xp))
    layer = SVDLinear(base, rng_seed=seed)
    layer.update_layer(name, r, alpha, 0.0, init_lora_weights=False, seed=seed + 1)  # E != 0: not a no-op
    layer.active_adapters = [name]
    return layer


def host(t):
    return backend.to_numpy(t.data if isinstance(t, Tensor) else t).astype(np.float64)


def oracle_delta(layer, name="default"):
    """B (A * E) * alpha / (ranknum + 1e-5), float64 NumPy."""
    a, e, b = (host(getattr(layer, f"lora_{k}")[name]) for k in "AEB")
    return b @ (a * e) * layer.lora_alpha[name] / (layer.ranknum[name] + 1e-5)


params = dict(dims=lora_dims(), alpha=st.sampled_from([1.0, 8.0, 32.0]), batch=shapes(min_dims=0, max_dims=2, max_side=3),
              dtype=st.sampled_from(["float64", "float32"]))


@settings(max_examples=15)
@given(**params)
def test_forward_matches_oracle_and_merged_equals_unmerged(xp, dims, alpha, batch, dtype):
    d_in, d_out, r = dims
    layer = make_layer(xp, d_in, d_out, r, alpha, dtype)
    x = Tensor(backend.Random(3, xp).normal(tuple(batch) + (d_in,), dtype=getattr(xp, dtype)))
    w0 = host(layer.base_layer.weight).copy()
    with no_grad():
        y = layer(x)
        expected = host(x) @ (w0 + oracle_delta(layer)).T + host(layer.base_layer.bias)
        close(y.data, expected, dtype)
        layer.merge()
        close(layer(x).data, y.data, dtype)  # merged == unmerged
        layer.unmerge()
        close(layer.base_layer.weight.data, w0, dtype)


def test_default_init_is_a_no_op_with_peft_statistics(xp):
    layer = SVDLinear(nn.Linear(64, 48, dtype=xp.float64, rng=backend.Random(0, xp)))
    layer.update_layer("default", 12, 8.0, seed=1)
    layer.active_adapters = ["default"]
    a, e, b = (host(t) for t in layer.triplet("default"))
    assert a.shape == (12, 64) and e.shape == (12, 1) and b.shape == (48, 12)
    assert np.all(e == 0)
    assert abs(a.std() - 0.02) < 0.003 and abs(b.std() - 0.02) < 0.003  # N(0, 0.02)
    assert layer.ranknum["default"] == 12.0 and layer.scaling["default"] == 8.0
    x = Tensor(backend.Random(2, xp).normal((3, 64), dtype=xp.float64))
    close(layer(x).data, layer.base_layer(x).data)


@settings(max_examples=15)
@given(dims=lora_dims(), data=st.data())
def test_masked_triplets_equal_deleted_rows_and_columns(xp, dims, data):
    d_in, d_out, r = dims
    keep = data.draw(st.lists(st.booleans(), min_size=r, max_size=r))
    layer = make_layer(xp, d_in, d_out, r)
    x = Tensor(backend.Random(4, xp).normal((5, d_in), dtype=xp.float64))
    e = layer.lora_E["default"]
    e.data = xp.where(xp.reshape(xp.asarray(keep), (-1, 1)), e.data, xp.zeros_like(e.data))
    with no_grad():
        masked = layer(x)
        layer.resize("default", keep)  # deletes row i of A and E, column i of B
        assert layer.r["default"] == sum(keep) and layer.lora_B["default"].shape == (d_out, sum(keep))
        assert layer.ranknum["default"] == r  # the scale does not jump
        close(layer(x).data, masked.data)


def test_rank_zero_layer_is_its_base(xp):
    layer = make_layer(xp, 5, 4, 3)
    layer.resize("default", [False, False, False])
    x = Tensor(backend.Random(1, xp).normal((2, 5), dtype=xp.float64))
    with no_grad():
        close(layer(x).data, layer.base_layer(x).data)
        close(layer.delta_weight("default"), np.zeros((4, 5)))
        layer.merge()
        close(layer(x).data, layer.base_layer(x).data)


def test_gradients_of_a_e_b_pass_gradcheck(xp):
    layer = make_layer(xp, 4, 3, 2)
    layer.base_layer.freeze()
    x = Tensor(backend.Random(5, xp).normal((3, 4), dtype=xp.float64))
    a, e, b = (getattr(layer, f"lora_{k}")["default"] for k in "AEB")

    def put(a_, e_, b_):  # AdapterDict holds Parameters; gradcheck passes plain Tensors (same slots)
        for holder, value in ((layer.lora_A, a_), (layer.lora_E, e_), (layer.lora_B, b_)):
            value.__class__ = Parameter
            holder["default"] = value

    def f(a_, e_, b_):
        put(a_, e_, b_)
        return layer(x)
    try:
        gradcheck(f, a, e, b)
    finally:
        put(a, e, b)
    (layer(x) * layer(x)).sum().backward()
    assert layer.base_layer.weight.grad is None and e.grad is not None


def test_four_bit_base_merges_into_a_float_layer():
    base = nn.Linear(64, 8, dtype=np.float32, rng=backend.Random(0, np))
    q = Linear4bit.from_linear(base)
    layer = SVDLinear(q)
    layer.update_layer("default", 4, 8.0, init_lora_weights=False, seed=1)
    layer.active_adapters = ["default"]
    x = Tensor(backend.Random(2, np).normal((3, 64), dtype=np.float32))
    with no_grad():
        y = layer(x)
        w = backend.to_numpy(q.dequantize().data if isinstance(q.dequantize(), Tensor) else q.dequantize())
        expected = host(x) @ (w.astype(np.float64) + oracle_delta(layer)).T + host(q.bias)
        close(y.data, expected, "float32")
        plain = layer.merged_base()
        assert isinstance(plain, nn.Linear)
        close(plain(x).data, y.data, "float32")
        with pytest.raises(ValueError, match="quantized"):
            layer.merge()


def test_bad_rank_and_resize_length_raise():
    layer = make_layer(np, 4, 3, 2)
    with pytest.raises(ValueError, match="r must be an integer >= 0"):
        layer.update_layer("x", -1, 8.0)
    with pytest.raises(ValueError, match="keep has 3 entries"):
        layer.resize("default", [True, True, False])
