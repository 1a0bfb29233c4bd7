"""Fused kernels: primitives with hand-written VJPs, for speed and numerical stability.

Each one equals a composite of basic primitives (functional.composite_*), and a test checks the
value and the gradient of both. Shapes: x (..., C) unless stated; the normalized axis is the last.
"""
from __future__ import annotations

import math

from . import backend, inplace
from .tensor import primitive


_NAMESPACE_OF_TYPE: dict = {}  # array type -> its namespace, as backend.namespace_of answered


def _xp(*arrays):
    """backend.namespace_of(*arrays), which refuses arrays of two backends; when the arrays share one
    type already seen, a dict lookup (a decoding step calls this about a thousand times)."""
    kinds = {type(a) for a in arrays if a is not None and not isinstance(a, (int, float, bool))}
    if len(kinds) != 1:
        return backend.namespace_of(*arrays)
    (kind,) = kinds
    xp = _NAMESPACE_OF_TYPE.get(kind)
    if xp is None:
        xp = _NAMESPACE_OF_TYPE[kind] = backend.namespace_of(*arrays)
    return xp


def discarded_output(xp, shape, dtype):
    """Zeros of ``shape`` without memory (a broadcast view of one zero): what a primitive called with
    value=False returns in place of an output nobody reads."""
    return xp.broadcast_to(xp.zeros((), dtype=dtype), shape)


def row_dot(xp, a, b):
    """sum(a * b) over the last axis, kept as a size-1 axis: (..., n), (..., n) -> (..., 1).

    One pass and no (..., n) temporary through the namespace's vecdot (array API 2023, NumPy >= 2:
    2.7x faster than the sum of the product on attention's rows of 128); the sum of the product
    where a namespace has no vecdot.
    """
    vecdot = getattr(xp, "vecdot", None)
    d = vecdot(a, b, axis=-1) if vecdot is not None else xp.sum(a * b, axis=-1)
    return xp.reshape(d, tuple(d.shape) + (1,))


def _sum_leading(xp, g):
    """Sum over every axis but the last: (..., C) -> (C,)."""
    return xp.sum(xp.reshape(g, (-1, g.shape[-1])), axis=0)


@primitive(fused=True, takes_needs=True)
def linear(x, weight, bias=None, needs=(True, True, True), value=True):
    """y = x W^T + b.  x (..., d_in), W (d_out, d_in), b (d_out,) -> (..., d_out).

    The leading dimensions are folded into one so that each product is a single GEMM.
    VJP: gx = g W, gW = g^T x, gb = sum of g over the leading dimensions. Only gW uses x, so a
    frozen weight (needs[1] False) keeps no reference to the input. No VJP reads y: ``value=False``
    records the same VJP and skips the product, returning zeros, for an output that is thrown away
    (the last product of a checkpointed recompute, models/checkpoint.py).
    """
    xp = _xp(x, weight)
    if x.shape[-1] != weight.shape[-1] or weight.ndim != 2:
        raise ValueError(f"linear: input of shape {tuple(x.shape)} does not fit weight of shape "
                         f"{tuple(weight.shape)} (expected input (..., {weight.shape[-1]}))")
    lead, d_in = tuple(x.shape[:-1]), x.shape[-1]
    x2 = xp.reshape(x, (-1, d_in))  # (N, d_in)
    if value:
        y = xp.matmul(x2, weight.mT)  # (N, d_out)
        if bias is not None:
            y = y + bias
    else:
        y = discarded_output(xp, (x2.shape[0], weight.shape[0]), x.dtype)
    saved_x = x2 if needs[1] else None

    def vjp(g, needs):
        g2 = xp.reshape(g, (-1, g.shape[-1]))  # (N, d_out)
        gx = xp.reshape(xp.matmul(g2, weight), lead + (d_in,)) if needs[0] else None
        gw = xp.matmul(g2.mT, saved_x) if needs[1] else None
        gb = xp.sum(g2, axis=0) if (len(needs) > 2 and needs[2]) else None
        return gx, gw, gb
    return xp.reshape(y, lead + (weight.shape[0],)), vjp


@primitive(fused=True)
def softmax(x, axis=-1):
    """y = exp(x - max) / sum exp(x - max). VJP: gx = y * (g - sum(g * y))."""
    xp = _xp(x)
    z = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    y = z / xp.sum(z, axis=axis, keepdims=True)
    return y, lambda g, needs: (y * (g - xp.sum(g * y, axis=axis, keepdims=True)),)


