"""KVCache: the keys and values of every layer seen so far, for incremental decoding.

Layer i holds k, v of shape (B, nkv, S, hs) after RoPE; each decoding step appends its T new
positions along S (axis 2). The model reads ``cache.length`` once per forward as the position of
its first new token, so RoPE and learned positions continue where the prefix stopped.
"""
from __future__ import annotations

from .. import ops
from ..tensor import Tensor


class KVCache:
    """Per-layer key/value arrays that grow by concatenation along the time axis."""

    def __init__(self, num_layers: int):
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"KVCache: num_layers must be a positive integer, got {num_layers!r}")
        self.keys: list = [None] * num_layers    # each (B, nkv, S, hs) or None
        self.values: list = [None] * num_layers

    @property
    def length(self) -> int:
        """S, the number of cached positions (taken from layer 0)."""
        return 0 if self.keys[0] is None else int(self.keys[0].shape[2])

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, nkv, T, hs) to layer ``layer``; return all keys/values (B, nkv, S+T, hs).

        The cached prefix enters as a constant, so gradients (if any) flow to the new positions only.
        """
        if self.keys[layer] is not None:
            k = ops.concat(Tensor(self.keys[layer]), k, axis=2)  # (B, nkv, S+T, hs)
            v = ops.concat(Tensor(self.values[layer]), v, axis=2)
        self.keys[layer], self.values[layer] = k.data, v.data
        return k, v

    def __len__(self) -> int:
        return self.length

    def __repr__(self):
        return f"KVCache(layers={len(self.keys)}, length={self.length})"
