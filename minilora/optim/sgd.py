"""SGD with momentum (PyTorch's form): v <- mu v + g; p <- p - lr v (or p - lr g without momentum)."""
from __future__ import annotations

from ..tensor import no_grad
from .optimizer import Optimizer


class SGD(Optimizer):
    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        if momentum < 0:
            raise ValueError(f"SGD momentum must be >= 0, got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def step(self) -> None:
        with no_grad():
            for group in self.param_groups:
                lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad + wd * p.data if wd else p.grad
                    if mu:
                        state = self.state.setdefault(id(p), {})
                        g = state["momentum_buffer"] = g if "momentum_buffer" not in state else \
                            mu * state["momentum_buffer"] + g
                    p.data = p.data - lr * g