@primitive(fused=True)
def log_softmax(x, axis=-1):
    """y = x - logsumexp(x). VJP: gx = g - softmax(x) * sum(g)."""
    xp = _xp(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    y = shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    return y, lambda g, needs: (g - xp.exp(y) * xp.sum(g, axis=axis, keepdims=True),)


@primitive(fused=True)
def cross_entropy(logits, targets, ignore_index=-100):
    """Mean negative log-likelihood of ``targets`` under softmax(logits), skipping ignore_index.

    logits (N, V), targets int (N,) -> scalar. loss = sum_valid(logsumexp(z_n) - z_n[t_n]) / n_valid.
    VJP: gz = g * (softmax(z) - onehot(t)) / n_valid on valid rows, 0 on ignored rows.
    A batch with no valid target has loss 0 and gradient 0.
    Memory: softmax(z) (N, V) is the only saved array; backward adds the gradient (N, V) and a
    boolean one-hot (N, V). The in-place updates touch only arrays this kernel just made.
    """
    xp = _xp(logits, targets)
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if not xp.isdtype(targets.dtype, "integral"):
        raise ValueError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    valid = targets != ignore_index  # (N,)
    safe = xp.where(valid, targets, xp.zeros_like(targets))  # (N,) ignored rows point at class 0
    if bool(xp.any((safe < 0) | (safe >= logits.shape[1]))):
        raise ValueError(f"cross_entropy: targets must lie in [0, {logits.shape[1]}) or equal "
                         f"ignore_index={ignore_index}")
    n_valid = int(xp.sum(xp.astype(valid, xp.int64)))
    denom = float(n_valid if n_valid else 1)
    row_max = xp.max(logits, axis=1, keepdims=True)  # (N, 1)
    probs = xp.exp(logits - row_max)  # (N, V), unnormalized for now
    total = xp.sum(probs, axis=1, keepdims=True)  # (N, 1)
    probs /= total  # softmax, saved for the VJP
    lse = xp.log(total[:, 0]) + row_max[:, 0]  # (N,)
    picked = xp.take_along_axis(logits, xp.reshape(safe, (-1, 1)), axis=1)[:, 0]  # (N,)
    zero = xp.zeros_like(lse)
    loss = xp.sum(xp.where(valid, lse - picked, zero)) / denom

    def vjp(g, needs):
        scale = xp.where(valid, xp.full_like(lse, 1.0 / denom), zero) * g  # (N,)
        grad = probs * xp.reshape(scale, (-1, 1))  # (N, V)
        target_hot = xp.reshape(safe, (-1, 1)) == xp.arange(logits.shape[1], dtype=safe.dtype)[None, :]
        grad[target_hot] -= scale  # one True per row, in row order
        return grad, None
    return loss, vjp


@primitive(fused=True)
def layer_norm(x, weight, bias=None, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis (biased variance); b may be None.

    VJP with xhat = (x - mean) * rstd, gh = g * w:
    gx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), gw = sum(g * xhat), gb = sum(g).
    """
    xp = _xp(x, weight)
    mu = xp.mean(x, axis=-1, keepdims=True)
    centered = x - mu
    rstd = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    xhat = centered * rstd

    def vjp(g, needs):
        gh = g * weight
        gx = rstd * (gh - xp.mean(gh, axis=-1, keepdims=True)
                     - xhat * xp.mean(gh * xhat, axis=-1, keepdims=True)) if needs[0] else None
        gw = _sum_leading(xp, g * xhat) if needs[1] else None
        gb = _sum_leading(xp, g) if len(needs) > 2 and needs[2] else None
        return gx, gw, gb
    y = xhat * weight
    return (y if bias is None else y + bias), vjp


@primitive(fused=True)
def rms_norm(x, weight, eps=1e-6):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis (Llama's RMSNorm).

    VJP with xhat = x * rstd, gh = g * w: gx = rstd * (gh - xhat * mean(gh * xhat)), gw = sum(g * xhat).
    """
    xp = _xp(x, weight)
    if inplace.enabled(xp) and x.shape[-1] == weight.shape[-1] and x.dtype == weight.dtype:  # inplace.py: same numbers
        y, rstd, xhat = inplace.rms_norm(xp, x, weight, eps)
        return y, lambda g, needs: inplace.rms_norm_vjp(xp, g, weight, rstd, xhat, needs[0], needs[1])
    rstd = 1.0 / xp.sqrt(row_dot(xp, x, x) / x.shape[-1] + eps)
    xhat = x * rstd

    def vjp(g, needs):
        gh = g * weight
        gx = rstd * (gh - xhat * (row_dot(xp, gh, xhat) / x.shape[-1])) if needs[0] else None
        gw = _sum_leading(xp, g * xhat) if needs[1] else None
        return gx, gw
    return xhat * weight, vjp


_GELU_K = math.sqrt(2.0 / math.pi)


@primitive(fused=True)
def gelu(x):
    """GELU, tanh form: y = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi).

    VJP: gx = g * (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2)).
    """
    xp = _xp(x)
    t = xp.tanh(_GELU_K * (x + 0.044715 * x * x * x))

    def vjp(g, needs):
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_K * (1 + 3 * 0.044715 * x * x)),)
    return 0.5 * x * (1 + t), vjp


