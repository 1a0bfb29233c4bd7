"""lm_head + cross entropy in tiles of rows x classes: the (N, V) logits, softmax and gradient never exist whole.

For hidden states h (N, C), the head weight W (V, C) and targets t (N,) (ignore_index skipped), with
s_n = 1 / n_valid on valid rows and 0 on ignored ones:

    loss  = sum_n s_n (lse_n - z_n[t_n]),      z_n = W h_n,  lse_n = logsumexp_v z_n
    gh    = (softmax(h W^T) s) W - s W[t]                                   (N, C)
    gW    = (softmax(h W^T) s)^T h - scatter_add_t(s h)                     (V, C)

Rows are taken ``chunk_rows`` at a time and, within them, the vocabulary ``chunk_classes`` at a time:
a tile's logits z = h_R W_j^T (R, Vj) update a running row max m and sum l (online softmax,
Milakov & Gimelshein 2018) and, when h needs a gradient, a running product a = sum_j exp(z_j - m) W_j:

    m' = max(m, max_v z_j),   c = exp(m - m'),   l' = c l + sum_v exp(z_j - m'),   a' = c a + exp(z_j - m') W_j

so that after the last tile lse = m + log l and softmax(z) W = a / l: one sweep, each weight block read
once per row chunk while its logits are still in cache. The target logit z[t] is picked from the tile
that holds it and a row's loss is summed as (m - z[t]) + log l: two terms >= 0 from the same products,
so a confidently predicted row keeps its small loss and never goes below zero. gW needs the final
lse in every tile, so when W needs a gradient a second sweep recomputes each tile's logits (one
more GEMM per tile). The one-hot terms are a gather of each row chunk's target rows of W (and, for
gW, one scatter-add), never an (N, V) array.
Peak extra memory is one tile: 8 MiB at the default 512 x 4096 against 96 MiB per (512, 49152) array.
The default was measured on SmolLM2's head on the 2-core VM: head + loss + gh in 0.84-0.88x the time
of 128-row chunks over the whole vocabulary (412 against 480 ms, whose (128, 49152) logits fall out of
cache between the two products); 8192 or 16384 classes were no faster beyond noise (docs/speed.md).

The gradient is computed in the forward pass (the loss is a scalar, so the VJP only scales the
stored gh, gW by the cotangent g): no logits are kept for backward. Which gradients to compute is
decided when the op runs (an input that requires grad, with gradients enabled), so evaluation under
``no_grad`` costs only the loss. The result equals ``kernels.cross_entropy(h W^T, t)`` to float32
rounding (tests/core/test_lm_head_loss.py).

Like ``linear_4bit``, the op is a private Primitive (applied with ``tensor.apply``): it is the fused
composite ``cross_entropy(linear(h, W), t)``, and its tests check it against exactly that.
"""
from __future__ import annotations

import math

from . import backend
from .tensor import Primitive, Tensor, apply

DEFAULT_CHUNK_ROWS = 512  # a tile of 512 x 4096 float32 logits is 8 MiB: see the module doc
DEFAULT_CHUNK_CLASSES = 4096


def _check(xp, h, weight, targets, ignore_index):
    if h.ndim != 2 or weight.ndim != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: expected h (N, C) and weight (V, C), got {tuple(h.shape)} "
                         f"and {tuple(weight.shape)}")
    if targets.ndim != 1 or targets.shape[0] != h.shape[0] or not xp.isdtype(targets.dtype, "integral"):
        raise ValueError(f"linear_cross_entropy: targets must be integers of shape ({h.shape[0]},), got "
                         f"{targets.dtype} {tuple(targets.shape)}")
    valid = targets != ignore_index  # (N,)
    safe = xp.where(valid, targets, xp.zeros_like(targets))  # ignored rows point at class 0
    if bool(xp.any((safe < 0) | (safe >= weight.shape[0]))):
        raise ValueError(f"linear_cross_entropy: targets must lie in [0, {weight.shape[0]}) or equal "
                         f"ignore_index={ignore_index}")
    return valid, safe


def _exp_in_place(xp, z):
    """exp(z), written over z where the namespace takes ``out=`` (NumPy, CuPy): one (R, V) array, not two."""
    if backend.backend_name(xp) in ("numpy", "cupy"):
        return xp.exp(z, out=z)
    return xp.exp(z)


def tile_ranges(total: int, size: int):
    """(start, stop) runs of ``size`` covering [0, total) (the last one may be short)."""
    return [(lo, min(lo + size, total)) for lo in range(0, total, size)]


