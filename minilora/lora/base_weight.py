"""The base-weight hook: how LoRA layers read and write the frozen base's weight, float or 4-bit.

A base is anything with in_features, out_features and __call__; a quantized one (Linear4bit) gives
its float weight only through ``dequantize()`` and cannot take a merged weight back in place.
"""
from __future__ import annotations

from .. import backend
from ..tensor import Tensor


def is_quantized(base) -> bool:
    """A base that can only give its weight back through ``dequantize()`` (e.g. Linear4bit)."""
    return callable(getattr(base, "dequantize", None))


def base_weight(base):
    """The base's float weight array (d_out, d_in), dequantized for a quantized base."""
    if is_quantized(base):
        w = base.dequantize()
        return w.data if isinstance(w, Tensor) else w
    return base.weight.data


def set_base_weight(base, weight) -> None:
    """Write a merged weight into the base. Quantized bases cannot take one back (yet)."""
    if is_quantized(base):
        raise ValueError(f"cannot merge an adapter in place into a quantized base ({type(base).__name__}): "
                         "use merge_and_unload(), which returns a float layer holding dequantize() + scaling * B A")
    base.weight.data = weight


def dtype_and_xp(base):
    """(dtype, namespace) new adapters of ``base`` take: its weight's, or a quantized base's compute dtype."""
    w = getattr(base, "weight", None)
    if isinstance(w, Tensor) and not is_quantized(base):
        return w.dtype, w.xp
    w = base_weight(base)  # a quantized base: adapters take its compute dtype (else its dequantized dtype)
    dtype = getattr(base, "compute_dtype", None)
    return (w.dtype if dtype is None else dtype), backend.namespace_of(w)
