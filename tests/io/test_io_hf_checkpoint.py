"""Hugging Face checkpoint folders: save/load round trips (single file and shards) and clear failures."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from minilora.errors import FileFormatError, MiniloraError, MissingFileError
from minilora.io import (config_from_hf, config_to_hf, load_hf_checkpoint, load_model, resolve_model,
                         save_hf_checkpoint, save_safetensors)
from minilora.models import ModelConfig, Transformer
from minilora.tensor import no_grad

TINY = dict(vocab_size=48, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_theta=1000.0, norm_eps=1e-6,
            bos_token_id=0, eos_token_id=1)
IDS = np.array([[0, 5, 9, 33, 1, 7], [3, 3, 2, 47, 11, 0]])


def _logits(model):
    with no_grad():
        return model(IDS).data


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_identical_logits(tmp_path, tie):
    config = ModelConfig(**TINY, tie_word_embeddings=tie)
    model = Transformer(config, seed=5)
    save_hf_checkpoint(tmp_path / "ckpt", model)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    hf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["model_type"] == "llama"
    assert hf["torch_dtype"] == "float32" and hf["tie_word_embeddings"] is tie and hf["rms_norm_eps"] == 1e-6
    loaded_config, state = load_hf_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    assert ("lm_head.weight" in state) is (not tie)
    again = load_model(tmp_path / "ckpt")
    np.testing.assert_array_equal(_logits(again), _logits(model))


def test_sharded_checkpoint_with_index(tmp_path):
    config = ModelConfig(**TINY, tie_word_embeddings=False)
    model = Transformer(config, seed=2)
    state = model.state_dict()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    for file, keys in shards.items():
        save_safetensors(folder / file, {k: state[k] for k in keys}, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(config_to_hf(config)))
    np.testing.assert_array_equal(_logits(load_model(folder)), _logits(model))
    index["weight_map"][names[0]] = "../escape.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileFormatError, match="not a plain file name"):
        load_hf_checkpoint(folder)


def test_hf_config_keys_map_to_model_config():
    hf = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 3, "num_attention_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 5e5,
          "eos_token_id": [7, 8], "torch_dtype": "bfloat16", "unknown_future_key": 1}
    config = config_from_hf(hf)
    assert config.num_key_value_heads == 4 and config.tie_word_embeddings is False  # LlamaConfig defaults
    assert config.eos_token_id == 7 and config.rope_theta == 5e5 and config.norm_eps == 1e-5
    assert config_from_hf(config_to_hf(config)) == config


@pytest.mark.parametrize("change, match", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_attention_heads": 3}, "invalid model config"),
    ({"num_hidden_layers": "2"}, "invalid model config"),
    ({"rms_norm_eps": "tiny"}, "norm_eps"),
    ({"head_dim": 8}, "head_dim"),
])
def test_bad_configs_name_the_problem(change, match):
    hf = dict(config_to_hf(ModelConfig(**TINY)), **change)
    with pytest.raises(FileFormatError, match=match):
        config_from_hf(hf, "config.json")


def test_broken_folders_raise_minilora_errors(tmp_path):
    config = ModelConfig(**TINY)
    model = Transformer(config, seed=1)
    folder = tmp_path / "ckpt"
    save_hf_checkpoint(folder, model)
    with pytest.raises(MissingFileError):
        load_hf_checkpoint(tmp_path / "nope")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="not valid JSON") as info:
        load_hf_checkpoint(folder)
    assert "config.json" in str(info.value)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="JSON object"):
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config_to_hf(ModelConfig(**dict(TINY, hidden_size=32)))))
    with pytest.raises(FileFormatError, match="shape"):
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config_to_hf(config)))
    state = model.state_dict()
    state.pop("model.norm.weight")
    save_safetensors(folder / "model.safetensors", state)
    with pytest.raises(FileFormatError, match="missing weights"):
        load_hf_checkpoint(folder)
    save_safetensors(folder / "model.safetensors", dict(model.state_dict(), extra=np.zeros(2, np.float32)))
    with pytest.raises(FileFormatError, match="unexpected weight 'extra'"):
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config_to_hf(ModelConfig(**dict(TINY, num_hidden_layers=2**40)))))
    with pytest.raises(FileFormatError, match="missing weights"):  # fails fast, without listing 2**40 layers
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config_to_hf(config)))
    os.remove(folder / "model.safetensors")
    with pytest.raises(MissingFileError, match="model.safetensors"):
        load_hf_checkpoint(folder)


def test_save_refuses_a_state_that_does_not_fit(tmp_path):
    config = ModelConfig(**TINY)
    state = Transformer(config).state_dict()
    state["model.layers.0.self_attn.q_proj.base_layer.weight"] = state.pop("model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(ValueError, match="merged and unwrapped"):
        save_hf_checkpoint(tmp_path / "out", config=config, state=state)
    assert not (tmp_path / "out").exists()


def test_resolve_model_errors(tmp_path):
    with pytest.raises(MissingFileError, match="expected one of"):
        resolve_model(tmp_path / "nothing-here")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileFormatError, match="not a model"):
        resolve_model(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="config.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ValueError):
        resolve_model(42)
    assert issubclass(MissingFileError, MiniloraError)
