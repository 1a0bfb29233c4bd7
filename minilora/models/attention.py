"""Causal self-attention with grouped-query heads and optional RoPE (Hugging Face module names).

    q = x Wq^T (B, T, nh*hs),  k = x Wk^T, v = x Wv^T (B, T, nkv*hs)
    q, k <- RoPE(q, k) at positions start .. start+T-1          (Llama style only)
    y = softmax(q k^T / sqrt(hs) + causal mask) v                (each kv head serves nh/nkv query heads)
    out = y Wo^T (B, T, C)

Every projection is a submodule called as ``self.q_proj(x)``, so LoRA can swap it for a wrapper;
without gradients, plain q/k/v Linears run as one stacked product (models/fused.py).
The heads are handled by reshapes and one batched GEMM (kernels.attention): no loop over heads.
"""
from __future__ import annotations

from .. import functional as F
from .. import ops
from ..nn import Module
from ..tensor import Tensor
from .config import ModelConfig
from .fused import fused_linears
from .init import INIT_STD, init_linear


class Attention(Module):
    """Multi-head (nkv == nh), grouped-query (1 < nkv < nh) or multi-query (nkv == 1) attention."""

    def __init__(self, config: ModelConfig, layer_idx: int, dtype, rng, init_std: float = INIT_STD):
        c, hs = config.hidden_size, config.head_dim
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads,
                                                            config.num_key_value_heads, hs)
        self.use_rope = config.style == "llama"
        self.rope_interleaved = config.rope_interleaved
        bias = config.attention_bias
        self.q_proj = init_linear(c, self.num_heads * hs, bias, dtype, rng, init_std)
        self.k_proj = init_linear(c, self.num_kv_heads * hs, bias, dtype, rng, init_std)
        self.v_proj = init_linear(c, self.num_kv_heads * hs, bias, dtype, rng, init_std)
        self.o_proj = init_linear(self.num_heads * hs, c, bias, dtype, rng, init_std)

    def forward(self, x: Tensor, rope=None, cache=None) -> Tensor:
        """x (B, T, C); rope: (cos, sin) each (T, 1, hs) or None; cache: KVCache or None -> (B, T, C)."""
        b, t, _ = x.shape
        hs = self.head_dim
        qkv = fused_linears(x, (self.q_proj, self.k_proj, self.v_proj)) or (self.q_proj(x), self.k_proj(x),
                                                                             self.v_proj(x))
        q = ops.reshape(qkv[0], shape=(b, t, self.num_heads, hs))  # (B, T, nh, hs)
        k = ops.reshape(qkv[1], shape=(b, t, self.num_kv_heads, hs))  # (B, T, nkv, hs)
        v = ops.reshape(qkv[2], shape=(b, t, self.num_kv_heads, hs))  # (B, T, nkv, hs)
        if self.use_rope:
            cos, sin = rope  # (T, 1, hs): broadcast over the head axis
            q = F.rope(q, cos, sin, interleaved=self.rope_interleaved)
            k = F.rope(k, cos, sin, interleaved=self.rope_interleaved)
        q = ops.permute(q, axes=(0, 2, 1, 3))  # (B, nh, T, hs)
        if cache is not None:  # the cache copies k, v into its contiguous buffers: views suffice here
            k, v = cache.update(self.layer_idx, ops.permute(k, axes=(0, 2, 1, 3)),
                                ops.permute(v, axes=(0, 2, 1, 3)))  # (B, nkv, S, hs)
        else:
            k, v = _heads_first(k), _heads_first(v)  # (B, nkv, T, hs)
        y = F.attention(q, k, v, causal=True)  # (B, nh, T, hs)
        y = ops.reshape(ops.permute(y, axes=(0, 2, 1, 3)), shape=(b, t, self.num_heads * hs))  # (B, T, nh*hs)
        return self.o_proj(y)

    def extra_repr(self):
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"


def _heads_first(x: Tensor) -> Tensor:
    """(B, T, n, hs) -> (B, n, T, hs) laid out contiguously.

    Flattening the transposed view forces a row-major copy; NumPy's batched matmul falls off its BLAS
    path (about 100x slower) when an operand such as k^T is a strided view, as a bare permute would be.
    """
    b, t, n, hs = x.shape
    flat = ops.reshape(ops.permute(x, axes=(0, 2, 1, 3)), shape=(b * n * t * hs,))  # (B*n*T*hs,) a copy
    return ops.reshape(flat, shape=(b, n, t, hs))  # (B, n, T, hs)
