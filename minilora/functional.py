"""The functions models are written with, and the composites that define the fused kernels.

The public functions (``softmax``, ``cross_entropy``, ``rms_norm``, ...) call the fused kernels of
kernels.py. Each ``composite_*`` computes the same thing from basic primitives only (ops.py); the
tests hold every fused kernel to its composite in value and gradient, so the composites are the
readable definition and the kernels the fast one.
"""
from __future__ import annotations

import math

from . import kernels, ops
from .kernels import (attention, cross_entropy, gelu, layer_norm, linear, log_softmax, rms_norm,  # noqa: F401
                      rope, silu, softmax, swiglu)
from .tensor import Tensor


def dropout(x: Tensor, p: float, rng, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p).

    rng: a backend.Random. Identity when p == 0 or not training.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if p == 0.0 or not training:
        return x
    keep = rng.uniform(x.shape, dtype=x.dtype) >= p
    return kernels.dropout(x, keep, p=p)


def rope_tables(xp, positions, head_dim: int, base: float = 10000.0, interleaved: bool = False, dtype=None):
    """cos and sin tables (T, hs) for RoPE at integer ``positions`` (T,).

    theta_i = base^(-2i/hs); half layout repeats the T x hs/2 angles as [a, a], interleaved as
    [a0, a0, a1, a1, ...], matching rot() in kernels.rope.
    """
    dtype = xp.float32 if dtype is None else dtype
    inv_freq = 1.0 / (base ** (xp.astype(xp.arange(0, head_dim, 2), xp.float64) / head_dim))  # (hs/2,)
    angles = xp.reshape(xp.astype(positions, xp.float64), (-1, 1)) * inv_freq[None, :]  # (T, hs/2)
    if interleaved:
        angles = xp.reshape(xp.stack((angles, angles), axis=-1), (angles.shape[0], head_dim))
    else:
        angles = xp.concat((angles, angles), axis=-1)  # (T, hs)
    return xp.astype(xp.cos(angles), dtype), xp.astype(xp.sin(angles), dtype)


# ------------------------------------------------------------------ composites (the definitions)

def composite_linear(x, weight, bias=None):
    x2 = ops.reshape(x, shape=(1, x.shape[0])) if x.ndim == 1 else x  # matmul wants 2-D operands
    y = ops.matmul(x2, ops.permute(weight, axes=(1, 0)))  # (..., d_out)
    y = ops.reshape(y, shape=(weight.shape[0],)) if x.ndim == 1 else y
    return y if bias is None else y + bias


def composite_softmax(x, axis=-1):
    z = ops.exp(x - ops.max(x, axis=axis, keepdims=True).detach())
    return z / ops.sum(z, axis=axis, keepdims=True)


def composite_log_softmax(x, axis=-1):
    shifted = x - ops.max(x, axis=axis, keepdims=True).detach()
    return shifted - ops.log(ops.sum(ops.exp(shifted), axis=axis, keepdims=True))


def composite_cross_entropy(logits, targets, ignore_index=-100):
    xp = logits.xp
    t = targets.data if isinstance(targets, Tensor) else targets
    valid = t != ignore_index
    safe = xp.where(valid, t, xp.zeros_like(t))
    one_hot = xp.astype(xp.reshape(safe, (-1, 1)) == xp.arange(logits.shape[1], dtype=safe.dtype)[None, :],
                        logits.dtype)
    weights = xp.astype(valid, logits.dtype) / float(max(int(xp.sum(xp.astype(valid, xp.int64))), 1))
    nll = -ops.sum(composite_log_softmax(logits, axis=1) * one_hot, axis=1)
    return ops.sum(nll * weights)


def composite_layer_norm(x, weight, bias=None, eps=1e-5):
    centered = x - ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(centered * centered, axis=-1, keepdims=True)
    y = centered / ops.sqrt(var + eps) * weight
    return y if bias is None else y + bias


def composite_rms_norm(x, weight, eps=1e-6):
    return x / ops.sqrt(ops.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def composite_gelu(x):
    return 0.5 * x * (1 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def composite_silu(x):
    return x * (0.5 * (1 + ops.tanh(0.5 * x)))


def composite_swiglu(gate, up):
    return composite_silu(gate) * up


def composite_dropout(x, keep_mask, p):
    return x * x.xp.astype(keep_mask, x.dtype) * (1.0 / (1.0 - p))


def composite_rope(x, cos, sin, interleaved=False):
    hs = x.shape[-1]
    if interleaved:
        pairs = ops.reshape(x, shape=x.shape[:-1] + (hs // 2, 2))
        even, odd = pairs[..., 0:1], pairs[..., 1:2]
        turned = ops.reshape(ops.concat(-odd, even, axis=-1), shape=x.shape)
    else:
        turned = ops.concat(-x[..., hs // 2:], x[..., :hs // 2], axis=-1)
    return x * cos + turned * sin


def composite_attention(q, k, v, causal=True, scale=None):
    xp = q.xp
    kernels.check_attention_shapes(q.shape, k.shape, v.shape, causal)
    b, nh, t, hs = q.shape
    nkv, s_len = k.shape[1], k.shape[2]
    groups = nh // nkv
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    # repeat each kv head for its group of query heads: (B, nkv, S, hs) -> (B, nh, S, hs)
    k_rep = ops.reshape(ops.broadcast_to(ops.reshape(k, shape=(b, nkv, 1, s_len, hs)),
                                         shape=(b, nkv, groups, s_len, hs)), shape=(b, nh, s_len, hs))
    v_rep = ops.reshape(ops.broadcast_to(ops.reshape(v, shape=(b, nkv, 1, s_len, hs)),
                                         shape=(b, nkv, groups, s_len, hs)), shape=(b, nh, s_len, hs))
    scores = ops.matmul(q, ops.permute(k_rep, axes=(0, 1, 3, 2))) * scale  # (B, nh, T, S)
    if causal:
        mask = kernels.causal_mask(xp, t, s_len)
        scores = ops.where(mask, scores, xp.full(scores.shape, -1e30, dtype=scores.dtype))
    return ops.matmul(composite_softmax(scores, axis=-1), v_rep)
