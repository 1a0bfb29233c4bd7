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
