"""QLoRA = LoRALinear around a Linear4bit: forward, gradients, float merge, honest re-quantized merge."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from minilora import backend, functional as F, nn
from minilora.lora import LoraConfig, LoRALinear, get_lora_model
from minilora.quant import Linear4bit, quantize_4bit, quantize_model
from minilora.quant.merge import requantize_merge, requantize_report
from minilora.tensor import Tensor
from minilora.testing import gradcheck

from test_quant_linear4bit import Tiny, host


def qlora_layer(xp, d_in=64, d_out=48, r=4, dtype=None, seed=0):
    lin = nn.Linear(d_in, d_out, rng=backend.Random(seed, xp=xp), dtype=dtype)
    layer = LoRALinear(Linear4bit.from_linear(lin))
    layer.update_layer("default", r=r, lora_alpha=8, init_lora_weights=False, seed=seed)
    layer.active_adapters = ["default"]
    return layer


def test_qlora_forward_is_exactly_dequantized_base_plus_lora(xp):
    layer = qlora_layer(xp)
    x = Tensor(backend.Random(1, xp=xp).normal((2, 5, 64)))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    base = layer.base_layer
    expected = F.linear(x, Tensor(base.dequantize()), base.bias) + F.linear(F.linear(x, a), b) * layer.scaling["default"]
    assert host(layer(x)).tobytes() == host(expected).tobytes()


def test_gradcheck_of_a_and_b_through_linear4bit(xp):
    w = backend.Random(2, xp=xp).normal((24, 40), dtype=xp.float64)
    packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", double_quant=True)
    layer = LoRALinear(Linear4bit(packed, state))
    layer.update_layer("default", r=3, lora_alpha=6, init_lora_weights=False, seed=3)
    layer.active_adapters = ["default"]
    assert layer.lora_A["default"].weight.dtype == xp.float64  # the adapter follows the base's dtype
    x = Tensor(backend.Random(4, xp=xp).normal((5, 40), dtype=xp.float64), requires_grad=True)
    a = Tensor(layer.lora_A["default"].weight.data, requires_grad=True)
    b = Tensor(layer.lora_B["default"].weight.data, requires_grad=True)

    def run(x_, a_, b_):
        layer.lora_A["default"].weight, layer.lora_B["default"].weight = a_, b_
        return layer(x_)
    gradcheck(run, x, a, b)


def _tiny_qlora(xp, b_scale=1.0):
    model = Tiny(xp)
    quantize_model(model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora_model = get_lora_model(model, config, seed=5)
    for _, p in lora_model.named_parameters():
        if "lora_B" in _:
            p.data = p.data * b_scale
    return lora_model


def test_only_adapters_train_on_a_4bit_base(xp):
    lora_model = _tiny_qlora(xp)
    names = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    ids = xp.asarray([[1, 2, 3, 4]])
    loss = (lora_model(ids) * lora_model(ids)).mean()
    loss.backward()
    assert all(p.grad is not None for n, p in lora_model.named_parameters() if p.requires_grad)


def test_merge_and_unload_float_equals_unmerged_output(xp):
    lora_model = _tiny_qlora(xp)
    ids = xp.asarray([[3, 1, 4, 1, 5]])
    before = host(lora_model(ids))
    model = lora_model.merge_and_unload()
    q_proj = model.blocks[0].q_proj
    assert type(q_proj) is nn.Linear and isinstance(model.blocks[0].mlp, Linear4bit)
    np.testing.assert_allclose(host(model(ids)), before, rtol=1e-5, atol=1e-6)


def test_requantized_merge_reports_a_large_update_as_surviving(xp):
    lora_model = _tiny_qlora(xp, b_scale=1.0)
    ids = xp.asarray([[3, 1, 4, 1, 5]])
    before = host(lora_model(ids))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cosine warning for an update this large
        model, report = lora_model.merge_and_unload(requantize=True)
    assert sorted(report) == [f"blocks.{i}.{n}" for i in range(2) for n in ("q_proj", "v_proj")]
    assert isinstance(model.blocks[0].q_proj, Linear4bit)
    for row in report.values():
        assert row["update_cosine"] > 0.9 and 0.0 < row["relative_error"] < 0.15
    assert np.abs(host(model(ids)) - before).mean() < 0.25 * np.abs(before).mean()  # 4-bit rounding, 2 layers


def test_requantized_merge_warns_when_the_update_is_rounded_away(xp):
    lora_model = _tiny_qlora(xp, b_scale=1e-5)
    with pytest.warns(UserWarning, match="cosine"):
        _, report = lora_model.merge_and_unload(requantize=True)
    assert all(row["update_cosine"] < 0.5 for row in report.values())


def test_requantize_report_numbers(xp):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    d = (0.3 * rng.standard_normal((16, 64))).astype(np.float32)
    base = Linear4bit(*quantize_4bit(xp.asarray(w)))
    layer, row = requantize_merge(base, xp.asarray(d))
    w0, w1 = host(base.dequantize()).astype(np.float64), host(layer.dequantize()).astype(np.float64)
    exact = w0 + d
    survived = w1 - w0
    assert row["relative_error"] == pytest.approx(np.linalg.norm(w1 - exact) / np.linalg.norm(exact), rel=1e-6)
    cos = (survived * d).sum() / (np.linalg.norm(survived) * np.linalg.norm(d))
    assert row["update_cosine"] == pytest.approx(cos, rel=1e-6)
    assert row["update_norm_ratio"] == pytest.approx(np.linalg.norm(survived) / np.linalg.norm(d), rel=1e-6)
    zero = requantize_report(xp.asarray(w), xp.zeros((16, 64), dtype=xp.float32), xp.asarray(w))
    assert zero["update_cosine"] == 1.0 and zero["relative_error"] == 0.0
