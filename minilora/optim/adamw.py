"""AdamW (Loshchilov & Hutter, arXiv 1711.05101): Adam with decoupled weight decay.

Per parameter, at step t with gradient g (the operation order is PyTorch's, so results agree):
    p <- p * (1 - lr * wd)
    m <- b1 m + (1 - b1) g,        v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
"""
from __future__ import annotations

import math

from ..tensor import no_grad
from .optimizer import Optimizer


class AdamW(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"AdamW betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"AdamW eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"AdamW weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self) -> None:
        with no_grad():
            for group in self.param_groups:
                lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    xp = p.xp
                    state = self.state.get(id(p))
                    if state is None:
                        state = self.state[id(p)] = {"step": 0, "exp_avg": xp.zeros_like(p.data),
                                                     "exp_avg_sq": xp.zeros_like(p.data)}
                    state["step"] += 1
                    t = state["step"]
                    data = p.data * (1 - lr * wd) if wd else p.data
                    m = state["exp_avg"] = state["exp_avg"] + (g - state["exp_avg"]) * (1 - b1)
                    v = state["exp_avg_sq"] = state["exp_avg_sq"] * b2 + g * g * (1 - b2)
                    step_size = lr / (1 - b1 ** t)
                    denom = xp.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
                    p.data = data - step_size * (m / denom)
