"""NumPy fast paths of three element-wise kernels (SwiGLU, RMSNorm, RoPE): the same numbers, in place.

The portable kernels in kernels.py are written once for every namespace, each step a whole-array
expression that allocates its result. On NumPy, ``out=`` writes each step into an array made once,
which saves passes over fresh memory (RoPE's VJP, for example, drops its concatenations). The
functions here compute exactly the portable kernels' expressions, element by element and in the same
order, so the results are the same numbers (tests/core/test_inplace.py checks each against its
portable kernel, bit for bit).

Measured on the SmolLM2 LoRA step (2-core VM, 2026-12-02, docs/speed.md): these three kernels took
267 ms of a step through the portable code and 217 ms here. Splitting their rows over two threads
as well was measured and gave nothing (255 ms): at these sizes the kernels are bound by memory
bandwidth, and the BLAS threads still spinning after each GEMM compete for the same two cores.

``enabled(xp)``: NumPy arrays, unless ``set_enabled(False)`` or MINILORA_INPLACE=0.
"""
from __future__ import annotations

import os

from . import backend

_STATE = {"enabled": os.environ.get("MINILORA_INPLACE", "1") != "0"}


def enabled(xp) -> bool:
    return _STATE["enabled"] and backend.backend_name(xp) == "numpy"


def set_enabled(flag: bool) -> None:
    """Turn the fast paths on or off (the portable kernels run when off)."""
    _STATE["enabled"] = bool(flag)


def _empty(np, like):
    return np.empty(like.shape, dtype=like.dtype)  # C-ordered, whatever the layout of ``like``


# ------------------------------------------------------------------ SwiGLU: y = silu(gate) * up

def sigmoid(np, gate):
    """s = sigmoid(gate) = (1 + tanh(gate / 2)) / 2 in one fresh array, in kernels.sigmoid's order."""
    s = np.multiply(gate, 0.5)
    np.tanh(s, out=s)
    s += 1.0
    s *= 0.5
    return s


def swiglu(np, gate, up):
    """y = (gate * s) * up with s = sigmoid(gate), the product taken in s's array."""
    y = sigmoid(np, gate)
    y *= gate
    y *= up
    return y


def swiglu_vjp(np, g, gate, up, need_gate: bool, need_up: bool):
    """s recomputed from gate; ggate = g * up * s * (1 + gate (1 - s)), gup = (gate * s) * g."""
    s = sigmoid(np, gate)
    ggate = gup = None
    if need_up:
        gup = np.multiply(gate, s)
        gup *= g
    if need_gate:
        ggate = np.subtract(1.0, s)
        ggate *= gate
        ggate += 1.0
        ggate *= s
        ggate *= up
        ggate *= g
    return ggate, gup


# ------------------------------------------------------------------ RMSNorm: y = x rstd w

def rms_norm(np, x, weight, eps: float):
    """(y, rstd, xhat): rstd = 1 / sqrt(x . x / C + eps) over the last axis (..., 1), xhat = x rstd, y = xhat w."""
    rstd = np.vecdot(x, x, axis=-1)[..., None]  # kernels.row_dot's numbers
    rstd /= x.shape[-1]
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.divide(1.0, rstd, out=rstd)
    xhat = np.multiply(x, rstd)
    return np.multiply(xhat, weight), rstd, xhat


def rms_norm_vjp(np, g, weight, rstd, xhat, need_x: bool, need_w: bool):
    """gx = rstd (gh - xhat (gh . xhat) / C) with gh = g w; gw = sum over the leading axes of g xhat."""
    gx = gw = None
    if need_x:
        gh = np.multiply(g, weight)
        mean = np.vecdot(gh, xhat, axis=-1)[..., None]  # kernels.row_dot's numbers
        mean /= xhat.shape[-1]
        gx = np.multiply(xhat, mean)
        np.subtract(gh, gx, out=gx)
        gx *= rstd
    if need_w:
        prod = np.multiply(g, xhat)
        gw = np.sum(prod.reshape(-1, prod.shape[-1]), axis=0)
    return gx, gw


# ------------------------------------------------------------------ RoPE (half layout): x cos + rot(x) sin

def rope_half(np, x, cos, sin, transpose: bool = False):
    """RoPE in the half layout, rot(x) = concat(-x2, x1) on the two halves of the last axis.

    Forward, the portable x cos + rot(x) sin written per half:
        out1 = x1 cos1 - x2 sin1,   out2 = x2 cos2 + x1 sin2
    transpose=True, the VJP g cos - rot(g sin):
        out1 = g1 cos1 + g2 sin2,   out2 = g2 cos2 - g1 sin1
    """
    half = x.shape[-1] // 2
    out = np.multiply(x, cos)
    if transpose:
        out[..., :half] += x[..., half:] * sin[..., half:]
        out[..., half:] -= x[..., :half] * sin[..., :half]
    else:
        out[..., :half] -= x[..., half:] * sin[..., :half]
        out[..., half:] += x[..., :half] * sin[..., half:]
    return out
