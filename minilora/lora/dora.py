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

from .. import ops
from ..nn import Module, Parameter
from ..tensor import Tensor

MAGNITUDE_KEY = "lora_magnitude_vector"  # PEFT's module name; files store <path>.lora_magnitude_vector


def weight_norm(xp, weight, delta):
    """n = ||W + delta||_c: the L2 norm of each row of the (d_out, d_in) sum, shape (d_out,)."""
    w = weight + delta
    return xp.sqrt(xp.sum(w * w, axis=1))


class DoraMagnitude(Module):
    """The magnitude vector m (d_out,) of one DoRA adapter, at ``lora_magnitude_vector.<name>.weight``."""

    def __init__(self, norm):
        self.weight = Parameter(norm)

    def factor(self, norm) -> Tensor:
        """m / n as a Tensor (d_out,), differentiable in m only (n is a plain array: detached)."""
        return ops.div(self.weight, norm)

    def increment(self, base_out: Tensor, lora_out: Tensor, norm, scaling: float) -> Tensor:
        """(m/n - 1) * base_out + (m/n) * s * lora_out; base_out = x W0^T (no bias), lora_out = x A^T B^T."""
        factor = self.factor(norm)  # (d_out,), broadcast over (..., d_out)
        return (factor - 1.0) * base_out + factor * lora_out * scaling


def merged_weight(xp, weight, delta, magnitude, norm):
    """(m / n)[:, None] * (W + delta), (d_out, d_in): the weight that replaces W when merging."""
    return (magnitude / norm)[:, None] * (weight + delta)


def unmerged_weight(xp, merged, delta, magnitude, norm):
    """merged / (m / n)[:, None] - delta: the inverse of merged_weight (norm as kept from the merge)."""
    return merged / (magnitude / norm)[:, None] - delta
