"""Mixed-adapter batches: model(ids, adapter_names=[...]), one adapter per row (issue 15.3)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.errors import ConfigError
from minilora.lora import LoraConfig, get_lora_model
from minilora.models import ModelConfig, Transformer, generate
from minilora.tensor import no_grad

NAMES = ["default", "dora", "emb", "__base__"]


def tiny_model():
    config = ModelConfig(style="llama", vocab_size=37, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0)
    return Transformer(config, dtype="float64")


def adapted():
    """Three adapters of different kinds: plain LoRA, DoRA, and one that also adapts the embedding."""
    model = get_lora_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False), seed=1)
    model.add_adapter("dora", LoraConfig(r=3, target_modules=["q_proj", "o_proj"], use_dora=True,
                                         init_lora_weights=False))
    model.add_adapter("emb", LoraConfig(r=2, target_modules=["embed_tokens", "down_proj"], init_lora_weights=False))
    for _, layer in [(p, m) for p, m in model.named_modules() if hasattr(m, "lora_magnitude_vector")]:
        for name in layer.lora_magnitude_vector.keys():
            layer.lora_magnitude_vector[name].data = layer.lora_magnitude_vector[name].data * 1.1
    return model


MODEL = adapted()


def alone(model, ids_row, name):
    with no_grad():
        if name == "__base__":
            with model.disable_adapter():
                return model(ids_row).numpy()
        model.set_adapter(name)
        return model(ids_row).numpy()


@settings(max_examples=10)
@given(names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=4), seed=st.integers(0, 100))
def test_each_row_equals_running_it_alone_with_its_adapter(names, seed):
    ids = np.random.default_rng(seed).integers(0, 37, (len(names), 5))
    with no_grad():
        mixed = MODEL(ids, adapter_names=names).numpy()
    for i, name in enumerate(names):
        np.testing.assert_allclose(mixed[i:i + 1], alone(MODEL, ids[i:i + 1], name), rtol=1e-12, atol=1e-12)
    MODEL.set_adapter("default")


def test_generate_gives_each_prompt_its_adapter():
    ids = np.random.default_rng(4).integers(0, 37, (3, 4))
    names = ["dora", "__base__", "default"]
    out = generate(MODEL, ids, 5, adapter_names=names)
    for i, name in enumerate(names):
        if name == "__base__":
            with MODEL.disable_adapter():
                expected = generate(MODEL, ids[i:i + 1], 5)
        else:
            MODEL.set_adapter(name)
            expected = generate(MODEL, ids[i:i + 1], 5)
        np.testing.assert_array_equal(out[i:i + 1], expected)
    MODEL.set_adapter("default")


def test_refused_while_merged_and_with_bad_names():
    model = adapted()
    ids = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ConfigError, match="one per row"):
        model(ids, adapter_names=["default"])
    with pytest.raises(ConfigError, match="unknown adapter.*nope"):
        model(ids, adapter_names=["default", "nope"])
    with pytest.raises(ConfigError, match="list"):
        model(ids, adapter_names="default")
    model.merge_adapter()
    with pytest.raises(ConfigError, match="merged"):
        model(ids, adapter_names=["default", "__base__"])
    model.unmerge_adapter()
    with no_grad():
        model(ids, adapter_names=["default", "__base__"])
    assert all(getattr(m, "row_adapters", None) is None for m in model.modules())  # nothing left behind


def test_disabled_adapters_win_over_adapter_names():
    ids = np.random.default_rng(2).integers(0, 37, (2, 4))
    with no_grad(), MODEL.disable_adapter():
        np.testing.assert_array_equal(MODEL(ids, adapter_names=["dora", "emb"]).numpy(), MODEL(ids).numpy())
