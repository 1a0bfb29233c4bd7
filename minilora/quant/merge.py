"""Merging a LoRA update into a 4-bit base, honestly.

The exact merge of an adapter into a quantized base is a FLOAT weight

    W_merged = dequant(W4) + dW,        dW = sum_a scaling_a B_a A_a        (d_out, d_in)

Storing it in 4 bits again (``requantize``) rounds it onto the NF4/FP4 grid of its own blocks,
and an update smaller than half a grid step can vanish: the weight that survives is
W' = dequant(quant(W_merged)), and the update that survives is  dW' = W' - dequant(W4).
Other tools re-quantize silently (or drop small adapters); here each layer reports

    relative_error  = ||W' - W_merged||_F / ||W_merged||_F
    update_cosine   = <dW', dW> / (||dW'|| ||dW||)          1: the update survived in direction
    update_norm_ratio = ||dW'|| / ||dW||                     how much of its size survived

and a warning names every layer whose cosine is below ``WARN_COSINE`` = 0.5.
"""
from __future__ import annotations

import math
import warnings

from .. import backend
from .linear4bit import Linear4bit
from .quantize import quantize_4bit

WARN_COSINE = 0.5


def _norm(xp, a) -> float:
    a64 = xp.astype(a, xp.float64)
    return math.sqrt(float(xp.sum(a64 * a64)))


def requantize_report(base_weight, delta, requantized) -> dict:
    """The three numbers of the module doc for float arrays (d_out, d_in) of one namespace."""
    xp = backend.namespace_of(base_weight, delta, requantized)
    exact = base_weight + delta
    survived = xp.astype(requantized, xp.float64) - xp.astype(base_weight, xp.float64)
    d64 = xp.astype(delta, xp.float64)
    n_exact, n_delta, n_survived = _norm(xp, exact), _norm(xp, delta), _norm(xp, survived)
    if n_delta == 0.0:
        cosine = 1.0 if n_survived == 0.0 else 0.0
    elif n_survived == 0.0:
        cosine = 0.0
    else:
        cosine = float(xp.sum(survived * d64)) / (n_survived * n_delta)
    return {"relative_error": _norm(xp, requantized - exact) / n_exact if n_exact else 0.0,
            "update_cosine": cosine,
            "update_norm_ratio": n_survived / n_delta if n_delta else (0.0 if n_survived == 0.0 else math.inf)}


def requantize_merge(base: Linear4bit, delta, path: str = "", safe_merge: bool = False):
    """(Linear4bit holding quant(dequant(base) + delta) with the base's settings, report dict)."""
    if not isinstance(base, Linear4bit):
        raise ValueError(f"requantize_merge: base must be a Linear4bit, got {type(base).__name__}")
    xp = backend.namespace_of(base.weight)
    w = base.dequantize()  # (d_out, d_in)
    if tuple(delta.shape) != tuple(w.shape):
        raise ValueError(f"requantize_merge: delta has shape {tuple(delta.shape)}, expected {tuple(w.shape)}")
    delta = xp.astype(delta, w.dtype)
    merged = w + delta
    if safe_merge and not bool(xp.all(xp.isfinite(merged))):
        raise ValueError(f"safe_merge: the merged weight of {path or 'the layer'} has NaN or Inf")
    state = base.quant_state
    packed, new_state = quantize_4bit(merged, blocksize=state.blocksize, quant_type=state.quant_type,
                                      double_quant=state.nested)
    layer = Linear4bit(packed, new_state, None if base.bias is None else base.bias.data)
    report = requantize_report(w, delta, layer.dequantize())
    if report["update_cosine"] < WARN_COSINE:
        warnings.warn(f"requantized merge of {path or 'a layer'}: the surviving update has cosine "
                      f"{report['update_cosine']:.3f} with scaling * B A (norm ratio "
                      f"{report['update_norm_ratio']:.3f}); most of the adapter was rounded away. "
                      "Keep the adapter unmerged or merge into a float model.", stacklevel=3)
    return layer, report


def requantize_lora_layer(layer, names, path: str = "", safe_merge: bool = False):
    """Merge adapters ``names`` of a LoRALinear around a Linear4bit and re-quantize: (Linear4bit, report)."""
    xp = layer.xp
    deltas = [layer.delta_weight(n) for n in names if n in layer.r]
    base = layer.base_layer
    delta = xp.zeros((base.out_features, base.in_features), dtype=base.compute_dtype)
    for d in deltas:
        delta = delta + d
    return requantize_merge(base, delta, path=path, safe_merge=safe_merge)
