"""LoRA: low-rank adapters around frozen layers, injection, merging, several adapters, PEFT files."""
from .config import CONFIG_CLASSES, LoraConfig, config_from_dict, lora_scaling
from .inject import ModulesToSaveWrapper, find_targets, inject_adapter, lora_layers
from .embedding import LoRAEmbedding
from .base_weight import is_quantized
from .layers import AdapterDict, LoRAFactor, LoRALayer, LoRALinear, check_adapter_name
from .model import MODEL_CLASSES, LoraModel, get_lora_model, register_model_class
from .adapter_state import AdapterLoadError, adapter_parameters
from .save_load import adapter_state_dict, load_adapter, read_adapter, save_adapter
from .weighted import add_weighted_adapter
from .adalora import (AdaLoraConfig, AdaLoraModel, RankAllocator, SVDLinear, load_adalora_adapter,
                      orthogonal_regularizer, plot_rank_pattern, save_adalora_adapter, to_lora)

__all__ = ["LoraConfig", "CONFIG_CLASSES", "config_from_dict", "lora_scaling", "LoRALayer", "LoRALinear",
           "LoRAEmbedding", "LoRAFactor", "AdapterDict", "check_adapter_name", "is_quantized",
           "ModulesToSaveWrapper", "find_targets", "inject_adapter", "lora_layers", "LoraModel",
           "get_lora_model", "register_model_class", "MODEL_CLASSES",
           "save_adapter", "load_adapter", "read_adapter", "adapter_state_dict", "adapter_parameters",
           "AdapterLoadError", "add_weighted_adapter",
           "AdaLoraConfig", "AdaLoraModel", "SVDLinear", "RankAllocator", "orthogonal_regularizer", "to_lora",
           "plot_rank_pattern", "save_adalora_adapter", "load_adalora_adapter"]
