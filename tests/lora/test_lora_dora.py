"""DoRA on LoRALinear and over Linear4bit (QDoRA): the properties of issue 15.1, on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import backend, functional as F, nn
from minilora.lora import LoraConfig, LoRALinear, dora, get_lora_model, load_adapter, save_adapter
from minilora.quant.linear4bit import Linear4bit
from minilora.tensor import Tensor
from minilora.testing import gradcheck, lora_dims, shapes


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a).astype(np.float64)


def dora_layer(xp, d_in, d_out, r, dtype="float64", seed=0, bias=True, quantized=False):
    base = nn.Linear(d_in, d_out, bias=bias, dtype=getattr(xp, dtype), rng=backend.Random(seed, xp))
    if quantized:
        base = Linear4bit.from_linear(base)
    layer = LoRALinear(base, rng_seed=seed)
    layer.update_layer("d", r, 2.0 * r + 1, 0.0, True, use_dora=True, seed=seed + 1)
    layer.active_adapters = ["d"]
    return layer


def train_a_little(layer, name="d", seed=7):
    """Move B away from 0 and m away from ||W0||_c, as training would."""
    rng = backend.Random(seed, layer.xp)
    b = layer.lora_B[name].weight
    b.data = rng.normal(tuple(b.shape), std=0.5, dtype=b.dtype)
    m = layer.lora_magnitude_vector[name]
    m.data = m.data * (1.0 + rng.uniform(tuple(m.shape), -0.3, 0.3, dtype=m.dtype))


def oracle(layer, x, name="d"):
    """m / ||W0 + s B A||_c * (W0 + s B A) x + bias, in float64 NumPy."""
    w = host(layer.base_layer.dequantize()) if hasattr(layer.base_layer, "dequantize") else host(layer.base_layer.weight)
    full = w + layer.scaling[name] * host(layer.lora_B[name].weight) @ host(layer.lora_A[name].weight)
    scale = host(layer.lora_magnitude_vector[name]) / np.linalg.norm(full, axis=1)
    bias = layer.base_layer.bias
    return host(x) @ (scale[:, None] * full).T + (0.0 if bias is None else host(bias))


params = dict(dims=lora_dims(), batch=shapes(min_dims=1, max_dims=2, max_side=3), bias=st.booleans())


@settings(max_examples=15)
@given(**params)
def test_at_init_dora_is_the_base_bit_for_bit(xp, dims, batch, bias):
    d_in, d_out, r = dims
    for dtype in ("float64", "float32"):
        layer = dora_layer(xp, d_in, d_out, r, dtype, bias=bias)
        x = Tensor(backend.Random(3, xp).normal(tuple(batch) + (d_in,), dtype=getattr(xp, dtype)))
        np.testing.assert_array_equal(host(layer(x)), host(layer.base_layer(x)))
        np.testing.assert_allclose(host(layer.lora_magnitude_vector["d"]),  # m = ||W0||_c, per output row
                                   np.linalg.norm(host(layer.base_layer.weight), axis=1), rtol=1e-6)


@settings(max_examples=15)
@given(**params)
def test_forward_matches_the_formula_and_merge_round_trips(xp, dims, batch, bias):
    d_in, d_out, r = dims
    layer = dora_layer(xp, d_in, d_out, r, bias=bias)
    train_a_little(layer)
    x = Tensor(backend.Random(3, xp).normal(tuple(batch) + (d_in,), dtype=xp.float64))
    w0 = host(layer.base_layer.weight)
    y = layer(x)
    np.testing.assert_allclose(host(y), oracle(layer, x), rtol=1e-10, atol=1e-12)
    layer.merge()
    np.testing.assert_allclose(host(layer(x)), host(y), rtol=1e-10, atol=1e-12)  # merged == unmerged
    layer.unmerge()
    np.testing.assert_allclose(host(layer.base_layer.weight), w0, rtol=1e-12, atol=1e-14)  # W0 back


def test_two_dora_adapters_merge_like_their_forward(xp):
    """Active together, each DoRA adapter rescales the output so far (PEFT): merged must agree."""
    layer = dora_layer(xp, 6, 5, 2)
    layer.update_layer("e", 3, 3.0, 0.0, True, use_dora=True, seed=9)
    layer.update_layer("plain", 2, 2.0, 0.0, False, seed=10)
    train_a_little(layer, "d")
    train_a_little(layer, "e", seed=8)
    layer.active_adapters = ["d", "plain", "e"]
    x = Tensor(backend.Random(3, xp).normal((4, 6), dtype=xp.float64))
    y, w0 = layer(x), host(layer.base_layer.weight)
    layer.merge()
    np.testing.assert_allclose(host(layer(x)), host(y), rtol=1e-10, atol=1e-12)
    layer.unmerge()
    np.testing.assert_allclose(host(layer.base_layer.weight), w0, rtol=1e-12, atol=1e-13)


def test_gradcheck_of_a_b_and_m_with_the_norm_detached(xp):
    """The increment's VJP in A, B and m, with n held constant (it is detached: no gradient reaches it)."""
    rng = backend.Random(5, xp)
    x = Tensor(rng.normal((3, 5), dtype=xp.float64))
    w0 = rng.normal((4, 5), dtype=xp.float64)
    a, b = rng.normal((2, 5), dtype=xp.float64), rng.normal((4, 2), dtype=xp.float64)
    norm = dora.weight_norm(xp, w0, 1.5 * xp.matmul(b, a))
    magnitude = norm * 1.2

    def fn(a_, b_, m_):
        lora_out = F.linear(F.linear(x, a_), b_)
        return dora.dora_increment(F.linear(x, Tensor(w0)), lora_out, m_, norm, 1.5)
    inputs = [Tensor(t, requires_grad=True) for t in (a, b, magnitude)]
    assert gradcheck(fn, *inputs) < 1e-6


