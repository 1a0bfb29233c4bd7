"""Linear4bit, quantize_model and the memory report."""
from __future__ import annotations

import numpy as np
import pytest

from minilora import backend, nn
from minilora.quant import Linear4bit, dequantize_4bit, linear_4bit, model_memory_report, quantize_model
from minilora.quant.linear4bit import LINEAR_4BIT
from minilora.tensor import PRIMITIVES, Tensor
from minilora.testing import gradcheck


def host(a):
    return np.asarray(backend.to_numpy(a.data if isinstance(a, Tensor) else a))


def make_linear(xp, d_in=96, d_out=40, bias=True, seed=0):
    return nn.Linear(d_in, d_out, bias=bias, rng=backend.Random(seed, xp=xp))


@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_matmul_with_the_dequantized_weight(xp, bias):
    lin = make_linear(xp, bias=bias)
    q = Linear4bit.from_linear(lin, quant_type="nf4", blocksize=64, double_quant=True)
    x = Tensor(backend.Random(1, xp=xp).normal((2, 3, 96)))
    w = q.dequantize()
    expected = host(x) @ host(w).T + (host(lin.bias) if bias else 0)
    np.testing.assert_allclose(host(q(x)), expected, rtol=1e-5, atol=1e-5)
    assert host(w).tobytes() == host(dequantize_4bit(q.weight, q.quant_state)).tobytes()
    assert q(x).shape == (2, 3, 40) and q.in_features == 96 and q.out_features == 40


def test_quantized_weight_is_close_to_the_float_weight(xp):
    lin = make_linear(xp, d_in=256, d_out=64)
    q = Linear4bit.from_linear(lin)
    rel = np.linalg.norm(host(q.dequantize()) - host(lin.weight)) / np.linalg.norm(host(lin.weight))
    assert rel < 0.12  # NF4 keeps about 3 significant bits per weight


def test_gradients_flow_to_the_input_and_none_to_the_weight(xp):
    lin = make_linear(xp, d_in=64, d_out=32)
    q = Linear4bit.from_linear(lin)
    assert q.parameters() == [q.bias] and not q.bias.requires_grad and q.trainable_parameters() == []
    x = Tensor(backend.Random(2, xp=xp).normal((5, 64)), requires_grad=True)
    g = backend.Random(3, xp=xp).normal((5, 32))
    q(x).backward(g)
    np.testing.assert_allclose(host(x.grad), host(g) @ host(q.dequantize()), rtol=1e-5, atol=1e-5)
    assert q.bias.grad is None


def test_gradcheck_through_linear4bit_in_float64(xp):
    """The private primitive gets its VJP check here (it is not in the global registry)."""
    assert "linear_4bit" not in PRIMITIVES and LINEAR_4BIT.name == "linear_4bit"
    q = Linear4bit.from_linear(make_linear(xp, d_in=40, d_out=24))
    x = Tensor(xp.astype(backend.Random(4, xp=xp).normal((3, 40)), xp.float64), requires_grad=True)
    b = Tensor(xp.astype(backend.Random(5, xp=xp).normal((24,)), xp.float64), requires_grad=True)
    gradcheck(lambda x_, b_: linear_4bit(x_, q.weight, q.quant_state, b_), x, b)


def test_no_float_weight_is_kept_alive_between_calls(xp):
    q = Linear4bit.from_linear(make_linear(xp))
    x = Tensor(backend.Random(6, xp=xp).normal((4, 96)), requires_grad=True)
    y = q(x)
    cells = [c.cell_contents for c in y._vjp.__closure__]
    arrays = [c for c in cells if type(c).__module__.split(".")[0] in backend.BACKENDS]
    float_arrays = [c for c in arrays if "float" in str(c.dtype)]
    assert any("uint8" in str(c.dtype) for c in arrays)
    assert float_arrays == []  # the backward closure holds the packed weight and state, no float W
    y.backward(backend.Random(7, xp=xp).normal((4, 40)))
    assert y._vjp is None  # graph freed


def test_frozen_input_records_no_graph(xp):
    q = Linear4bit.from_linear(make_linear(xp))
    y = q(Tensor(backend.Random(8, xp=xp).normal((2, 96))))
    assert not y.requires_grad and y._vjp is None


