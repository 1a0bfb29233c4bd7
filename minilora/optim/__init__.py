"""Optimizers, learning-rate schedules and gradient clipping."""
from .adamw import AdamW
from .clip import clip_grad_norm, grad_norm
from .loraplus import create_loraplus_optimizer, loraplus_param_groups
from .optimizer import Optimizer
from .schedule import SCHEDULES, LRScheduler, constant, cosine_with_warmup, linear_with_warmup
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "AdamW", "LRScheduler", "SCHEDULES", "cosine_with_warmup", "linear_with_warmup",
           "constant", "clip_grad_norm", "grad_norm", "loraplus_param_groups", "create_loraplus_optimizer"]