def test_the_norm_gets_no_gradient(xp):
    """dy/dA is the detached one: differentiating through n too would give a different gradient."""
    layer = dora_layer(xp, 5, 4, 2)
    train_a_little(layer)
    x = Tensor(backend.Random(3, xp).normal((3, 5), dtype=xp.float64))
    layer(x).sum().backward()
    a = layer.lora_A["d"].weight
    grad = host(a.grad)
    scale = host(layer.lora_magnitude_vector["d"]) / np.linalg.norm(
        host(layer.base_layer.weight) + host(layer.delta_weight("d")), axis=1)
    # with n constant: dL/dA = s * B^T diag(m / n) 1 x_sum, L = sum(y)
    expected = layer.scaling["d"] * np.outer(host(layer.lora_B["d"].weight).T @ scale, host(x).sum(axis=0))
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_qdora_over_linear4bit(xp):
    layer = dora_layer(xp, 64, 8, 4, "float32", quantized=True)
    x = Tensor(backend.Random(3, xp).normal((2, 3, 64), dtype=xp.float32))
    np.testing.assert_array_equal(host(layer(x)), host(layer.base_layer(x)))  # at init: the 4-bit base exactly
    train_a_little(layer)
    y = layer(x)
    np.testing.assert_allclose(host(y), oracle(layer, x), rtol=2e-4, atol=2e-4)
    merged = layer.merged_base()  # a float Linear holding (m / n) (dequant(W4) + s B A)
    np.testing.assert_allclose(host(merged(x)), host(y), rtol=2e-4, atol=2e-4)
    with pytest.raises(ValueError, match="quantized"):
        layer.merge()  # in place into 4-bit is refused, as for plain LoRA


class Tiny(nn.Module):
    def __init__(self, seed=0):
        rng = backend.Random(seed)
        self.q_proj = nn.Linear(6, 6, dtype="float64", rng=rng)
        self.v_proj = nn.Linear(6, 4, bias=False, dtype="float64", rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


def test_model_files_hold_pefts_magnitude_key_and_round_trip(tmp_path):
    model = get_lora_model(Tiny(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=True), seed=3)
    for layer in (model.model.q_proj, model.model.v_proj):
        train_a_little(layer, "default")
    x = Tensor(np.random.default_rng(0).standard_normal((3, 6)))
    save_adapter(model, tmp_path)
    loaded = load_adapter(Tiny(), tmp_path)
    np.testing.assert_array_equal(host(loaded(x)), host(model(x)))
    from minilora.lora import adapter_state_dict
    keys = sorted(adapter_state_dict(model))
    assert "base_model.model.q_proj.lora_magnitude_vector" in keys and len(keys) == 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.q_proj.lora_magnitude_vector.default" in trainable
