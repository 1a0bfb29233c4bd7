"""Gradient clipping by global norm: if ||g|| > max_norm, scale every g by max_norm / ||g||."""
from __future__ import annotations

import math


def grad_norm(params) -> float:
    """sqrt(sum over params of sum(g^2)); inf or nan when some gradient is not finite."""
    total = 0.0
    for p in params:
        if p.grad is not None:
            total += float(p.xp.sum(p.grad * p.grad))
    return math.sqrt(total) if math.isfinite(total) else float("nan") if total != total else float("inf")


def clip_grad_norm(params, max_norm: float, eps: float = 1e-6, norm: float | None = None) -> float:
    """Clip in place; returns the norm before clipping (not finite: gradients are left as they are).

    norm: the gradients' global norm when the caller already has it (the training loop computes it
    to detect non-finite steps), so it is not computed twice.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = [p for p in params if p.grad is not None]
    norm = grad_norm(params) if norm is None else norm
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + eps)
        for p in params:
            p.grad = p.grad * scale
    return norm
