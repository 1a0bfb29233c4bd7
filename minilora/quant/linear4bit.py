"""Linear4bit: a frozen linear layer whose weight is stored in 4 bits (QLoRA, arXiv 2305.14314).

    y = x dequant(W4)^T + b          x (..., d_in) -> (..., d_out),  W4 packed (ceil(d_out d_in / 2),)

The weight is dequantized on the fly in the forward pass and again in the backward pass, which
only needs the input gradient  gx = g dequant(W4)  (QLoRA eq. 5-6: the base is frozen, gradients
flow through it to the adapters), into one float32 buffer shared by every layer (NumPy). W gets no
gradient. ``set_keep_dequantized`` chooses when a forward keeps its float W for the backward instead.
The bias, when present, is a frozen Parameter. Wrapping this layer in ``LoRALinear`` is QLoRA.

The differentiable op is a private ``Primitive`` applied with ``tensor.apply``: it is not put in
the global registry because it is the fused ``kernels.linear`` with a dequantizing weight load,
and its gradient check lives in tests/quant/test_quant_linear4bit.py.
"""
from __future__ import annotations

from .. import backend
from ..kernels import discarded_output
from ..nn import Linear, Module, Parameter
from ..models.checkpoint import is_recomputing
from ..tensor import Primitive, Tensor, apply, is_grad_enabled
from .quantize import dequantize_4bit, quantize_4bit
from .state import QuantState, dtype_name


KEEP_MODES = ("never", "recompute", "always")
_settings = {"keep_dequantized": "recompute"}


def set_keep_dequantized(mode: str) -> str:
    """Whether linear_4bit's backward reuses the weight its forward dequantized; returns the old mode.

    "never": dequantize again in backward (no float weight outlives a call). "always": the forward
    keeps its dequantized weight for the backward (one float copy per 4-bit layer of the graph:
    without checkpointing, the whole base model in float). "recompute" (default): keep it only in
    the forward that gradient checkpointing re-runs in backward, whose backward follows at once,
    so at most one checkpointed block's weights are float at a time, and each weight is
    dequantized twice per step instead of three times (bench/bench_memory.py measured the choice).
    """
    if mode not in KEEP_MODES:
        raise ValueError(f"set_keep_dequantized: mode must be one of {KEEP_MODES}, got {mode!r}")
    old, _settings["keep_dequantized"] = _settings["keep_dequantized"], mode
    return old


def get_keep_dequantized() -> str:
    """The current mode of set_keep_dequantized."""
    return _settings["keep_dequantized"]


def _keeps_weight() -> bool:
    mode = _settings["keep_dequantized"]
    return mode == "always" or (mode == "recompute" and is_recomputing())


class _SharedBuffer:
    """One float32 array per backend, grown to the largest weight seen, that every 4-bit layer
    dequantizes into when the weight is needed only for the product at hand (NumPy only)."""

    def __init__(self):
        self.arrays = {}

    def take(self, xp, n: int):
        if backend.backend_name(xp) != "numpy":
            return None
        key = backend.backend_name(xp)
        buf = self.arrays.get(key)
        if buf is None or buf.shape[0] < n:
            buf = self.arrays[key] = xp.empty((n,), dtype=xp.float32)
        return buf[:n]


DEQUANT_BUFFER = _SharedBuffer()


def _dequantized_weight(packed, state, dtype, fresh: bool = True):
    """W (d_out, d_in) in ``dtype``; ``fresh=False`` lends the shared buffer (valid until the next call)."""
    xp = backend.namespace_of(packed)
    out = None if fresh or state.dtype != "float32" else DEQUANT_BUFFER.take(xp, state.numel)
    w = dequantize_4bit(packed, state, out=out)  # (d_out, d_in)
    return w if w.dtype == dtype else xp.astype(w, dtype)


def _linear_4bit_forward(x, bias=None, *, packed, state, value=True):
    """y = x W^T + b with W = dequant(packed, state) (d_out, d_in).

    VJP: gx = g W, gb = sum of g over the leading dimensions; no gW. W comes from the shared buffer,
    dequantized again in backward, unless the forward keeps it (see set_keep_dequantized).
    ``value=False`` (as kernels.linear): zeros instead of y, no dequantize and no product in forward.
    """
    xp = backend.namespace_of(x)
    d_out, d_in = state.shape
    lead = tuple(x.shape[:-1])
    x2 = xp.reshape(x, (-1, d_in))  # (N, d_in)
    kept = value and _keeps_weight() and is_grad_enabled()
    w = None
    if value:
        w = _dequantized_weight(packed, state, x.dtype, fresh=kept)
        y = xp.matmul(x2, w.mT)  # (N, d_out)
        if bias is not None:
            y = y + bias
    else:
        y = discarded_output(xp, (x2.shape[0], d_out), x.dtype)
    w = w if kept else None  # the buffer is lent only for the product above

    def vjp(g, needs):
        g2 = xp.reshape(g, (-1, d_out))  # (N, d_out)
        gx = None
        if needs[0]:
            weight = w if w is not None and w.dtype == g.dtype else _dequantized_weight(packed, state, g.dtype,
                                                                                        fresh=False)
            gx = xp.reshape(xp.matmul(g2, weight), lead + (d_in,))
        gb = xp.sum(g2, axis=0) if (len(needs) > 1 and needs[1]) else None
        return (gx, gb) if len(needs) > 1 else (gx,)
    return xp.reshape(y, lead + (d_out,)), vjp


