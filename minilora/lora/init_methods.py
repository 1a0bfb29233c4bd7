"""Weight-aware LoRA initializations: PiSSA, randomized PiSSA, OLoRA, LoftQ (pure array functions).

Each takes the frozen base weight W (d_out, d_in), the rank r and the adapter's scaling s, and
returns the factors A (r, d_in), B (d_out, r) and the base weight the layer keeps from then on:

    pissa   (arXiv 2404.02948)  W = U S V^T (SVD). B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T,
                                 base' = W - s B A (the residual: the minor singular directions).
    pissa_niter_K                the same with a randomized SVD (Halko et al. 2009, algorithm 4.4:
                                 K subspace iterations) in place of the full one.
    olora   (arXiv 2406.01775)  W = Q R (reduced QR). B = Q[:, :r], A = R[:r], base' = W - s B A.
    loftq   (arXiv 2310.08659)  for a 4-bit base: T iterations of
                                     Q_t = quant(W - s B_{t-1} A_{t-1})      (B_0 A_0 = 0)
                                     s B_t A_t = rank-r SVD of W - dequant(Q_t)
                                 base' = Q_T (quantized), so dequant(Q_T) + s B A approximates W.

PiSSA and OLoRA hold base' + s B A == W up to float rounding. Everything is computed in float32
(as PEFT does) and returned in W's dtype. PEFT's LoftQ returns B = L, A = R with L R the rank-r
SVD factors and ignores s; here B = L / sqrt(s), A = R / sqrt(s), identical to PEFT at s = 1
(PEFT's default lora_alpha == r) and still s B A = L R otherwise.
"""
from __future__ import annotations

import math
import re

from ..errors import ConfigError

WEIGHT_AWARE = ("pissa", "olora", "loftq")  # the init names that rewrite the base weight
LOFTQ_DEFAULTS = {"loftq_bits": 4, "loftq_iter": 1}  # PEFT's LoftQConfig names and defaults
_PISSA_NITER = re.compile(r"pissa_niter_(\d+)")


def parse_init(value):
    """init_lora_weights -> (kind, niter): kind in True / False / "gaussian" / "pissa" / "olora" / "loftq".

    niter is K for "pissa_niter_K" (randomized SVD), else None. Anything else raises ConfigError.
    """
    if value is True or value is False or value in ("gaussian", "pissa", "olora", "loftq"):
        return value, None
    if isinstance(value, str):
        match = _PISSA_NITER.fullmatch(value)
        if match:
            return "pissa", int(match.group(1))
    raise ConfigError(f"init_lora_weights must be True, False, 'gaussian', 'pissa', 'pissa_niter_K' (K >= 0 "
                      f"subspace iterations), 'olora' or 'loftq'; got {value!r}")


def check_loftq_config(loftq_config) -> dict:
    """PEFT's loftq_config dict ({} or {"loftq_bits": 4, "loftq_iter": T >= 1}) with defaults filled in."""
    if not isinstance(loftq_config, dict) or set(loftq_config) - set(LOFTQ_DEFAULTS):
        raise ConfigError(f"loftq_config must be a dict with keys {sorted(LOFTQ_DEFAULTS)}, got {loftq_config!r}")
    out = {**LOFTQ_DEFAULTS, **loftq_config}
    if out["loftq_bits"] != 4 or isinstance(out["loftq_bits"], bool):
        raise ConfigError(f"loftq_config.loftq_bits: minilora quantizes to 4 bits (NF4) only, got {out['loftq_bits']!r}")
    iters = out["loftq_iter"]
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"loftq_config.loftq_iter must be an integer >= 1, got {iters!r}")
    return out


def _check_rank(weight, r: int) -> None:
    if len(weight.shape) != 2 or not 0 < r <= min(weight.shape):
        raise ConfigError(f"a weight-aware init needs 0 < r <= min(d_out, d_in); got r={r} for a weight of "
                          f"shape {tuple(weight.shape)}")


def _split_singular(xp, u, sing, vh, scaling: float):
    """B = U sqrt(S / s) (d_out, r), A = sqrt(S / s) V^T (r, d_in) from r singular triplets."""
    root = xp.sqrt(sing / scaling)  # (r,)
    return root[:, None] * vh, u * root[None, :]


