"""PiSSA / OLoRA / LoftQ inits on models, and save_adapter's conversion for the untouched base (issue 15.2)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from minilora import backend, nn
from minilora.errors import ConfigError
from minilora.lora import LoraConfig, get_lora_model, load_adapter, save_adapter
from minilora.quant.convert import quantize_model
from minilora.quant.linear4bit import Linear4bit
from minilora.quant.quantize import dequantize_4bit, quantize_4bit
from minilora.tensor import Tensor


class Tiny(nn.Module):
    def __init__(self, seed=0, dtype="float64"):
        rng = backend.Random(seed)
        self.q_proj = nn.Linear(64, 16, dtype=dtype, rng=rng)
        self.v_proj = nn.Linear(16, 64, bias=False, dtype=dtype, rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


X = Tensor(np.random.default_rng(0).standard_normal((3, 64)))
TARGETS = ["q_proj", "v_proj"]


def train_a_little(model, seed=1):
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data + 0.05 * rng.standard_normal(p.shape)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_3", "olora"])
@pytest.mark.parametrize("rslora", [False, True])
def test_weight_aware_init_keeps_the_model_output(init, rslora):
    base_out = Tiny()(X).numpy()
    w0 = {n: Tiny().get_submodule(n).weight.data for n in TARGETS}
    model = get_lora_model(Tiny(), LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, target_modules=TARGETS,
                                              init_lora_weights=init), seed=2)
    for name in TARGETS:
        layer = model.model.get_submodule(name)
        rebuilt = layer.base_layer.weight.data + layer.delta_weight("default")
        np.testing.assert_allclose(rebuilt, w0[name], atol=2e-6 * np.abs(w0[name]).max())  # float32 rounding
        assert not np.allclose(layer.base_layer.weight.data, w0[name], atol=1e-3)  # the base holds the residual
    np.testing.assert_allclose(model(X).numpy(), base_out, atol=1e-5)


def test_pissa_over_a_4bit_base_requantizes_the_residual():
    base = Tiny(dtype="float32")
    quantize_model(base, target_modules=TARGETS, double_quant=True)
    before = base.q_proj.dequantize()
    model = get_lora_model(base, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="pissa"))
    layer = model.model.q_proj
    assert isinstance(layer.base_layer, Linear4bit) and layer.base_layer.quant_state.nested  # same settings
    residual = before - layer.delta_weight("default")  # W0 (dequantized) minus PiSSA's principal part
    np.testing.assert_allclose(layer.base_layer.dequantize(),
                               dequantize_4bit(*quantize_4bit(residual, double_quant=True)), atol=1e-6)


def test_loftq_quantizes_the_targets_and_beats_plain_quantization():
    float_model = Tiny(dtype="float32")
    w = {n: float_model.get_submodule(n).weight.data.copy() for n in TARGETS}
    model = get_lora_model(Tiny(dtype="float32"), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                             init_lora_weights="loftq",
                                                             loftq_config={"loftq_iter": 3}))
    for name in TARGETS:
        layer = model.model.get_submodule(name)
        assert isinstance(layer.base_layer, Linear4bit) and not layer.base_layer.quant_state.nested
        plain = np.linalg.norm(w[name] - dequantize_4bit(*quantize_4bit(w[name], double_quant=False)))
        loftq = np.linalg.norm(w[name] - (layer.base_layer.dequantize() + layer.delta_weight("default")))
        assert loftq < plain
    quantized = Tiny(dtype="float32")
    quantize_model(quantized, target_modules=TARGETS)
    with pytest.raises(ConfigError, match="loftq.*float weights"):
        get_lora_model(quantized, LoraConfig(target_modules=TARGETS, init_lora_weights="loftq"))


@pytest.mark.parametrize("init,rslora", [("pissa", False), ("olora", True), ("pissa_niter_2", False)])
def test_converted_adapter_applies_to_the_untouched_base(tmp_path, init, rslora):
    model = get_lora_model(Tiny(), LoraConfig(r=4, lora_alpha=6, use_rslora=rslora, target_modules=TARGETS,
                                              init_lora_weights=init), seed=5)
    save_adapter(model, tmp_path / "initial")
    train_a_little(model)
    trained = model(X).numpy()
    # as saved, the adapter re-runs its init on a fresh base (the residual again) and then applies
    save_adapter(model, tmp_path / "as_is")
    np.testing.assert_allclose(load_adapter(Tiny(), tmp_path / "as_is", seed=5)(X).numpy(), trained, atol=1e-6)
    save_adapter(model, tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "initial")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["init_lora_weights"]) == (8, True)
    assert config["lora_alpha"] == pytest.approx(6 * (2 ** 0.5 if rslora else 2))
    fresh = Tiny()
    loaded = load_adapter(fresh, tmp_path / "lora")
    np.testing.assert_array_equal(loaded.model.q_proj.base_layer.weight.data, Tiny().q_proj.weight.data)
    np.testing.assert_allclose(loaded(X).numpy(), trained, atol=1e-6)


def test_conversion_refuses_dora_and_mismatched_initial_folders_before_writing(tmp_path):
    model = get_lora_model(Tiny(), LoraConfig(r=2, target_modules=TARGETS, init_lora_weights="pissa", use_dora=True))
    save_adapter(model, tmp_path / "initial")
    with pytest.raises(ConfigError, match="DoRA"):
        save_adapter(model, tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "initial")
    other = get_lora_model(Tiny(), LoraConfig(r=3, target_modules=TARGETS, init_lora_weights="pissa"))
    with pytest.raises(ConfigError, match="initial"):
        save_adapter(other, tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "initial")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("options,named", [(dict(init_lora_weights="olora"), "init_lora_weights='olora'"),
                                           (dict(use_dora=True), "use_dora")])
def test_dora_and_weight_aware_inits_refuse_embeddings_before_changing_the_model(options, named):
    class WithEmbedding(nn.Module):
        def __init__(self):
            self.embed = nn.Embedding(5, 4, dtype="float64", rng=backend.Random(0))
            self.proj = nn.Linear(4, 4, dtype="float64", rng=backend.Random(1))
    model = WithEmbedding()
    with pytest.raises(ConfigError, match=f"{named} applies to Linear layers only.*embed"):
        get_lora_model(model, LoraConfig(r=2, target_modules=["embed", "proj"], **options))
    assert isinstance(model.proj, nn.Linear)
