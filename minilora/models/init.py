"""Weight initialization of the decoder, shared by attention.py and transformer.py.

Hugging Face's Llama / GPT-2 init: every projection W ~ N(0, INIT_STD^2), biases 0, embeddings
N(0, INIT_STD^2). ``Zeros`` replaces the random generator when the weights are about to be loaded.
"""
from __future__ import annotations

from ..nn import Linear

INIT_STD = 0.02  # Hugging Face's initializer_range


def init_linear(d_in: int, d_out: int, bias: bool, dtype, rng, std: float = INIT_STD) -> Linear:
    """nn.Linear (d_in -> d_out) with W (d_out, d_in) ~ N(0, std^2) and b = 0 (Linear's own draw is skipped)."""
    xp = rng.xp
    layer = Linear(d_in, d_out, bias=bias, dtype=dtype, rng=Zeros(xp))
    layer.weight.data = rng.normal((d_out, d_in), std=std, dtype=dtype)
    if bias:
        layer.bias.data = xp.zeros((d_out,), dtype=dtype)
    return layer


class Zeros:
    """Stands in for a backend.Random where a draw would be replaced at once (weights about to be
    loaded, or drawn again with another distribution): every draw is a read-only zero placeholder,
    a broadcast view of one zero that holds no memory.

    Real zero arrays cost memory when the allocator hands out space an earlier step freed (calloc
    then clears it): built after a GGUF header was parsed, a SmolLM2 of zeros was 114 MiB resident
    before its first tensor arrived. Whatever loads the weights rebinds each parameter's array.
    """

    def __init__(self, xp):
        self.xp = xp

    def normal(self, shape, std=1.0, dtype=None, mean=0.0):
        return self._placeholder(shape, dtype)

    def uniform(self, shape, low=0.0, high=1.0, dtype=None):
        return self._placeholder(shape, dtype)

    def _placeholder(self, shape, dtype):
        return self.xp.broadcast_to(self.xp.zeros((), dtype=dtype), tuple(shape))
