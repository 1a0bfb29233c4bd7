"""QuantState: everything needed to dequantize a blockwise-quantized array, and its file format.

Plain state (no double quantization):
    absmax (n_blocks,) float32, code (16,) float32, blocksize, quant_type, shape, dtype.
Nested state (double quantization, QLoRA 2305.14314 section 3 "Double Quantization"):
    absmax (n_blocks,) uint8 = 8-bit codes of (absmax - offset), offset float32,
    state2 = QuantState(absmax2 (ceil(n_blocks / 256),) float32, code (256,) dynamic map, blocksize 256).

Serialization uses bitsandbytes' names (``QuantState.as_dict``) so files interoperate:
tensors ``absmax``, ``quant_map``, ``nested_absmax``, ``nested_quant_map``; metadata ``quant_type``,
``blocksize``, ``dtype``, ``shape``, ``nested_blocksize``, ``nested_dtype``, ``nested_offset``.
``to_dict(packed=True)`` stores the metadata as JSON bytes in the uint8 tensor
``quant_state.bitsandbytes__<quant_type>``, which is how bitsandbytes puts it in a safetensors file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .. import backend
from ..backend import dtype_name  # quantize.py and linear4bit.py import it from here too

_TENSOR_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_META_KEYS = ("quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset")
_PACKED_PREFIX = "quant_state.bitsandbytes__"


@dataclass
class QuantState:
    """The state of one quantized array (see module doc). ``offset`` and ``state2`` only when nested."""

    absmax: object
    code: object
    blocksize: int
    quant_type: str = "nf4"
    shape: tuple = ()
    dtype: str = "float32"
    offset: float | None = None
    state2: "QuantState | None" = field(default=None, repr=False)

    @property
    def nested(self) -> bool:
        return self.state2 is not None

    @property
    def xp(self):
        return backend.namespace_of(self.absmax)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    def nbytes(self) -> dict:
        """Bytes of each stored part: absmax, code, and (nested) absmax2, code2, offset."""
        parts = {"absmax": array_nbytes(self.absmax), "code": array_nbytes(self.code)}
        if self.nested:
            parts.update(absmax2=array_nbytes(self.state2.absmax), code2=array_nbytes(self.state2.code), offset=4)
        return parts

    # ------------------------------------------------------------ serialization
    def to_dict(self, packed: bool = False) -> dict:
        """bitsandbytes' ``as_dict``: arrays and plain values; ``packed``: arrays only (JSON in uint8)."""
        d = {"quant_type": self.quant_type, "absmax": self.absmax, "blocksize": int(self.blocksize),
             "quant_map": self.code, "dtype": dtype_name(self.dtype), "shape": [int(s) for s in self.shape]}
        if self.nested:
            d.update(nested_absmax=self.state2.absmax, nested_blocksize=int(self.state2.blocksize),
                     nested_quant_map=self.state2.code, nested_dtype=dtype_name(self.state2.dtype),
                     nested_offset=float(self.offset))
        if not packed:
            return d
        xp = self.xp
        arrays = {k: v for k, v in d.items() if k in _TENSOR_KEYS}
        meta = json.dumps({k: v for k, v in d.items() if k in _META_KEYS}).encode("utf-8")
        arrays[_PACKED_PREFIX + self.quant_type] = xp.asarray(list(meta), dtype=xp.uint8)
        return arrays

    @classmethod
    def from_dict(cls, d: dict, xp=None) -> "QuantState":
        """Inverse of ``to_dict`` (packed or not); keys may carry a prefix such as ``weight.``."""
        d = {k[k.index("quant_state."):] if "quant_state." in k else k.split(".")[-1]: v for k, v in d.items()}
        packed_keys = [k for k in d if k.startswith(_PACKED_PREFIX)]
        if len(packed_keys) > 1:
            raise ValueError(f"QuantState.from_dict: expected one packed metadata entry, found {packed_keys}")
        if packed_keys:
            raw = backend.to_numpy(d.pop(packed_keys[0]))
            d.update(json.loads(raw.reshape(-1).astype("uint8").tobytes().decode("utf-8")))
        missing = [k for k in ("quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape") if k not in d]
        if missing:
            raise ValueError(f"QuantState.from_dict: missing keys {missing} (have {sorted(d)})")
        unknown = sorted(set(d) - set(_TENSOR_KEYS) - set(_META_KEYS))
        if unknown:
            raise ValueError(f"QuantState.from_dict: unexpected keys {unknown}")

        def arr(a):
            return a if xp is None else backend.from_numpy(backend.to_numpy(a), xp)

        state2, offset = None, None
        if "nested_absmax" in d:
            state2 = cls(absmax=arr(d["nested_absmax"]), code=arr(d["nested_quant_map"]),
                         blocksize=int(d["nested_blocksize"]), quant_type="dynamic",
                         shape=(int(d["absmax"].shape[0]),),
                         dtype=d["nested_dtype"])
            offset = float(d["nested_offset"])
        return cls(absmax=arr(d["absmax"]), code=arr(d["quant_map"]), blocksize=int(d["blocksize"]),
                   quant_type=d["quant_type"], shape=tuple(int(s) for s in d["shape"]), dtype=d["dtype"],
                   offset=offset, state2=state2)


def array_nbytes(a) -> int:
    """Bytes of an array of any backend (0 for None), from its shape and dtype."""
    if a is None:
        return 0
    size = math.prod(a.shape)
    name = dtype_name(a.dtype)
    per = {"uint8": 1, "int8": 1, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}.get(name)
    if per is None:
        raise ValueError(f"unsupported dtype {name!r} in a quantization state")
    return size * per


# ---------------------------------------------------------------- safetensors files
def save_quantized(path: str, packed, state: QuantState, name: str = "weight") -> None:
    """Write ``packed`` (as ``<name>``) and its state (as ``<name>.absmax`` ...) to a safetensors file.

    The layout is bitsandbytes' (packed metadata tensor included). The write is atomic.
    """
    from ..io.safetensors_io import save_safetensors  # atomic: temp file, fsync, rename

    tensors = {name: backend.to_numpy(packed)}
    tensors.update({f"{name}.{k}": backend.to_numpy(v) for k, v in state.to_dict(packed=True).items()})
    save_safetensors(path, {k: v.copy(order="C") for k, v in tensors.items()}, metadata={"format": "minilora-4bit"})


def load_quantized(path: str, name: str = "weight", xp=None):
    """Read what ``save_quantized`` wrote: (packed, QuantState), arrays in namespace ``xp``."""
    from ..errors import FileFormatError
    from ..io.safetensors_io import load_safetensors  # a damaged file raises FileFormatError naming it

    tensors, _ = load_safetensors(path)
    if name not in tensors:
        raise FileFormatError(path, f"load_quantized: no tensor {name!r} (have {sorted(tensors)})")
    xp = backend.default_namespace() if xp is None else xp
    prefix = name + "."
    try:
        state = QuantState.from_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                     xp=xp)
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(path, f"not a valid 4-bit quantization state ({exc})") from None
    return backend.from_numpy(tensors[name], xp), state
