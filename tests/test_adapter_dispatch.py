"""save_adapter / load_adapter hand AdaLoRA models to PEFT's AdaLoRA format and back."""
import json

import numpy as np

from minilora.lora import AdaLoraConfig, AdaLoraModel, get_lora_model, load_adapter, save_adapter
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer


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
