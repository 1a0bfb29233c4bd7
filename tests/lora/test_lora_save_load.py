"""PEFT-format adapter files: exact keys and JSON, bit-identical round trips, all-or-nothing loads."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from minilora import backend
from minilora.lora import (AdapterLoadError, LoraConfig, LoraModel, adapter_state_dict, get_lora_model,
                           load_adapter, save_adapter)
from test_lora_model import ToyLM, ids_for, out


def trained(xp, **cfg):
    cfg.setdefault("target_modules", ["q_proj", "v_proj"])
    cfg.setdefault("init_lora_weights", False)
    return get_lora_model(ToyLM(xp), LoraConfig(r=2, **cfg), seed=5)


def test_file_layout_keys_and_json_match_peft(xp, tmp_path):
    model = trained(xp, target_modules=["embed_tokens", "q_proj"], lora_alpha=16)
    save_adapter(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(
        [f"base_model.model.layers.{i}.q_proj.lora_{ab}.weight" for i in (0, 1) for ab in "AB"]
        + ["base_model.model.embed_tokens.lora_embedding_A", "base_model.model.embed_tokens.lora_embedding_B"])
    assert tensors["base_model.model.layers.0.q_proj.lora_A.weight"].shape == (2, 6)  # (r, d_in)
    assert tensors["base_model.model.layers.0.q_proj.lora_B.weight"].shape == (6, 2)  # (d_out, r)
    assert tensors["base_model.model.embed_tokens.lora_embedding_A"].shape == (2, 11)  # (r, V)
    assert tensors["base_model.model.embed_tokens.lora_embedding_B"].shape == (6, 2)  # (C, r)
    text = (tmp_path / "adapter_config.json").read_text()
    config = json.loads(text)
    assert text == json.dumps(config, indent=2, sort_keys=True)
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 2 and config["lora_alpha"] == 16 and config["lora_dropout"] == 0.0
    assert config["target_modules"] == ["embed_tokens", "q_proj"] and config["bias"] == "none"
    assert config["inference_mode"] is True and "base_model_name_or_path" in config
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path))  # temp files renamed away


def test_round_trip_is_bit_identical(xp, tmp_path):
    model = trained(xp, modules_to_save=["lm_head"], bias="all")
    copy = model.model.lm_head.modules_to_save["default"]
    copy.weight.data = copy.weight.data + 0.5
    ids = ids_for(xp)
    expected = out(model, ids)
    saved = adapter_state_dict(model)
    assert "base_model.model.lm_head.weight" in saved and "base_model.model.layers.0.q_proj.base_layer.bias" in saved
    # PEFT's bias="all" takes every *bias* parameter, the modules_to_save wrapper's included
    assert "base_model.model.lm_head.original_module.bias" in saved
    assert np.array_equal(saved["base_model.model.lm_head.modules_to_save.bias"], saved["base_model.model.lm_head.bias"])
    save_adapter(model, tmp_path)
    fresh = load_adapter(ToyLM(xp), tmp_path)
    assert isinstance(fresh, LoraModel)
    loaded = adapter_state_dict(fresh)
    assert sorted(loaded) == sorted(saved)
    for key, value in saved.items():
        assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value), key
    np.testing.assert_array_equal(out(fresh, ids), expected)
    assert not any(p.requires_grad for p in fresh.parameters())  # PEFT's default: loaded for inference
    trainable = load_adapter(ToyLM(xp), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_non_default_adapters_live_in_subfolders(xp, tmp_path):
    model = trained(xp)
    model.add_adapter("style", LoraConfig(r=3, target_modules=["v_proj"], init_lora_weights=False))
    save_adapter(model, tmp_path)
    assert (tmp_path / "style" / "adapter_model.safetensors").is_file()
    keys = load_file(tmp_path / "style" / "adapter_model.safetensors")
    assert all(".style" not in k for k in keys) and len(keys) == 4
    target = trained(xp)
    before = {k: v.copy() for k, v in adapter_state_dict(target).items()}
    load_adapter(target, tmp_path / "style", adapter_name="style")
    for k, v in adapter_state_dict(target, "style").items():
        np.testing.assert_array_equal(v, adapter_state_dict(model, "style")[k])
    for k, v in adapter_state_dict(target).items():
        np.testing.assert_array_equal(v, before[k])  # other adapters untouched
    load_adapter(target, tmp_path, adapter_name="default")  # overwrite an existing adapter in place
    for k, v in adapter_state_dict(target).items():
        np.testing.assert_array_equal(v, adapter_state_dict(model)[k])


def test_mismatch_lists_every_key_and_changes_nothing(xp, tmp_path):
    save_adapter(trained(xp), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    del tensors["base_model.model.layers.0.q_proj.lora_A.weight"]
    tensors["base_model.model.layers.1.v_proj.lora_B.weight"] = np.zeros((7, 2))
    tensors["base_model.model.layers.9.q_proj.lora_A.weight"] = np.zeros((2, 6))
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    target = trained(xp)
    state = {n: backend.to_numpy(p.data).copy() for n, p in target.named_parameters()}
    with pytest.raises(AdapterLoadError) as err:
        load_adapter(target, tmp_path, adapter_name="default")
    message = str(err.value)
    assert "missing key 'base_model.model.layers.0.q_proj.lora_A.weight' (expected shape (2, 6))" in message
    assert "'base_model.model.layers.1.v_proj.lora_B.weight': expected shape (6, 2), found (7, 2)" in message
    assert "unexpected key 'base_model.model.layers.9.q_proj.lora_A.weight'" in message
    for n, p in target.named_parameters():
        assert np.array_equal(backend.to_numpy(p.data), state[n])
    with pytest.raises(AdapterLoadError):
        load_adapter(target, tmp_path, adapter_name="fresh")  # a new adapter: not injected either
    assert "fresh" not in target.peft_config


def test_other_base_model_is_rejected(xp, tmp_path):
    save_adapter(trained(xp), tmp_path)
    with pytest.raises(AdapterLoadError, match=r"expected shape \(2, 8\), found \(2, 6\)"):
        load_adapter(ToyLM(xp, d=8), tmp_path)
    small = ToyLM(xp)
    for block in small.layers:
        del block.q_proj, block.v_proj
    with pytest.raises(AdapterLoadError, match="matches no module"):
        load_adapter(small, tmp_path)


def test_unknown_config_keys_warn_and_bad_names_are_refused(xp, tmp_path):
    model = trained(xp)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["future_option"] = 3
    config["megatron_config"] = None
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="future_option"):
        load_adapter(ToyLM(xp), tmp_path)
    for bad in ("../evil", "a/b", "..", "x\\y"):
        with pytest.raises(ValueError, match="adapter_name"):
            load_adapter(ToyLM(xp), tmp_path, adapter_name=bad)
    config["peft_type"] = "IA3"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="peft_type"):
        load_adapter(ToyLM(xp), tmp_path)


def test_missing_files_and_non_float_tensors(xp, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(ToyLM(xp), tmp_path)
    save_adapter(trained(xp), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.layers.0.q_proj.lora_A.weight"
    tensors[key] = tensors[key].astype(np.int64)
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match="not floating point"):
        load_adapter(ToyLM(xp), tmp_path)


def test_weighted_adapter_saves_and_reloads(xp, tmp_path):
    model = trained(xp)
    model.add_adapter("b", LoraConfig(r=1, target_modules=["q_proj"], init_lora_weights=False))
    model.add_weighted_adapter(["default", "b"], [0.5, 2.0], "mix")
    model.set_adapter("mix")
    ids = ids_for(xp)
    expected = out(model, ids)
    save_adapter(model, tmp_path, adapter_name="mix")
    fresh = load_adapter(ToyLM(xp), tmp_path / "mix", adapter_name="mix")
    np.testing.assert_allclose(out(fresh, ids), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=8)
@given(d=st.integers(1, 6), r_pick=st.integers(0, 5), dtype=st.sampled_from(["float64", "float32"]),
       targets=st.sampled_from([["q_proj"], ["v_proj", "embed_tokens"], "all-linear"]))
def test_round_trip_property(xp, tmp_path_factory, d, r_pick, dtype, targets):
    r = 1 + r_pick % d
    folder = tmp_path_factory.mktemp("adapter")
    model = get_lora_model(ToyLM(xp, d=d, dtype=getattr(xp, dtype)),
                           LoraConfig(r=r, target_modules=targets, init_lora_weights=False), seed=3)
    save_adapter(model, folder)
    fresh = load_adapter(ToyLM(xp, d=d, dtype=getattr(xp, dtype)), folder)
    saved, loaded = adapter_state_dict(model), adapter_state_dict(fresh)
    assert sorted(saved) == sorted(loaded)
    for key in saved:
        assert saved[key].dtype == loaded[key].dtype and np.array_equal(saved[key], loaded[key])
    ids = ids_for(xp)
    np.testing.assert_array_equal(out(fresh, ids), out(model, ids))