LINEAR_4BIT = Primitive("linear_4bit", _linear_4bit_forward, fused=True)


def linear_4bit(x, packed, state: QuantState, bias=None, value: bool = True) -> Tensor:
    """Tensor-level y = x dequant(packed, state)^T (+ bias); differentiable in x (and bias).
    value=False: the same graph with a zero output (see _linear_4bit_forward)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    inputs = (x,) if bias is None else (x, bias)
    return apply(LINEAR_4BIT, *inputs, packed=packed, state=state, value=value)


class Linear4bit(Module):
    """A frozen 4-bit linear layer (bitsandbytes' Linear4bit): ``weight`` is the packed uint8 array.

    Build it from a float layer with ``Linear4bit.from_linear(linear, quant_type, blocksize,
    double_quant)`` or from stored data with ``Linear4bit(packed, quant_state, bias)``.
    """

    value_optional = True  # forward(x, value=False): the graph without the product (see nn.Linear)

    def __init__(self, packed, quant_state: QuantState, bias=None):
        if not isinstance(quant_state, QuantState) or len(quant_state.shape) != 2:
            raise ValueError(f"Linear4bit: quant_state must be a QuantState of a 2-D weight, got {quant_state!r}")
        out_features, in_features = quant_state.shape
        n_bytes = (out_features * in_features + 1) // 2
        if tuple(packed.shape) != (n_bytes,) or dtype_name(packed.dtype) != "uint8":
            raise ValueError(f"Linear4bit: packed must be uint8 of shape ({n_bytes},) for a weight of shape "
                             f"{quant_state.shape}, got {dtype_name(packed.dtype)} {tuple(packed.shape)}")
        if bias is not None:
            bias = bias.data if isinstance(bias, Tensor) else bias
            if tuple(bias.shape) != (out_features,):
                raise ValueError(f"Linear4bit: bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = packed  # a plain array: not a Parameter, never trained
        self.quant_state = quant_state
        self.bias = None if bias is None else Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: Linear, quant_type: str = "nf4", blocksize: int = 64,
                    double_quant: bool = True) -> "Linear4bit":
        """Quantize ``linear.weight`` (d_out, d_in); the bias is kept in float and frozen."""
        if not hasattr(linear, "weight") or not hasattr(linear, "in_features"):
            raise ValueError(f"Linear4bit.from_linear: expected a Linear layer, got {type(linear).__name__}")
        packed, state = quantize_4bit(linear.weight.data, blocksize=blocksize, quant_type=quant_type,
                                      double_quant=double_quant)
        bias = getattr(linear, "bias", None)
        return cls(packed, state, None if bias is None else bias.data)

    @property
    def compute_dtype(self):
        """The dtype of the dequantized weight (that of the original weight)."""
        xp = backend.namespace_of(self.weight)
        return getattr(xp, self.quant_state.dtype)

    def dequantize(self):
        """The float weight (d_out, d_in) = dequant(W4): a fresh array each call."""
        return dequantize_4bit(self.weight, self.quant_state)

    def forward(self, x, value: bool = True) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear4bit({self.in_features} -> {self.out_features}): input has "
                             f"{x.shape[-1]} features in its last dimension (shape {tuple(x.shape)})")
        return linear_4bit(x, self.weight, self.quant_state, self.bias, value=value)

    def quantized_state_dict(self, prefix: str = "") -> dict:
        """bitsandbytes' serialized layout: ``weight``, ``weight.absmax``, ... (+ ``bias``)."""
        out = {f"{prefix}weight": self.weight}
        out.update({f"{prefix}weight.{k}": v for k, v in self.quant_state.to_dict(packed=True).items()})
        if self.bias is not None:
            out[f"{prefix}bias"] = self.bias.data
        return out

    def extra_repr(self) -> str:
        s = self.quant_state
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"quant_type={s.quant_type}, blocksize={s.blocksize}, double_quant={s.nested}")

    def packed_parameter_count(self) -> int:
        """d_out * d_in: the parameters the packed weight holds (counted by ``num_parameters``)."""
        return self.quant_state.numel