def sigmoid(xp, x):
    """s = (1 + tanh(x / 2)) / 2 = 1 / (1 + exp(-x)) without overflow; one fresh array, updated in place."""
    s = xp.tanh(0.5 * x)
    s += 1.0
    s *= 0.5
    return s


@primitive(fused=True)
def silu(x):
    """y = x * sigmoid(x). VJP: gx = g * s * (1 + x (1 - s)) with s = sigmoid(x)."""
    xp = _xp(x)
    s = sigmoid(xp, x)
    return x * s, lambda g, needs: (g * s * (1 + x * (1 - s)),)


@primitive(fused=True)
def swiglu(gate, up):
    """y = silu(gate) * up (Llama's MLP). VJP: gup = g * silu(gate), ggate = g * up * silu'(gate).

    With s = sigmoid(gate) = (1 + tanh(gate / 2)) / 2: silu(gate) = gate s, silu'(gate) =
    s (1 + gate (1 - s)). Saved: gate and up alone. Backward recomputes s (a tanh and three cheap
    passes) rather than keeping it: one (..., F) array less per layer, the widest activations of the
    model (90 MiB of SmolLM2's step at batch 4 x 128), for no measurable time.
    """
    xp = _xp(gate, up)
    if inplace.enabled(xp) and gate.shape == up.shape and gate.dtype == up.dtype:  # inplace.py: the same numbers
        return (inplace.swiglu(xp, gate, up),
                lambda g, needs: inplace.swiglu_vjp(xp, g, gate, up, needs[0], needs[1]))

    def vjp(g, needs):
        s = sigmoid(xp, gate)  # (..., F)
        ggate = gup = None
        if needs[1]:
            gup = gate * s
            gup *= g
        if needs[0]:
            ggate = 1.0 - s
            ggate *= gate
            ggate += 1.0
            ggate *= s
            ggate *= up
            ggate *= g
        return ggate, gup
    return (gate * sigmoid(xp, gate)) * up, vjp


@primitive(fused=True)
def dropout(x, keep_mask, p):
    """y = x * keep_mask / (1 - p) (inverted dropout; the mask is drawn by the caller).

    VJP: gx = g * keep_mask / (1 - p).
    """
    xp = _xp(x)
    scale = xp.astype(keep_mask, x.dtype) * (1.0 / (1.0 - p))
    return x * scale, lambda g, needs: (g * scale, None)


