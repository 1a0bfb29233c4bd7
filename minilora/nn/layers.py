"""Linear, Embedding, LayerNorm, RMSNorm and Dropout.

Weights follow PyTorch / Hugging Face orientation so checkpoints load unchanged:
Linear W (d_out, d_in) with y = x W^T + b; Embedding W (V, C).
"""
from __future__ import annotations

import math

from .. import backend, functional as F
from ..tensor import Tensor
from .module import Module, Parameter


def _namespace_and_rng(rng):
    rng = backend.Random(None) if rng is None else rng
    return rng.xp, rng


class Linear(Module):
    """y = x W^T + b.  x (..., d_in) -> (..., d_out).

    W ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (PyTorch's default), b likewise when ``bias``.
    """

    value_optional = True  # forward(x, value=False) records the graph but skips the product (zeros out)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, rng=None):
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        xp, rng = _namespace_and_rng(rng)
        dtype = xp.float32 if dtype is None else dtype
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform((out_features, in_features), -bound, bound, dtype=dtype))
        self.bias = Parameter(rng.uniform((out_features,), -bound, bound, dtype=dtype)) if bias else None

    def forward(self, x: Tensor, value: bool = True) -> Tensor:
        """value=False: for an output that is thrown away, only its backward is needed (kernels.linear)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features} -> {self.out_features}): input has "
                             f"{x.shape[-1]} features in its last dimension (shape {x.shape})")
        return F.linear(x, self.weight, self.bias, value=value)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """y = W[ids].  ids int (...,) -> (..., C).  W ~ N(0, 1) (PyTorch's default)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=None, rng=None, std: float = 1.0):
        xp, rng = _namespace_and_rng(rng)
        dtype = xp.float32 if dtype is None else dtype
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(rng.normal((num_embeddings, embedding_dim), std=std, dtype=dtype))

    def forward(self, ids) -> Tensor:
        ids = ids.data if isinstance(ids, Tensor) else ids
        return F.ops.embedding(self.weight, ids)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis; w = 1, b = 0 at init."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype=None, xp=None):
        xp = backend.default_namespace() if xp is None else xp
        dtype = xp.float32 if dtype is None else dtype
        self.eps = eps
        self.weight = Parameter(xp.ones((dim,), dtype=dtype))
        self.bias = Parameter(xp.zeros((dim,), dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis; w = 1 at init."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=None, xp=None):
        xp = backend.default_namespace() if xp is None else xp
        dtype = xp.float32 if dtype is None else dtype
        self.eps = eps
        self.weight = Parameter(xp.ones((dim,), dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, eps=self.eps)


class Dropout(Module):
    """Zero elements with probability p in training mode (identity in eval mode)."""

    def __init__(self, p: float = 0.0, rng=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.rng = backend.Random(None) if rng is None else rng

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.rng, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"
