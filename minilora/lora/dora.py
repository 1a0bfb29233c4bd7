"""DoRA (arXiv 2402.09353): weight-decomposed LoRA, the math on top of one LoRA adapter.

With W0 (d_out, d_in) the frozen base weight, B A the adapter's product and s its scaling:

    W' = m * (W0 + s B A) / n,      n = ||W0 + s B A||_c  (d_out,): the L2 norm of each output row,
                                    i.e. over axis 1 of (d_out, d_in) (PEFT: linalg.norm(dim=1))
    m (d_out,) trainable, initialized to n at the adapter's creation (so W' == W0 at init).

n is *detached* (paper sec. 4.3; PEFT): it is recomputed from the current B A each forward but
gets no gradient. The layer output, written as an increment on the base's output (PEFT's form):

    y = base(x) + (m / n - 1) * (x W0^T) + (m / n) * s * (x A^T B^T)        x (..., d_in)

where x W0^T is the base output without its bias. At init m / n is exactly 1.0 (the same float
computation twice), so the increment is exactly 0 and DoRA equals the base bit for bit.

Merging: W0 <- (m / n) * (W0 + s B A) with n taken from the unmerged W0; unmerging divides by the
same factor (kept from the merge) and subtracts s B A.
"""
from __future__ import annotations

from .. import functional as F, ops
from ..nn import Parameter
from ..tensor import Tensor

MAGNITUDE_KEY = "lora_magnitude_vector"  # PEFT's module name; files store <path>.lora_magnitude_vector


def weight_norm(xp, weight, delta):
    """n = ||W + delta||_c: the L2 norm of each row of the (d_out, d_in) sum, shape (d_out,)."""
    w = weight + delta
    return xp.sqrt(xp.sum(w * w, axis=1))


def dora_increment(base_out: Tensor, lora_out: Tensor, magnitude: Tensor, norm, scaling: float) -> Tensor:
    """(m/n - 1) * base_out + (m/n) * s * lora_out, all (..., d_out); m (d_out,) a Tensor, n (d_out,) a
    plain array (so no gradient reaches it). base_out = x W0^T (no bias), lora_out = x A^T B^T."""
    factor = ops.div(magnitude, norm)  # (d_out,), broadcast over the rows
    return (factor - 1.0) * base_out + factor * lora_out * scaling


def merged_weight(xp, weight, delta, magnitude, norm):
    """(m / n)[:, None] * (W + delta), (d_out, d_in): the weight that replaces W when merging."""
    return (magnitude / norm)[:, None] * (weight + delta)


def unmerged_weight(xp, merged, delta, magnitude, norm):
    """merged / (m / n)[:, None] - delta: the inverse of merged_weight (norm as kept from the merge)."""
    return merged / (magnitude / norm)[:, None] - delta


# ---------------------------------------------------------------- on a LoRALinear (by composition)
def is_dora(layer, name: str) -> bool:
    """Whether adapter ``name`` of ``layer`` has a magnitude vector (is a DoRA adapter)."""
    return name in vars(layer).get(MAGNITUDE_KEY, ())


def add_magnitude(layer, name: str) -> None:
    """m = ||W0 + s B A||_c for adapter ``name`` (its factors and scaling exist already), stored as a
    bare Parameter so its saved key is PEFT's ``<path>.lora_magnitude_vector``."""
    from .base_weight import base_weight
    from .layers import AdapterDict
    if MAGNITUDE_KEY not in vars(layer):
        setattr(layer, MAGNITUDE_KEY, AdapterDict())
    norm = weight_norm(layer.xp, base_weight(layer.base_layer), layer.delta_weight(name))
    getattr(layer, MAGNITUDE_KEY)[name] = Parameter(norm)


def increment(layer, name: str, x: Tensor, y: Tensor) -> Tensor:
    """What DoRA adapter ``name`` adds to the output so far ``y`` (..., d_out) for input x (..., d_in).

    Without dropout (or in eval) the base output is y minus the bias (PEFT's ``base_result``: with
    several active adapters it holds the earlier ones too, so DoRA adapters compose as their merges
    do); with dropout it is dropout(x) W0^T, the adapter seeing the same dropped-out input.
    """
    from .base_weight import base_weight
    xp, scaling = layer.xp, layer.scaling[name]
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    weight = base_weight(layer.base_layer)  # (d_out, d_in), dequantized for a 4-bit base
    norm = weight_norm(xp, weight, scaling * xp.matmul(b.data, a.data))  # a plain array: detached
    p = layer.lora_dropout[name]
    if p == 0.0 or not layer.training:
        h, bias = x, getattr(layer.base_layer, "bias", None)
        base_out = y if bias is None else y - bias
    else:
        h = F.dropout(x, p, layer.rng, training=True)
        base_out = F.linear(h, Tensor(weight))
    lora_out = F.linear(F.linear(h, a), b)  # (..., d_out)
    return dora_increment(base_out, lora_out, getattr(layer, MAGNITUDE_KEY)[name], norm, scaling)


def merge_step(layer, name: str, weight, unmerged):
    """(m / n) * (weight + s B A), n from the *unmerged* base (PEFT); n is kept for unmerge_step."""
    delta = layer.delta_weight(name)
    norm = weight_norm(layer.xp, unmerged, delta)
    vars(layer).setdefault("dora_norms", {})[name] = norm
    return merged_weight(layer.xp, weight, delta, getattr(layer, MAGNITUDE_KEY)[name].data, norm)


def unmerge_step(layer, name: str, weight):
    """weight / (m / n) - s B A with the n kept by merge_step."""
    return unmerged_weight(layer.xp, weight, layer.delta_weight(name), getattr(layer, MAGNITUDE_KEY)[name].data,
                           vars(layer)["dora_norms"][name])
