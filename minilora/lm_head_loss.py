"""lm_head + cross entropy in row chunks: the (N, V) logits, softmax and gradient never exist whole.

For hidden states h (N, C), the head weight W (V, C) and targets t (N,) (ignore_index skipped):

    z_n   = W h_n                                          (V,)  logits of row n
    loss  = sum_valid (logsumexp(z_n) - z_n[t_n]) / n_valid
    dz_n  = (softmax(z_n) - onehot(t_n)) s_n,    s_n = 1 / n_valid on valid rows, 0 on ignored rows
    gh    = dz W = (softmax(z) s) W - s W[t]          (N, C)
    gW    = dz^T h = (softmax(z) s)^T h - scatter_add_t(s h)       (V, C)

The rows are taken ``chunk_rows`` at a time: one chunk's logits (R, V) are computed, reduced to its
loss terms and, when gradients are wanted, scaled into softmax(z) s in place and multiplied straight
into gh (and gW); then the chunk dies. The one-hot part is a gather of R rows of W (and, for gW, one
scatter-add at the end), so no (R, V) one-hot array is ever made. Peak extra memory is one (R, V)
array instead of three (N, V) ones: for SmolLM2 at batch 4 x 128 (N = 512, V = 49152) that is
24 MiB at R = 128 against 96 MiB per array at R = N. 128 rows, not fewer: the (R, 576) x (576, 49152)
products run at 99 GFLOP/s with 64 rows, 132 with 128 and 147 with 256 on the 2-core VM
(bench/results/bench_memory.json has the chunk sweep; docs/speed.md).

The gradient is computed in the forward pass (the loss is a scalar, so the VJP only scales the
stored gh, gW by the cotangent g): no logits are kept for backward and none are recomputed. Which
gradients to compute is decided when the op runs (an input that requires grad, with gradients
enabled), so evaluation under ``no_grad`` costs only the loss. The result equals
``kernels.cross_entropy(h W^T, t)`` to float32 rounding (tests/core/test_lm_head_loss.py).

Like ``linear_4bit``, the op is a private Primitive (applied with ``tensor.apply``): it is the fused
composite ``cross_entropy(linear(h, W), t)``, and its tests check it against exactly that.
"""
from __future__ import annotations

from . import backend
from .tensor import Primitive, Tensor, apply

DEFAULT_CHUNK_ROWS = 128  # GEMM rate against chunk memory: see the module doc and docs/speed.md


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


def _forward(h, weight, targets, *, ignore_index=-100, chunk_rows=DEFAULT_CHUNK_ROWS, needs=(False, False, False)):
    """loss (scalar) and its VJP; gh (N, C) and gW (V, C) are filled chunk by chunk when ``needs`` asks
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
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        hc, tc, sc = h[start:stop, :], safe[start:stop], scale[start:stop]
        z = xp.matmul(hc, weight.mT)  # (R, V) logits of this chunk
        row_max = xp.max(z, axis=1, keepdims=True)  # (R, 1)
        picked = xp.take_along_axis(z, xp.reshape(tc, (-1, 1)), axis=1)[:, 0]  # (R,)
        z -= row_max
        z = _exp_in_place(xp, z)  # (R, V) unnormalized softmax
        row_sum = xp.sum(z, axis=1, keepdims=True)  # (R, 1)
        total = total + xp.sum(sc * (xp.log(row_sum[:, 0]) + row_max[:, 0] - picked))
        if gh is not None or gw is not None:
            z *= sc[:, None] / row_sum  # softmax * scale
            if gh is not None:
                gh[start:stop, :] = xp.matmul(z, weight) - sc[:, None] * backend.take_rows(xp, weight, tc)  # (R, C)
            if gw is not None:
                gw += xp.matmul(z.mT, hc)  # (V, C); the one-hot part follows the loop
        del z  # before the next chunk's logits exist: one chunk at a time
    if gw is not None:
        gw -= backend.scatter_add(xp, v, safe, scale[:, None] * h)  # row t_n of W gets - s_n h_n

    def vjp(g, needs):
        return (gh * g if needs[0] else None, gw * g if needs[1] else None, None)
    return total, vjp


LINEAR_CROSS_ENTROPY = Primitive("linear_cross_entropy", _forward, fused=True, takes_needs=True)


def linear_cross_entropy(h, weight, targets, ignore_index: int = -100,
                         chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Mean cross entropy of logits h W^T (never formed whole) against targets; see the module doc.

    h (N, C) Tensor, weight (V, C) Tensor (e.g. lm_head.weight), targets int (N,) array -> scalar.
    """
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows <= 0:
        raise ValueError(f"linear_cross_entropy: chunk_rows must be a positive integer, got {chunk_rows!r}")
    h = h if isinstance(h, Tensor) else Tensor(h)
    weight = weight if isinstance(weight, Tensor) else Tensor(weight)
    targets = targets.data if isinstance(targets, Tensor) else targets
    return apply(LINEAR_CROSS_ENTROPY, h, weight, targets, ignore_index=ignore_index, chunk_rows=chunk_rows)
