"""quantize_4bit / dequantize_4bit: the public entry points, with bitsandbytes' names and format.

    packed, state = quantize_4bit(W, blocksize=64, quant_type="nf4", double_quant=True)
    W_hat = dequantize_4bit(packed, state)         # same shape and dtype as W

Any backend: the namespace comes from the input array. Inputs are flattened in C order (a
transposed view is quantized in its logical order) and computed in float32, as bitsandbytes does.
See blockwise.py for the 4-bit arithmetic and double_quant.py for the 8-bit absmax.
"""
from __future__ import annotations

from .. import backend
from .blockwise import check_blocksize, dequantize_blocks_4bit, quantize_blocks_4bit
from .codebooks import QUANT_TYPES, code_array, dynamic_map, get_code
from .double_quant import double_dequantize, double_quantize
from .state import QuantState, dtype_name


_SHARED_CODES: dict = {}


def shared_code(xp, quant_type: str):
    """One code array per (backend, quant_type), shared by every state: a model stores it once."""
    key = (backend.backend_name(xp), quant_type)
    if key not in _SHARED_CODES:
        _SHARED_CODES[key] = code_array(xp, get_code(quant_type) if quant_type in QUANT_TYPES else dynamic_map())
    return _SHARED_CODES[key]


def _check_quant_type(quant_type) -> str:
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    return quant_type


def quantize_4bit(x, blocksize: int = 64, quant_type: str = "nf4", double_quant: bool = True):
    """x (any shape, real float, at least one element) -> (packed ((n + 1) // 2,) uint8, QuantState).

    absmax per block of ``blocksize`` (32..4096), nearest ``quant_type`` code (ties to the lower
    value), first element in the high nibble; ``double_quant`` also quantizes the absmax values
    to 8 bits (bitsandbytes' ``compress_statistics``).
    """
    xp = backend.namespace_of(x)
    blocksize = check_blocksize(blocksize)
    _check_quant_type(quant_type)
    if not hasattr(x, "shape") or not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"quantize_4bit: x must be a real floating array, got {type(x).__name__} "
                         f"of dtype {getattr(x, 'dtype', None)}")
    shape = tuple(int(s) for s in x.shape)
    flat = xp.astype(xp.reshape(x, (-1,)), xp.float32)  # (n,)
    if flat.shape[0] == 0:
        raise ValueError(f"quantize_4bit: x has no elements (shape {shape})")
    packed, absmax = quantize_blocks_4bit(xp, flat, blocksize, quant_type)
    state = QuantState(absmax=absmax, code=shared_code(xp, quant_type), blocksize=blocksize,
                       quant_type=quant_type, shape=shape, dtype=dtype_name(x.dtype))
    if double_quant:
        state.absmax, state.offset, state.state2 = double_quantize(xp, absmax)
        state.state2.code = shared_code(xp, "dynamic")
    return packed, state


def dequantized_absmax(state: QuantState):
    """The float32 absmax per block (undoing double quantization when the state is nested)."""
    xp = state.xp
    if state.nested:
        return double_dequantize(xp, state.absmax, state.offset, state.state2)
    return state.absmax


def dequantize_4bit(packed, state: QuantState):
    """packed (ceil(n/2),) uint8 + state -> array of state.shape and state.dtype: code[q] * absmax."""
    if not isinstance(state, QuantState):
        raise ValueError(f"dequantize_4bit: state must be a QuantState, got {type(state).__name__}")
    xp = backend.namespace_of(packed)
    n = state.numel
    if tuple(packed.shape) != ((n + 1) // 2,) or dtype_name(packed.dtype) != "uint8":
        raise ValueError(f"dequantize_4bit: packed must be uint8 of shape ({(n + 1) // 2},) for a state of "
                         f"shape {state.shape}, got {dtype_name(packed.dtype)} {tuple(packed.shape)}")
    _check_quant_type(state.quant_type)
    flat = dequantize_blocks_4bit(xp, packed, dequantized_absmax(state), n, state.blocksize, state.code)
    out = xp.reshape(flat, state.shape)
    return out if state.dtype == "float32" else xp.astype(out, getattr(xp, state.dtype))
