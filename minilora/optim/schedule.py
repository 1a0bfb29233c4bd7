"""Learning-rate schedules: one factor per step, applied to every group's initial lr.

Every schedule warms up linearly, factor (step + 1) / W for step < W = warmup_steps, then with
progress p = (step - W) / (total - W) in [0, 1]:
    cosine    min + (1 - min) * (1 + cos(pi p)) / 2
    linear    min + (1 - min) * (1 - p)
    constant  1
Scaling every group by the same factor keeps ratios between groups (LoRA+'s lr_B / lr_A) exact.
"""
from __future__ import annotations

import math


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    """p in [0, 1]: the share of the post-warmup steps done."""
    return min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to 1 over warmup_steps, then cosine decay to min_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * _progress(step, total_steps, warmup_steps)))


def linear_with_warmup(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to 1 over warmup_steps, then linear decay to min_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min_ratio + (1 - min_ratio) * (1 - _progress(step, total_steps, warmup_steps))


def constant(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


SCHEDULES = {"cosine": cosine_with_warmup, "linear": linear_with_warmup, "constant": constant}


class LRScheduler:
    """Sets group["lr"] = group["initial_lr"] * factor(step) for every group of an optimizer."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 min_ratio: float = 0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {kind!r}")
        self.optimizer, self.total_steps, self.warmup_steps = optimizer, total_steps, warmup_steps
        self.factor_fn, self.min_ratio = SCHEDULES[kind], min_ratio

    def set_step(self, step: int) -> float:
        factor = self.factor_fn(step, self.total_steps, self.warmup_steps, self.min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor
