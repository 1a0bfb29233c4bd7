"""4-bit NF4/FP4 quantization with double quantization, the Linear4bit layer and QLoRA helpers."""
from .codebooks import dynamic_map, fp4_code, get_code, nf4_code
from .convert import QuantSpec, load_weights_quantized, quantize_model
from .linear4bit import Linear4bit, linear_4bit
from .memory import model_memory_report
from .quantize import dequantize_4bit, dequantized_absmax, quantize_4bit
from .state import QuantState, load_quantized, save_quantized

__all__ = ["quantize_4bit", "dequantize_4bit", "dequantized_absmax", "QuantState", "save_quantized",
           "load_quantized", "nf4_code", "fp4_code", "dynamic_map", "get_code", "Linear4bit", "linear_4bit",
           "quantize_model", "QuantSpec", "load_weights_quantized", "model_memory_report"]
