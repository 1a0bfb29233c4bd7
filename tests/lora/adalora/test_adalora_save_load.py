"""AdaLoRA adapter files: PEFT's AdaLoRA format, sliced to the rank pattern, through the generic
save_adapter / load_adapter and the AdaLoRA-only wrappers."""
import json
import os

import numpy as np
import pytest

from minilora.lora import AdaLoraConfig, AdaLoraModel, get_lora_model, load_adapter, save_adapter
from minilora.lora import AdapterLoadError
from minilora.lora.adalora import SVDLinear, load_adalora_adapter, save_adalora_adapter
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer

from adalora_toy import Net, out, trained


def _base():
    return Transformer(ModelConfig(vocab_size=50, hidden_size=16, num_attention_heads=2), seed=3)


def test_adalora_round_trip_through_the_generic_functions(tmp_path):
    model = get_lora_model(_base(), AdaLoraConfig(total_step=10, init_r=4, target_r=2, init_lora_weights=False,
                                                  target_modules=["q_proj", "v_proj"]))
    ids = np.array([[1, 2, 3, 4, 5]])
    model.eval()
    expected = model(ids).numpy()
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA"
    loaded = load_adapter(_base(), tmp_path)
    assert isinstance(loaded, AdaLoraModel)
    loaded.eval()
    np.testing.assert_array_equal(loaded(ids).numpy(), expected)


def test_adapter_state_dict_is_what_the_file_holds_for_a_pruned_adalora_model(tmp_path):
    from safetensors.numpy import load_file
    from minilora.lora import adapter_state_dict
    model = get_lora_model(_base(), AdaLoraConfig(total_step=10, init_r=4, target_r=2, init_lora_weights=False,
                                                  target_modules=["q_proj"]))
    paths = [p for p, _ in model.svd_layers()]
    model.peft_config["default"].rank_pattern = {f"{p}.lora_E": [True, False, False, i == 0]
                                                 for i, p in enumerate(paths)}
    state = adapter_state_dict(model)
    save_adapter(model, tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert state.keys() == saved.keys() and state[f"base_model.model.{paths[0]}.lora_A"].shape == (2, 16)
    assert state[f"base_model.model.{paths[1]}.lora_B"].shape == (16, 1)
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key], value)


def test_the_generic_file_code_imports_no_adapter_method():
    """lora/save_load.py and lora/adapter_state.py serve every method through the model class registry."""
    import ast
    import pathlib
    import minilora.lora as lora
    for name in ("save_load.py", "adapter_state.py"):
        tree = ast.parse((pathlib.Path(lora.__file__).parent / name).read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if "adalora" in m], (name, imported)
        assert "ADALORA" not in (pathlib.Path(lora.__file__).parent / name).read_text().split('"""')[2]


def test_save_writes_peft_keys_sliced_to_the_pattern_and_loads_rank_zero(tmp_path):
    model = trained()
    expected = out(model)
    folder = save_adalora_adapter(model, tmp_path)
    from safetensors.numpy import load_file
    tensors = load_file(os.path.join(folder, "adapter_model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == {
        "base_model.model.blocks.0.q_proj.lora_A": (2, 6), "base_model.model.blocks.0.q_proj.lora_E": (2, 1),
        "base_model.model.blocks.0.q_proj.lora_B": (6, 2), "base_model.model.blocks.0.v_proj.lora_A": (4, 6),
        "base_model.model.blocks.0.v_proj.lora_E": (4, 1), "base_model.model.blocks.0.v_proj.lora_B": (7, 4),
        "base_model.model.blocks.1.q_proj.lora_A": (0, 6), "base_model.model.blocks.1.q_proj.lora_E": (0, 1),
        "base_model.model.blocks.1.q_proj.lora_B": (6, 0), "base_model.model.blocks.1.v_proj.lora_A": (1, 6),
        "base_model.model.blocks.1.v_proj.lora_E": (1, 1), "base_model.model.blocks.1.v_proj.lora_B": (7, 1)}
    config = json.load(open(os.path.join(folder, "adapter_config.json")))
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"] == model.peft_config["default"].rank_pattern
    loaded = load_adalora_adapter(Net(), tmp_path)
    layers = dict(loaded.svd_layers())
    assert {p: m.r["default"] for p, m in layers.items()} == {
        "blocks.0.q_proj": 2, "blocks.0.v_proj": 4, "blocks.1.q_proj": 0, "blocks.1.v_proj": 1}
    assert all(m.ranknum["default"] == 4 for m in layers.values())  # the scale is unchanged
    np.testing.assert_allclose(out(loaded), expected, rtol=1e-13, atol=1e-14)
    assert not any(p.requires_grad for p in loaded.parameters())
    again = save_adalora_adapter(loaded, tmp_path / "again")  # a resized model saves the same tensors
    for key, value in load_file(os.path.join(again, "adapter_model.safetensors")).items():
        np.testing.assert_array_equal(value, tensors[key])


def test_load_into_the_wrong_model_lists_every_problem_and_changes_nothing(tmp_path):
    save_adalora_adapter(trained(), tmp_path)
    base = Net(d=5)
    with pytest.raises(AdapterLoadError) as info:
        load_adalora_adapter(base, tmp_path)
    assert str(info.value).count("expected shape") == 8 and "lora_E" not in str(info.value) and "blocks.1.q_proj.lora_B" in str(info.value)
    assert not any(isinstance(m, SVDLinear) for _, m in base.named_modules())