def _row_chunk(xp, hc, tc, weight, chunk_classes, grad_h):
    """By the online sweep over the logits z = hc W^T: the row max m (R,), log sum exp(z - m) (R,), the
    target logits z[r, tc[r]] (R,) and, when grad_h, softmax(z) W (R, C). lse = m + log sum."""
    r = hc.shape[0]
    picked = xp.zeros((r,), dtype=hc.dtype)
    m = xp.full((r, 1), -math.inf, dtype=hc.dtype)  # running row max
    l = xp.zeros((r, 1), dtype=hc.dtype)  # running sum of exp(z - m)
    a = xp.zeros(hc.shape, dtype=hc.dtype) if grad_h else None  # running sum of exp(z - m) W_j
    for lo, hi in tile_ranges(weight.shape[0], chunk_classes):
        wj = weight[lo:hi, :]  # (Vj, C)
        z = xp.matmul(hc, wj.mT)  # (R, Vj) logits of this tile
        inside = (tc >= lo) & (tc < hi)  # rows whose target is in this tile
        at = xp.reshape(xp.where(inside, tc - lo, xp.zeros_like(tc)), (-1, 1))
        picked = xp.where(inside, xp.take_along_axis(z, at, axis=1)[:, 0], picked)
        m_new = xp.maximum(m, xp.max(z, axis=1, keepdims=True))
        c = xp.exp(m - m_new)  # (R, 1) rescales what was summed under the old max
        z -= m_new
        z = _exp_in_place(xp, z)
        l = c * l + xp.sum(z, axis=1, keepdims=True)
        if a is not None:
            a *= c
            a += xp.matmul(z, wj)
        m = m_new
        del z  # before the next tile's logits exist
    return m[:, 0], xp.log(l[:, 0]), picked, (a / l if a is not None else None)


def _forward(h, weight, targets, *, ignore_index=-100, chunk_rows=DEFAULT_CHUNK_ROWS,
             chunk_classes=DEFAULT_CHUNK_CLASSES, needs=(False, False, False)):
    """loss (scalar) and its VJP; gh (N, C) and gW (V, C) are filled tile by tile when ``needs`` asks
    for them (tensor.apply passes it: the primitive takes_needs)."""
    grad_h, grad_w = needs[0], needs[1]
    xp = backend.namespace_of(h, weight)
    valid, safe = _check(xp, h, weight, targets, ignore_index)
    n, v = h.shape[0], weight.shape[0]
    n_valid = int(xp.sum(xp.astype(valid, xp.int64)))
    denom = float(n_valid if n_valid else 1)
    scale = xp.where(valid, xp.full(valid.shape, 1.0 / denom, dtype=h.dtype),
                     xp.zeros(valid.shape, dtype=h.dtype))  # (N,) d loss / d (lse_n - z_n[t_n])
    gh = xp.zeros(h.shape, dtype=h.dtype) if grad_h else None
    gw = xp.zeros(weight.shape, dtype=weight.dtype) if grad_w else None
    total = xp.zeros((), dtype=h.dtype)
    for start, stop in tile_ranges(n, chunk_rows):
        hc, sc = h[start:stop, :], scale[start:stop]
        row_max, log_sum, picked, soft_w = _row_chunk(xp, hc, safe[start:stop], weight, chunk_classes, grad_h)
        total = total + xp.sum(sc * ((row_max - picked) + log_sum))  # lse - z[t], both terms >= 0
        if gh is not None:
            gh[start:stop, :] = sc[:, None] * (soft_w - backend.take_rows(xp, weight, safe[start:stop]))  # (R, C)
        if gw is not None:  # the second sweep: softmax(z) s per tile, now that lse is known
            lse = row_max + log_sum
            for lo, hi in tile_ranges(v, chunk_classes):
                p = xp.matmul(hc, weight[lo:hi, :].mT)  # (R, Vj)
                p -= lse[:, None]
                p = _exp_in_place(xp, p)
                p *= sc[:, None]
                gw[lo:hi, :] += xp.matmul(p.mT, hc)  # (Vj, C)
                del p
    if gw is not None:
        gw -= backend.scatter_add(xp, v, safe, scale[:, None] * h)  # row t_n of W gets - s_n h_n

    def vjp(g, needs):
        return (gh * g if needs[0] else None, gw * g if needs[1] else None, None)
    return total, vjp


LINEAR_CROSS_ENTROPY = Primitive("linear_cross_entropy", _forward, fused=True, takes_needs=True)


def linear_cross_entropy(h, weight, targets, ignore_index: int = -100, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                         chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> Tensor:
    """Mean cross entropy of logits h W^T (never formed whole) against targets; see the module doc.

    h (N, C) Tensor, weight (V, C) Tensor (e.g. lm_head.weight), targets int (N,) array -> scalar.
    The logits are made ``chunk_rows`` x ``chunk_classes`` at a time.
    """
    for name, size in (("chunk_rows", chunk_rows), ("chunk_classes", chunk_classes)):
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"linear_cross_entropy: {name} must be a positive integer, got {size!r}")
    h = h if isinstance(h, Tensor) else Tensor(h)
    weight = weight if isinstance(weight, Tensor) else Tensor(weight)
    targets = targets.data if isinstance(targets, Tensor) else targets
    return apply(LINEAR_CROSS_ENTROPY, h, weight, targets, ignore_index=ignore_index, chunk_rows=chunk_rows,
                 chunk_classes=chunk_classes)
