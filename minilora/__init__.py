"""minilora: parameter-efficient fine-tuning from scratch on NumPy, CuPy and any Array API library."""
from . import backend, functional, kernels, nn, ops
from .backend import Random, use_backend
from .errors import MiniloraError
from .lora import (AdaLoraConfig, LoraConfig, LoraModel, get_lora_model, load_adapter, save_adapter,
                   to_lora)
from .models import ModelConfig, Transformer, generate
from .optim import SGD, AdamW, create_loraplus_optimizer, loraplus_param_groups
from .quant import Linear4bit, dequantize_4bit, model_memory_report, quantize_4bit, quantize_model
from .tensor import Tensor, as_tensor, enable_grad, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "as_tensor", "no_grad", "enable_grad", "use_backend", "Random", "backend", "ops", "kernels",
           "functional", "nn", "MiniloraError", "LoraConfig", "LoraModel", "get_lora_model", "save_adapter",
           "load_adapter", "AdaLoraConfig", "to_lora", "ModelConfig", "Transformer", "generate", "AdamW", "SGD",
           "loraplus_param_groups", "create_loraplus_optimizer", "quantize_4bit", "dequantize_4bit", "Linear4bit",
           "quantize_model", "model_memory_report"]