@primitive(fused=True)
def rope(x, cos, sin, interleaved=False):
    """Rotary position embedding: y = x * cos + rot(x) * sin.  x (..., T, hs), cos/sin (T, hs).

    Half layout (Hugging Face): rot(x) = concat(-x2, x1) on the two halves of the head dim.
    Interleaved layout (llama.cpp / GPT-J): rot(x)[2i] = -x[2i+1], rot(x)[2i+1] = x[2i].
    rot is antisymmetric, so the VJP is gx = g * cos - rot(g * sin).
    """
    xp = _xp(x, cos)
    if x.shape[-1] % 2 or tuple(cos.shape) != tuple(sin.shape) or cos.shape[-1] != x.shape[-1]:
        raise ValueError(f"rope: expected x (..., T, hs) with even hs and cos, sin (T, hs), got x "
                         f"{tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")

    if inplace.enabled(xp) and not interleaved and x.dtype == cos.dtype == sin.dtype:  # inplace.py: the same numbers
        return (inplace.rope_half(xp, x, cos, sin),
                lambda g, needs: (inplace.rope_half(xp, g, cos, sin, transpose=True), None, None))

    def rot(z):
        if interleaved:
            pairs = xp.reshape(z, tuple(z.shape[:-1]) + (z.shape[-1] // 2, 2))
            turned = xp.stack((-pairs[..., 1], pairs[..., 0]), axis=-1)
            return xp.reshape(turned, tuple(z.shape))
        half = z.shape[-1] // 2
        return xp.concat((-z[..., half:], z[..., :half]), axis=-1)

    return x * cos + rot(x) * sin, lambda g, needs: (g * cos - rot(g * sin), None, None)


def causal_mask(xp, t_q: int, t_k: int):
    """Boolean (t_q, t_k): query i (the last t_q of t_k positions) may see key j when j <= i + t_k - t_q."""
    rows = xp.reshape(xp.arange(t_q, dtype=xp.int64), (-1, 1)) + (t_k - t_q)
    return xp.reshape(xp.arange(t_k, dtype=xp.int64), (1, -1)) <= rows


def check_attention_shapes(q_shape, k_shape, v_shape, causal: bool) -> None:
    """ValueError unless q (B, nh, T, hs), k = v (B, nkv, S, hs), nkv divides nh, and (causal) T <= S."""
    q_shape, k_shape, v_shape = tuple(q_shape), tuple(k_shape), tuple(v_shape)
    if len(q_shape) != 4 or len(k_shape) != 4 or k_shape != v_shape:
        raise ValueError(f"attention: expected q (B, nh, T, hs) and k, v (B, nkv, S, hs) of equal shape, "
                         f"got q {q_shape}, k {k_shape}, v {v_shape}")
    if q_shape[0] != k_shape[0] or q_shape[3] != k_shape[3]:
        raise ValueError(f"attention: q {q_shape} and k {k_shape} differ in batch size or head size")
    if k_shape[1] == 0 or q_shape[1] % k_shape[1]:
        raise ValueError(f"attention: {q_shape[1]} query heads are not a multiple of {k_shape[1]} key/value heads")
    if causal and q_shape[2] > k_shape[2]:
        raise ValueError(f"attention: causal attention needs T <= S (queries are the last T of S positions), "
                         f"got T={q_shape[2]}, S={k_shape[2]}")


@primitive(fused=True)
def attention(q, k, v, causal=True, scale=None):
    """Scaled dot-product attention with grouped-query heads.

    q (B, nh, T, hs), k and v (B, nkv, S, hs) with nh = nkv * groups -> (B, nh, T, hs).
    P = softmax(scale * q k^T + mask), y = P v; with a causal mask query t sees keys s <= t + S - T.
    The groups are folded into the query rows, so each head group is one batched GEMM:
    q -> (B, nkv, groups*T, hs).
    VJP: gv = P^T g, gP = g v^T, gS = P * (gP - sum(gP * P)), gq = scale gS k, gk = scale gS^T q.
    """
    xp = _xp(q, k, v)
    check_attention_shapes(q.shape, k.shape, v.shape, causal)
    b, nh, t, hs = q.shape
    nkv, s_len = k.shape[1], k.shape[2]
    groups = nh // nkv
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    qg = xp.reshape(q, (b, nkv, groups * t, hs))  # (B, nkv, g*T, hs)
    scores = xp.matmul(qg, k.mT)  # (B, nkv, g*T, S); scaled, masked and normalised in place below
    scores *= scale
    if causal and t > 1:  # a single query is the last position: it sees every key, the mask is all zeros
        allowed = causal_mask(xp, t, s_len)  # (T, S)
        bias = xp.where(allowed, xp.zeros(allowed.shape, dtype=scores.dtype),
                        xp.full(allowed.shape, -math.inf, dtype=scores.dtype))
        scores += xp.reshape(xp.broadcast_to(bias[None, :, :], (groups, t, s_len)), (groups * t, s_len))
    scores -= xp.max(scores, axis=-1, keepdims=True)
    probs = xp.exp(scores)
    del scores
    probs /= xp.sum(probs, axis=-1, keepdims=True)
    y = xp.matmul(probs, v)  # (B, nkv, g*T, hs)

    def vjp(g, needs):
        gg = xp.reshape(g, (b, nkv, groups * t, hs))
        gv = xp.matmul(probs.mT, gg) if needs[2] else None
        gs = xp.matmul(gg, v.mT)  # gP, turned into gS in place: P * (gP - sum(gP * P)) * scale
        gs -= row_dot(xp, gs, probs)
        gs *= probs
        gs *= scale
        gq = xp.reshape(xp.matmul(gs, k), (b, nh, t, hs)) if needs[0] else None
        gk = xp.matmul(gs.mT, qg) if needs[1] else None
        return gq, gk, gv
    return xp.reshape(y, (b, nh, t, hs)), vjp
