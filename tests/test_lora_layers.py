"""LoRALinear / LoRAEmbedding: the properties of issue 3 over drawn shapes, on every backend."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from minilora import backend, nn
from minilora.lora import LoRAEmbedding, LoRALinear
from minilora.tensor import Tensor
from minilora.testing import gradcheck, lora_dims, shapes

TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-6)}


def close(a, b, dtype="float64"):
    np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), **TOL[dtype])


def make_layer(xp, d_in, d_out, r, alpha=8.0, rslora=False, dtype="float64", seed=0, init=False, name="default"):
    base = nn.Linear(d_in, d_out, dtype=getattr(xp, dtype), rng=backend.Random(seed, xp))
    layer = LoRALinear(base, rng_seed=seed)
    layer.update_layer(name, r, alpha, 0.0, init_lora_weights=init, use_rslora=rslora, seed=seed + 1)
    layer.active_adapters = [name]
    return layer


def inputs(xp, batch, d_in, dtype="float64", seed=3):
    return Tensor(backend.Random(seed, xp).normal(tuple(batch) + (d_in,), dtype=getattr(xp, dtype)))


def reference_delta(layer, name="default"):
    """scaling * B @ A in float64 NumPy: the oracle."""
    a = backend.to_numpy(layer.lora_A[name].weight.data).astype(np.float64)
    b = backend.to_numpy(layer.lora_B[name].weight.data).astype(np.float64)
    return layer.scaling[name] * (b @ a)


params = dict(dims=lora_dims(), alpha=st.sampled_from([1.0, 8.0, 16.0, 0.5]), rslora=st.booleans(),
              batch=shapes(min_dims=0, max_dims=2, max_side=3), dtype=st.sampled_from(["float64", "float32"]))


@settings(max_examples=20)
@given(**params)
def test_forward_matches_numpy_oracle_and_merge_is_exact(xp, dims, alpha, rslora, batch, dtype):
    d_in, d_out, r = dims
    layer = make_layer(xp, d_in, d_out, r, alpha, rslora, dtype)
    expected_scaling = alpha / math.sqrt(r) if rslora else alpha / r
    assert layer.scaling["default"] == pytest.approx(expected_scaling)
    x = inputs(xp, batch, d_in, dtype)
    w0 = backend.to_numpy(layer.base_layer.weight.data).copy()
    y = layer(x)
    xn = backend.to_numpy(x.data).astype(np.float64)
    oracle = xn @ (w0.astype(np.float64) + reference_delta(layer)).T + backend.to_numpy(layer.base_layer.bias.data)
    close(y.data, oracle, dtype)
    base_out = layer.base_layer(x)
    assert not np.allclose(backend.to_numpy(y.data), backend.to_numpy(base_out.data), rtol=1e-7, atol=1e-9)

    layer.merge()
    close(layer(x).data, y.data, dtype)  # merged == unmerged
    merged_once = backend.to_numpy(layer.base_layer.weight.data).copy()
    assert layer.merge() == ["default"]  # merging twice is refused ...
    assert np.array_equal(backend.to_numpy(layer.base_layer.weight.data), merged_once)  # ... and changes nothing
    layer.unmerge()
    close(layer.base_layer.weight.data, w0, dtype)  # unmerge(merge(W)) == W0
    close(layer(x).data, y.data, dtype)


@settings(max_examples=15)
@given(dims=lora_dims(), batch=shapes(min_dims=1, max_dims=2, max_side=3))
def test_default_init_is_exactly_the_base(xp, dims, batch):
    d_in, d_out, r = dims
    layer = make_layer(xp, d_in, d_out, r, init=True)
    assert not bool(xp.any(layer.lora_B["default"].weight.data != 0))
    x = inputs(xp, batch, d_in)
    assert np.array_equal(backend.to_numpy(layer(x).data), backend.to_numpy(layer.base_layer(x).data))


@settings(max_examples=15)
@given(dims=lora_dims(), batch=shapes(min_dims=1, max_dims=2, max_side=3))
def test_two_active_adapters_add_and_merge_in_any_order(xp, dims, batch):
    d_in, d_out, r = dims
    layer = make_layer(xp, d_in, d_out, r, alpha=4.0)
    layer.update_layer("other", max(1, r - 1) if r > 1 else 1, 2.0, init_lora_weights=False, seed=9)
    layer.active_adapters = ["default", "other"]
    x = inputs(xp, batch, d_in)
    w0 = backend.to_numpy(layer.base_layer.weight.data).astype(np.float64)
    total = w0 + reference_delta(layer, "default") + reference_delta(layer, "other")
    oracle = backend.to_numpy(x.data) @ total.T + backend.to_numpy(layer.base_layer.bias.data)
    close(layer(x).data, oracle)
    layer.merge(["default", "other"])
    w_ab = backend.to_numpy(layer.base_layer.weight.data).copy()
    layer.unmerge()
    assert layer.merged_adapters == []
    layer.merge(["other", "default"])
    close(layer.base_layer.weight.data, w_ab)
    close(w_ab, total)


def test_unmerge_is_last_in_first_out(xp):
    layer = make_layer(xp, 5, 4, 2)
    layer.update_layer("b", 2, 1.0, init_lora_weights=False, seed=5)
    layer.merge(["default"])
    layer.merge(["b"])
    assert layer.merged_adapters == ["default", "b"]
    layer.unmerge(keep=1)
    assert layer.merged_adapters == ["default"]
    w0_plus_a = backend.to_numpy(layer.base_layer.weight.data)
    layer.unmerge()
    close(w0_plus_a, backend.to_numpy(layer.base_layer.weight.data) + reference_delta(layer))


@settings(max_examples=10)
@given(dims=lora_dims(max_dim=6), batch=shapes(min_dims=1, max_dims=2, max_side=3))
def test_adapter_gradients_match_finite_differences_and_base_gets_none(xp, dims, batch):
    d_in, d_out, r = dims
    layer = make_layer(xp, d_in, d_out, r, alpha=3.0)
    layer.base_layer.freeze()
    x = inputs(xp, batch, d_in)
    a = Tensor(layer.lora_A["default"].weight.data, requires_grad=True)
    b = Tensor(layer.lora_B["default"].weight.data, requires_grad=True)

    def f(x_, a_, b_):
        layer.lora_A["default"].weight, layer.lora_B["default"].weight = a_, b_
        return layer(x_)
    gradcheck(f, x, a, b)
    out = make_layer(xp, d_in, d_out, r, alpha=3.0)
    out.base_layer.freeze()
    out(x).sum().backward()
    assert out.base_layer.weight.grad is None and out.base_layer.bias.grad is None
    assert out.lora_A["default"].weight.grad is not None and out.lora_B["default"].weight.grad is not None


def test_forward_never_forms_b_times_a(xp):
    """The adapter path is two thin products: no (d_out, d_in) array appears in the forward graph."""
    layer = make_layer(xp, 7, 5, 2)
    layer.base_layer.freeze()
    y = layer(inputs(xp, (3,), 7))
    shapes_seen, stack = set(), [y]
    while stack:
        t = stack.pop()
        shapes_seen.add(t.shape)
        stack.extend(p for p in t._parents if p is not None)
    assert (3, 2) in shapes_seen  # the (N, r) intermediate
    assert (5, 7) not in shapes_seen  # no B @ A


def test_dropout_applies_to_the_adapter_input_only(xp):
    base = nn.Linear(6, 4, dtype=xp.float64, rng=backend.Random(0, xp))
    layer = LoRALinear(base, rng_seed=1)
    layer.update_layer("default", 3, 3.0, lora_dropout=0.5, init_lora_weights=False, seed=2)
    layer.active_adapters = ["default"]
    x = inputs(xp, (50,), 6)
    layer.train()
    y_train = backend.to_numpy(layer(x).data)
    base_out = backend.to_numpy(base(x).data)
    adapter_part = y_train - base_out
    a = backend.to_numpy(layer.lora_A["default"].weight.data)
    b = backend.to_numpy(layer.lora_B["default"].weight.data)
    # each row's adapter part is scaling * (mask * x / 0.5) A^T B^T for some 0/1 mask: solve per row
    xn = backend.to_numpy(x.data)
    full = layer.scaling["default"] * xn @ a.T @ b.T
    assert not np.allclose(adapter_part, full)  # dropout changed the adapter path
    layer.eval()
    close(layer(x).data, base_out + full)  # eval: no dropout; base path never dropped


@pytest.mark.parametrize("init", [True, "gaussian", False])
def test_init_kinds(xp, init):
    layer = make_layer(xp, 64, 48, 8, init=init)
    a = backend.to_numpy(layer.lora_A["default"].weight.data)
    b = backend.to_numpy(layer.lora_B["default"].weight.data)
    assert (np.count_nonzero(b) == 0) == (init is not False)
    if init == "gaussian":
        assert stats.kstest(a.ravel(), stats.norm(scale=1 / 8).cdf).pvalue > 1e-3


def test_a_init_is_uniform_kolmogorov_smirnov(xp):
    d_in = 50
    layer = make_layer(xp, d_in, 40, 16, init=True)
    a = backend.to_numpy(layer.lora_A["default"].weight.data).ravel()
    bound = 1 / math.sqrt(d_in)
    result = stats.kstest(a, stats.uniform(loc=-bound, scale=2 * bound).cdf)
    assert result.pvalue > 1e-3
    assert np.abs(a).max() <= bound
    wrong = stats.kstest(a, stats.uniform(loc=-2 * bound, scale=4 * bound).cdf)  # the test has power
    assert wrong.pvalue < 1e-3


def test_safe_merge_rejects_nan_and_inf_and_keeps_w0(xp):
    for bad in (float("nan"), float("inf")):
        layer = make_layer(xp, 4, 3, 2)
        w0 = backend.to_numpy(layer.base_layer.weight.data).copy()
        b = backend.to_numpy(layer.lora_B["default"].weight.data).copy()
        b[1, 0] = bad
        layer.lora_B["default"].weight.data = backend.from_numpy(b, xp)
        with pytest.raises(ValueError, match="NaN or Inf"):
            layer.merge(safe_merge=True)
        assert np.array_equal(backend.to_numpy(layer.base_layer.weight.data), w0)
        assert layer.merged_adapters == []


@settings(max_examples=15)
@given(v=st.integers(1, 9), c=st.integers(1, 6), r=st.integers(1, 4), ids_shape=shapes(min_dims=1, max_dims=2))
def test_embedding_adapter_peft_layout_and_merge(xp, v, c, r, ids_shape):
    base = nn.Embedding(v, c, dtype=xp.float64, rng=backend.Random(0, xp))
    layer = LoRAEmbedding(base)
    layer.update_layer("default", r, 2.0, init_lora_weights=True, seed=1)
    layer.active_adapters = ["default"]
    assert layer.lora_embedding_A["default"].shape == (r, v) and layer.lora_embedding_B["default"].shape == (c, r)
    assert not bool(xp.any(layer.lora_embedding_A["default"].data != 0))
    ids = backend.Random(2, xp).integers(0, v, ids_shape)
    assert np.array_equal(backend.to_numpy(layer(ids).data), backend.to_numpy(base(ids).data))
    a = backend.Random(3, xp).normal((r, v), dtype=xp.float64)
    layer.lora_embedding_A["default"].data = a
    an, bn, w0 = (backend.to_numpy(t) for t in (a, layer.lora_embedding_B["default"].data, base.weight.data))
    table = w0 + layer.scaling["default"] * (bn @ an).T  # (V, C)
    y = layer(ids)
    close(y.data, table[backend.to_numpy(ids)])
    layer.merge()
    close(base.weight.data, table)
    close(layer(ids).data, y.data)
    layer.unmerge()
    close(base.weight.data, w0)


class FakeLinear4bit(nn.Module):
    """Stands in for a 4-bit base: in/out features, forward, dequantize(), no float .weight."""

    def __init__(self, xp, d_in, d_out):
        self.in_features, self.out_features = d_in, d_out
        self._w = backend.Random(7, xp).normal((d_out, d_in), dtype=xp.float64)
        self.bias = None

    def dequantize(self):
        return self._w

    def forward(self, x):
        from minilora import functional as F
        return F.linear(x, Tensor(self._w))


def test_quantized_base_forward_and_merge_and_unload(xp):
    from minilora.lora import LoraConfig, get_lora_model

    class Holder(nn.Module):
        def __init__(self):
            self.q_proj = FakeLinear4bit(xp, 6, 5)

        def forward(self, x):
            return self.q_proj(x)
    model = get_lora_model(Holder(), LoraConfig(target_modules=["q_proj"], r=2, init_lora_weights=False))
    layer = model.model.q_proj
    assert isinstance(layer, LoRALinear)
    x = inputs(xp, (3,), 6)
    y = model(x)
    close(y.data, backend.to_numpy(x.data) @ (backend.to_numpy(layer.base_layer._w) + reference_delta(layer)).T)
    with pytest.raises(ValueError, match="quantized"):
        model.merge_adapter()
    assert layer.merged_adapters == []
    plain = model.merge_and_unload()
    assert isinstance(plain.q_proj, nn.Linear)
    close(plain(x).data, y.data)


def test_quantized_base_adapters_use_its_compute_dtype():
    """A dtype *instance* is falsy in NumPy (len 0): the compute dtype must still be honoured."""
    base = FakeLinear4bit(np, 4, 3)
    base.compute_dtype = np.dtype("float32")
    layer = LoRALinear(base)
    layer.update_layer("default", 2, 2.0, init_lora_weights=False)
    assert layer.lora_A["default"].weight.dtype == np.float32
    assert layer.lora_B["default"].weight.dtype == np.float32


@pytest.mark.parametrize("kind", ["linear", "embedding", "svd"])
def test_every_layer_class_gives_its_adapter_state_the_same_way(kind):
    """adapter_parameters = the parameter paths with the adapter name taken out (PEFT's saved
    suffixes), adapter_shapes agrees before any adapter exists, and an extra AdapterDict a variant
    adds is saved and deleted with the others."""
    from minilora.lora import AdapterDict, SVDLinear
    from minilora.nn import Parameter
    rng = backend.Random(0, np)
    base = nn.Embedding(9, 5, rng=rng) if kind == "embedding" else nn.Linear(5, 4, rng=rng)
    cls = {"linear": LoRALinear, "embedding": LoRAEmbedding, "svd": SVDLinear}[kind]
    layer = cls(base)
    expected = cls.adapter_shapes(base, 3)
    layer.update_layer("one", 3, 6.0, seed=1)
    layer.update_layer("two", 2, 4.0, seed=2)
    layer.lora_extra = AdapterDict()
    layer.lora_extra["one"] = Parameter(np.ones((4,)))
    params = layer.adapter_parameters("one")
    paths = {n.replace(".one", "", 1): p for n, p in layer.named_parameters() if ".one" in n}
    assert params == paths and {k: p.shape for k, p in params.items() if k != "lora_extra"} == expected
    assert set(expected) == {k for k in layer.adapter_parameters("two")}
    layer.delete_adapter("one")
    assert "one" not in layer.lora_extra and not any(".one" in n for n, _ in layer.named_parameters())
    assert all("one" not in getattr(layer, t) for t in layer.adapter_tables) and layer.adapter_names == ["two"]


def test_rank_and_base_checks_name_the_class():
    from minilora.lora import SVDLinear
    with pytest.raises(ValueError, match="LoRAEmbedding: base Linear has no integer num_embeddings"):
        LoRAEmbedding(nn.Linear(3, 2, rng=backend.Random(0, np)))
    with pytest.raises(ValueError, match="SVDLinear: base Embedding has no integer in_features"):
        SVDLinear(nn.Embedding(3, 2, rng=backend.Random(0, np)))
    layer = SVDLinear(nn.Linear(3, 2, rng=backend.Random(0, np)))
    with pytest.raises(ValueError, match="use_rslora does not apply"):
        layer.update_layer("x", 2, 4.0, 0.0, True, True)
