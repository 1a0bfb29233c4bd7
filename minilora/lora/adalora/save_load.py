"""AdaLoRA adapter files: PEFT's format with ``peft_type: "ADALORA"``, through lora/save_load.py.

PEFT keeps A, B and E in ParameterDicts, so its saved keys have no ``.weight`` suffix, and it
slices every layer to the triplets the rank pattern keeps (resize_state_dict_by_rank_pattern):

    base_model.model.<path>.lora_A      (k, d_in)     rows of A that are kept
    base_model.model.<path>.lora_E      (k, 1)
    base_model.model.<path>.lora_B      (d_out, k)    columns of B that are kept

k = sum(rank_pattern["<path>.lora_E"]) (init_r when the pattern has no entry), and k = 0 is
written as an empty tensor. adapter_config.json carries the rank pattern with the adapter name
removed from its keys, {"<path>.lora_E": [true, false, ...]} (length init_r). Loading injects
init_r adapters, resizes each layer to its pattern (resize_modules_by_rank_pattern; the scale
lora_alpha / (init_r + 1e-5) is unchanged, and rank 0 loads), then copies the tensors in.
Biases (bias="all"/"lora_only") and modules_to_save copies are saved as LoRA saves them.

The slicing and resizing are AdaLoraModel's (adapter_state_dict, expected_adapter_shapes,
load_adapter_state_dict); the two functions here are save_adapter / load_adapter that insist on
AdaLoRA on both sides.
"""
from __future__ import annotations

import os

from ...errors import ConfigError
from ...nn import Module
from ..layers import check_adapter_name
from ..save_load import load_adapter, read_adapter_config, save_adapter
from .config import AdaLoraConfig
from .model import AdaLoraModel


def save_adalora_adapter(model: AdaLoraModel, directory, adapter_name: str = "default") -> str:
    """Write ``adapter_name`` to ``directory`` (``<directory>/<name>`` unless "default"); returns the folder."""
    check_adapter_name(adapter_name)
    if not isinstance(model, AdaLoraModel) or adapter_name not in model.peft_config:
        raise ValueError(f"save_adalora_adapter: expected an AdaLoraModel holding adapter {adapter_name!r}")
    return save_adapter(model, directory, adapter_name)[0]


def load_adalora_adapter(model: Module, directory, adapter_name: str = "default", is_trainable: bool = False,
                         seed: int = 0) -> AdaLoraModel:
    """load_adapter for a folder that must hold an AdaLoRA adapter (ConfigError otherwise).

    Each layer gets the rank its pattern keeps, rank 0 included, with the saved scale. is_trainable:
    the kept triplets require grad and can be fine-tuned further; the ranks stay as loaded (no
    RankAllocator is attached, so nothing is pruned again).
    """
    check_adapter_name(adapter_name)
    config = read_adapter_config(directory)
    if not isinstance(config, AdaLoraConfig):
        raise ConfigError(f"load_adalora_adapter: {os.fspath(directory)!r} holds a {config.peft_type} adapter, "
                          "not ADALORA (use minilora.lora.load_adapter)")
    return load_adapter(model, directory, adapter_name, is_trainable=is_trainable, seed=seed)
