"""model_memory_report: bytes and bits per parameter of every part of a (partly) 4-bit model.

For one NF4 weight of n parameters with double quantization (QLoRA, arXiv 2305.14314, section 3):

    packed   4 bits per parameter                    n / 2 bytes
    absmax   8 bits per block of 64                  n / 64 bytes
    absmax2  32 bits per block of 64 * 256           4 n / 16384 bytes
    offset   one float32                             4 bytes
                                          total ~ 4 + 8/64 + 32/16384 = 4.127 bits per parameter

The code tables (16 + 256 float32 values) are constants shared by every layer of a model and are
counted once, under ``shared_codes``; ``bits_per_param_with_codes`` charges them to one layer.
Arrays reachable twice (tied parameters, shared tables) are counted once.
"""
from __future__ import annotations

from ..nn import Module
from .linear4bit import Linear4bit
from .state import array_nbytes


def _quantized_layer(layer: Linear4bit) -> dict:
    state = layer.quant_state
    parts = {"packed": array_nbytes(layer.weight), **state.nbytes()}
    codes = parts.pop("code") + parts.pop("code2", 0)
    n = state.numel
    storage = sum(parts.values())
    return {"params": n, "quant_type": state.quant_type, "blocksize": state.blocksize,
            "double_quant": state.nested, "bytes": parts, "total_bytes": storage,
            "bits_per_param": 8.0 * storage / n, "bits_per_param_with_codes": 8.0 * (storage + codes) / n,
            "bias_bytes": 0 if layer.bias is None else array_nbytes(layer.bias.data)}


def model_memory_report(model: Module) -> dict:
    """Per quantized layer: bytes of packed weight, absmax, nested absmax, offset, bits/param;
    plus float parameter bytes, shared code tables and totals (all in bytes)."""
    layers, seen, codes_bytes = {}, set(), 0
    for path, module in model.named_modules():
        if isinstance(module, Linear4bit):
            layers[path] = _quantized_layer(module)
            state = module.quant_state
            for code in (state.code, state.state2.code if state.nested else None):
                if code is not None and id(code) not in seen:
                    seen.add(id(code))
                    codes_bytes += array_nbytes(code)
    float_params = float_bytes = 0
    for _, p in model.named_parameters():
        float_params += p.size
        float_bytes += array_nbytes(p.data)
    quant_params = sum(v["params"] for v in layers.values())
    quant_bytes = sum(v["total_bytes"] for v in layers.values())
    total = float_bytes + quant_bytes + codes_bytes
    return {"quantized_layers": layers,
            "quantized": {"params": quant_params, "bytes": quant_bytes,
                          "bits_per_param": 8.0 * quant_bytes / quant_params if quant_params else 0.0},
            "float": {"params": float_params, "bytes": float_bytes},
            "shared_codes_bytes": codes_bytes,
            "total_bytes": total,
            "float32_equivalent_bytes": 4 * (float_params + quant_params)}