def pissa(xp, weight, r: int, scaling: float):
    """PiSSA with the full SVD: (A, B, residual base weight). See the module docstring."""
    _check_rank(weight, r)
    w = xp.astype(weight, xp.float32)
    u, sing, vh = xp.linalg.svd(w, full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    a, b = _split_singular(xp, u[:, :r], sing[:r], vh[:r, :], scaling)
    return _cast(xp, a, b, w - scaling * xp.matmul(b, a), weight.dtype)


def randomized_svd(xp, weight, q: int, niter: int, rng):
    """Rank-q approximate SVD of W (m, n) by a Gaussian sketch and ``niter`` subspace iterations.

    Y = W G (G (n, q) ~ N(0, 1)), Q = qr(Y).Q; niter times: Q = qr(W^T Q).Q, Q = qr(W Q).Q;
    then W ~ Q (Q^T W) = (Q U_b) S V^T. Returns U (m, q), S (q,), V^T (q, n). The error falls with
    niter like (sigma_{q+1} / sigma_q)^(2 niter + 1) (Halko, Martinsson, Tropp 2009, sec. 4.5).
    """
    w = xp.astype(weight, xp.float32)
    y = xp.matmul(w, rng.normal((w.shape[1], q), dtype=xp.float32))  # (m, q)
    basis = xp.linalg.qr(y).Q
    for _ in range(niter):
        basis = xp.linalg.qr(xp.matmul(w.mT, basis)).Q  # (n, q)
        basis = xp.linalg.qr(xp.matmul(w, basis)).Q  # (m, q)
    u_small, sing, vh = xp.linalg.svd(xp.matmul(basis.mT, w), full_matrices=False)  # (q, q), (q,), (q, n)
    return xp.matmul(basis, u_small), sing, vh


def pissa_lowrank(xp, weight, r: int, scaling: float, niter: int, rng):
    """PiSSA with ``randomized_svd`` (init "pissa_niter_K"); the residual keeps base' + s B A == W."""
    _check_rank(weight, r)
    w = xp.astype(weight, xp.float32)
    u, sing, vh = randomized_svd(xp, w, r, niter, rng)
    a, b = _split_singular(xp, u, sing, vh, scaling)
    return _cast(xp, a, b, w - scaling * xp.matmul(b, a), weight.dtype)


def olora(xp, weight, r: int, scaling: float):
    """OLoRA: W = Q R (reduced, Householder), B = Q[:, :r], A = R[:r] (not rescaled by s, as PEFT)."""
    _check_rank(weight, r)
    w = xp.astype(weight, xp.float32)
    q, upper = xp.linalg.qr(w)  # (d_out, k), (k, d_in)
    a, b = upper[:r, :], q[:, :r]
    return _cast(xp, a, b, w - scaling * xp.matmul(b, a), weight.dtype)


def loftq(xp, weight, r: int, scaling: float, num_iter: int, quantize):
    """LoftQ: (payload, dequantized base, A, B) after ``num_iter`` alternations (module docstring).

    quantize: W (float32) -> (dequant(quant(W)), payload); payload is whatever the caller needs to
    build the quantized layer (e.g. packed bytes and state) and is returned from the last round.
    """
    _check_rank(weight, r)
    w = xp.astype(weight, xp.float32)
    target = w
    for step in range(num_iter):
        dequantized, payload = quantize(target)
        u, sing, vh = xp.linalg.svd(w - dequantized, full_matrices=False)
        root = xp.sqrt(sing[:r])
        left, right = u[:, :r] * root[None, :], root[:, None] * vh[:r, :]  # L (d_out, r), R (r, d_in)
        if step + 1 < num_iter:
            target = w - xp.matmul(left, right)
    shrink = 1.0 / math.sqrt(scaling)
    return payload, xp.astype(dequantized, weight.dtype), xp.astype(right * shrink, weight.dtype), \
        xp.astype(left * shrink, weight.dtype)


def _cast(xp, a, b, residual, dtype):
    return xp.astype(a, dtype), xp.astype(b, dtype), xp.astype(residual, dtype)


# ---------------------------------------------------------------- on a LoRALinear
LOFTQ_QUANT = dict(quant_type="nf4", blocksize=64, double_quant=False)  # PEFT's LoftQ: Params4bit(compress_statistics=False)


def init_from_base(layer, name: str, init_lora_weights, loftq_config, seed: int) -> None:
    """Overwrite adapter ``name``'s A, B from ``layer``'s base weight and put the new base in place.

    A 4-bit base takes pissa/olora by dequantizing, and its residual is quantized again with the same
    settings (PEFT does so for OLoRA). loftq needs the float weight W: the float base becomes a
    Linear4bit holding Q_T (NF4, blocks of 64, no double quantization, as PEFT's LoftQ).
    """
    from ..quant.linear4bit import Linear4bit
    from ..quant.quantize import dequantize_4bit, quantize_4bit
    from ..backend import Random
    from .base_weight import base_weight, is_quantized
    kind, niter = parse_init(init_lora_weights)
    xp, r, scaling, base = layer.xp, layer.r[name], layer.scaling[name], layer.base_layer
    bias = getattr(base, "bias", None)
    bias = None if bias is None else bias.data
    weight = base_weight(base)
    if kind == "loftq":
        if is_quantized(base):
            raise ConfigError("init_lora_weights='loftq' needs the float weights: give get_lora_model the float "
                              "model (LoftQ quantizes the targeted layers itself), not an already quantized one")
        iters = check_loftq_config(loftq_config or {})["loftq_iter"]

        def quantize(w):
            packed, state = quantize_4bit(w, **LOFTQ_QUANT)
            return dequantize_4bit(packed, state), (packed, state)
        (packed, state), _, a, b = loftq(xp, weight, r, scaling, iters, quantize)
        layer.base_layer = Linear4bit(packed, state, bias)
    else:
        if kind == "olora":
            a, b, residual = olora(xp, weight, r, scaling)
        elif niter is None:
            a, b, residual = pissa(xp, weight, r, scaling)
        else:
            a, b, residual = pissa_lowrank(xp, weight, r, scaling, niter, Random(seed, xp=xp))
        if is_quantized(base):
            state = base.quant_state
            packed, new_state = quantize_4bit(residual, blocksize=state.blocksize, quant_type=state.quant_type,
                                              double_quant=state.nested)
            layer.base_layer = Linear4bit(packed, new_state, bias)
        else:
            base.weight.data = xp.astype(residual, base.weight.dtype)
    layer.put_factors(name, lora_A=xp.astype(a, layer.dtype), lora_B=xp.astype(b, layer.dtype))