def test_constructor_validates_shapes(xp):
    q = Linear4bit.from_linear(make_linear(xp))
    with pytest.raises(ValueError, match="packed must be uint8"):
        Linear4bit(q.weight[:-1], q.quant_state)
    with pytest.raises(ValueError, match="bias must have shape"):
        Linear4bit(q.weight, q.quant_state, bias=xp.zeros((3,), dtype=xp.float32))
    with pytest.raises(ValueError, match="input has 95 features"):
        q(Tensor(xp.zeros((1, 95), dtype=xp.float32)))


# ---------------------------------------------------------------- quantize_model and memory
class Tiny(nn.Module):
    def __init__(self, xp):
        rng = backend.Random(0, xp=xp)
        self.embed = nn.Embedding(50, 64, rng=rng)
        self.blocks = nn.ModuleList([nn.Module() for _ in range(2)])
        for block in self.blocks:
            block.q_proj = nn.Linear(64, 64, bias=False, rng=rng)
            block.v_proj = nn.Linear(64, 64, bias=False, rng=rng)
            block.mlp = nn.Linear(64, 128, rng=rng)
        self.lm_head = nn.Linear(64, 50, bias=False, rng=rng)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = block.mlp(block.q_proj(h) + block.v_proj(h))[..., :64]
        return self.lm_head(h)


def test_quantize_model_replaces_linears_but_not_embeddings_or_lm_head(xp):
    model = Tiny(xp)
    done = quantize_model(model)
    assert sorted(done) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in ("q_proj", "v_proj", "mlp"))
    assert isinstance(model.embed, nn.Embedding) and type(model.lm_head) is nn.Linear
    assert all(isinstance(model.get_submodule(p), Linear4bit) for p in done)
    assert model(xp.asarray([[1, 2, 3]])).shape == (1, 3, 50)


def test_quantize_model_targets_by_suffix_and_regex(xp):
    model = Tiny(xp)
    assert sorted(quantize_model(model, target_modules=["q_proj", "v_proj"])) == [
        "blocks.0.q_proj", "blocks.0.v_proj", "blocks.1.q_proj", "blocks.1.v_proj"]
    model = Tiny(xp)
    assert quantize_model(model, target_modules=r"blocks\.1\.mlp", quant_type="fp4") == ["blocks.1.mlp"]
    assert model.blocks[1].mlp.quant_state.quant_type == "fp4"
    with pytest.raises(ValueError, match="no Linear layer matches"):
        quantize_model(Tiny(xp), target_modules=["k_proj"])


def test_memory_report_nf4_double_quant_within_4_13_bits(xp):
    model = nn.Module()
    model.proj = nn.Linear(1024, 1024, bias=False, rng=backend.Random(0, xp=xp))
    quantize_model(model)
    report = model_memory_report(model)
    layer = report["quantized_layers"]["proj"]
    n = 1024 * 1024
    assert layer["bytes"] == {"packed": n // 2, "absmax": n // 64, "absmax2": 4 * n // (64 * 256), "offset": 4}
    assert layer["bits_per_param"] <= 4.13 and abs(layer["bits_per_param"] - (4 + 8 / 64 + 32 / 16384)) < 1e-4
    assert report["shared_codes_bytes"] == 4 * (16 + 256)
    assert report["total_bytes"] == layer["total_bytes"] + 4 * (16 + 256)


def test_memory_report_counts_shared_codes_once_and_float_parameters(xp):
    model = Tiny(xp)
    quantize_model(model)
    report = model_memory_report(model)
    assert len(report["quantized_layers"]) == 6 and report["shared_codes_bytes"] == 4 * (16 + 256)
    float_params = 50 * 64 + 2 * 128 + 64 * 50  # embedding, mlp biases, lm_head
    assert report["float"] == {"params": float_params, "bytes": 4 * float_params}
    assert report["quantized"]["bits_per_param"] < 4.2
    no_dq = Tiny(xp)
    quantize_model(no_dq, double_quant=False)
    plain = model_memory_report(no_dq)["quantized_layers"]["blocks.0.q_proj"]
    assert plain["bits_per_param"] == 4 + 32 / 64
