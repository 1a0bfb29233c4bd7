"""LoraConfig: PEFT's names and defaults, validation messages, JSON form, target matching rules."""
from __future__ import annotations

import math

import pytest

from minilora.lora import LoraConfig, config_from_dict, lora_scaling
from minilora.lora.config import pattern_key
from minilora.lora.inject import layer_index, matches


def test_peft_defaults():
    c = LoraConfig()
    assert (c.r, c.lora_alpha, c.lora_dropout, c.bias, c.init_lora_weights) == (8, 8, 0.0, "none", True)
    assert c.target_modules is None and c.exclude_modules is None and c.modules_to_save is None
    assert c.use_rslora is False and c.rank_pattern == {} and c.alpha_pattern == {}
    assert c.layers_to_transform is None and c.peft_type == "LORA" and c.task_type == "CAUSAL_LM"


@pytest.mark.parametrize("field,value", [
    ("r", 0), ("r", -2), ("r", 2.5), ("r", True), ("lora_alpha", 0), ("lora_alpha", -1.0),
    ("lora_alpha", float("inf")), ("lora_dropout", 1.0), ("lora_dropout", -0.1), ("lora_dropout", "0.1"),
    ("bias", "some"), ("init_lora_weights", "pissa_niter_x"), ("init_lora_weights", "loftq "), ("target_modules", []), ("target_modules", [3]),
    ("target_modules", "q_proj("), ("rank_pattern", {"q": 0}), ("alpha_pattern", {"q": -1}),
    ("layers_to_transform", [-1]), ("modules_to_save", "lm_head"), ("use_dora", "yes"), ("loftq_config", [2]), ("fan_in_fan_out", True),
])
def test_invalid_values_name_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"LoraConfig.{field}") as err:
        LoraConfig(**{field: value})
    shown = list(value.values())[0] if isinstance(value, dict) else value
    assert repr(shown) in str(err.value) or value == []  # the value found is in the message


def test_scaling_and_patterns():
    assert lora_scaling(16, 4, False) == 4.0
    assert lora_scaling(16, 4, True) == 8.0
    c = LoraConfig(r=4, lora_alpha=8, use_rslora=True, rank_pattern={r"layers\.0\.q_proj": 16},
                   alpha_pattern={"v_proj": 2})
    assert c.rank_for("model.layers.0.q_proj") == 16 and c.rank_for("model.layers.10.q_proj") == 4
    assert c.scaling_for("model.layers.0.q_proj") == 8 / math.sqrt(16)
    assert c.alpha_for("a.v_proj") == 2 and c.alpha_for("a.xv_proj") == 8
    assert pattern_key({"q": 1}, "q") == "q" and pattern_key({"q": 1}, "xq") is None


def test_matching_rules():
    assert matches(["q_proj"], "model.layers.0.self_attn.q_proj")
    assert matches(["q_proj"], "q_proj")
    assert not matches(["q_proj"], "model.layers.0.self_attn.xq_proj")
    assert matches(["self_attn.q_proj"], "model.layers.0.self_attn.q_proj")
    assert matches(r".*\.q_proj", "model.layers.0.q_proj")
    assert not matches(r"q_proj", "model.layers.0.q_proj")  # a string is a full-match regex
    assert layer_index("model.layers.12.mlp.up_proj", None) == 12
    assert layer_index("layers.3.q_proj", ["layers"]) == 3
    assert layer_index("model.h.3.q_proj", ["layers"]) is None
    assert layer_index("lm_head", None) is None


def test_json_form_round_trips_and_unknown_keys_warn():
    c = LoraConfig(r=4, target_modules=["v_proj", "q_proj"], rank_pattern={"q": 2})
    d = c.to_dict()
    assert d["peft_type"] == "LORA" and d["target_modules"] == ["q_proj", "v_proj"]
    assert config_from_dict(d) == c
    d["eva_config"] = {"rho": 2.0}
    with pytest.warns(UserWarning, match="eva_config"):
        assert config_from_dict(d) == c
    with pytest.raises(ValueError, match="peft_type"):
        config_from_dict({**d, "peft_type": "PREFIX_TUNING"})
    assert LoraConfig(target_modules={"a", "b"}).target_modules == ["a", "b"]
    assert LoraConfig(layers_to_transform=2).layers_to_transform == [2]


def test_peft_written_defaults_load_without_warnings():
    """Fields PEFT 0.21 writes at their defaults mean nothing here and are dropped silently."""
    import warnings
    peft_extra = {"alora_invocation_tokens": None, "arrow_config": None, "auto_mapping": None, "corda_config": None,
                  "ensure_weight_tying": False, "eva_config": None, "layer_replication": None, "loftq_config": {},
                  "megatron_config": None, "megatron_core": "megatron.core", "peft_version": "0.21.2",
                  "qalora_group_size": 16, "target_parameters": None, "trainable_token_indices": None,
                  "use_qalora": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = config_from_dict({**LoraConfig(r=3, target_modules=["q_proj"]).to_dict(), **peft_extra})
    assert c.r == 3
    with pytest.warns(UserWarning, match="use_qalora"):
        config_from_dict({**c.to_dict(), "use_qalora": True})


def test_weight_aware_inits_and_dora_are_accepted():
    assert LoraConfig(init_lora_weights="pissa_niter_4").init_lora_weights == "pissa_niter_4"
    assert LoraConfig(init_lora_weights="olora", use_dora=True).use_dora is True
    c = LoraConfig(init_lora_weights="loftq", loftq_config={"loftq_iter": 3})
    assert c.loftq_config == {"loftq_bits": 4, "loftq_iter": 3}  # PEFT's LoftQConfig names, defaults filled
    assert LoraConfig.from_dict(c.to_dict()).loftq_config == c.loftq_config
    with pytest.raises(ValueError, match="LoraConfig.loftq_config.loftq_bits"):
        LoraConfig(init_lora_weights="loftq", loftq_config={"loftq_bits": 2})
