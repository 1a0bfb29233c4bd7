"""KVCache: the keys and values of every layer seen so far, for incremental decoding.

Layer i holds k, v of shape (B, nkv, S, hs) after RoPE; each decoding step adds its T new positions
along S (axis 2). The model reads ``cache.length`` once per forward as the position of its first new
token, so RoPE and learned positions continue where the prefix stopped.

Storage is one preallocated buffer per layer and per k / v, (B, nkv, capacity, hs): a step writes
its T positions in place at [S, S+T) and attention reads the view [0, S+T), so a decoding step
copies only its own new keys and values (a growing concatenation would copy the whole prefix every
step). When a step would pass the capacity, the buffer doubles (amortised O(1) per position).
"""
from __future__ import annotations

from .. import backend, ops
from ..tensor import Tensor, is_grad_enabled


class KVCache:
    """Per-layer key/value buffers written in place; ``capacity`` positions are reserved up front."""

    def __init__(self, num_layers: int, capacity: int | None = None):
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"KVCache: num_layers must be a positive integer, got {num_layers!r}")
        if capacity is not None and (not isinstance(capacity, int) or capacity <= 0):
            raise ValueError(f"KVCache: capacity must be a positive integer or None, got {capacity!r}")
        self.capacity_hint = capacity
        self.keys: list = [None] * num_layers    # each (B, nkv, capacity, hs) or None
        self.values: list = [None] * num_layers
        self.lengths: list[int] = [0] * num_layers  # positions filled in each layer

    @property
    def length(self) -> int:
        """S, the number of cached positions (taken from layer 0)."""
        return self.lengths[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, nkv, T, hs) after layer ``layer``'s prefix; return all keys/values (B, nkv, S+T, hs).

        The cached prefix enters as a constant, so gradients (if any) flow to the new positions only:
        with a gradient to carry, the result is a concatenation that keeps k and v in the graph.
        """
        start = self.lengths[layer]
        keys, values = self.append(layer, k.data, v.data)
        if is_grad_enabled() and (k.requires_grad or v.requires_grad):
            return (ops.concat(Tensor(keys[:, :, :start, :]), k, axis=2),
                    ops.concat(Tensor(values[:, :, :start, :]), v, axis=2))
        return Tensor(keys), Tensor(values)

    def append(self, layer: int, k, v) -> tuple:
        """Arrays: write k, v (B, nkv, T, hs) after the prefix; return the views (B, nkv, S+T, hs)."""
        start, t = self.lengths[layer], k.shape[2]
        self._reserve(layer, k, start + t)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, start:start + t, :] = k
        values[:, :, start:start + t, :] = v
        self.lengths[layer] = start + t
        return keys[:, :, :start + t, :], values[:, :, :start + t, :]

    def _reserve(self, layer: int, k, needed: int) -> None:
        """Make layer ``layer``'s buffers hold ``needed`` positions of k's batch, heads, head size and dtype."""
        b, nkv, _, hs = k.shape
        current = self.keys[layer]
        if current is not None:
            if (current.shape[0], current.shape[1], current.shape[3]) != (b, nkv, hs) or current.dtype != k.dtype:
                raise ValueError(f"KVCache: layer {layer} holds keys of shape {tuple(current.shape)} "
                                 f"({current.dtype}); new keys {tuple(k.shape)} ({k.dtype}) do not fit")
            if needed <= current.shape[2]:
                return
        xp = backend.namespace_of(k)
        capacity = max(needed, self.capacity_hint or 0, 2 * (0 if current is None else current.shape[2]))
        filled = self.lengths[layer]
        for store in (self.keys, self.values):
            grown = xp.zeros((b, nkv, capacity, hs), dtype=k.dtype)
            if store[layer] is not None:
                grown[:, :, :filled, :] = store[layer][:, :, :filled, :]
            store[layer] = grown

    def __len__(self) -> int:
        return self.length

    def __repr__(self):
        return f"KVCache(layers={len(self.keys)}, length={self.length})"
