"""A two-block toy network and an AdaLoraModel on it with a fixed rank pattern (one layer keeps nothing)."""
from __future__ import annotations

import numpy as np

from minilora import backend, nn
from minilora.lora import get_lora_model
from minilora.lora.adalora import AdaLoraConfig
from minilora.tensor import Tensor, no_grad


class Net(nn.Module):
    def __init__(self, seed=0, d=6):
        rng = backend.Random(seed, np)
        self.blocks = nn.ModuleList(_Block(d, rng) for _ in range(2))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class _Block(nn.Module):
    def __init__(self, d, rng):
        self.q_proj = nn.Linear(d, d, dtype=np.float64, rng=rng)
        self.v_proj = nn.Linear(d, d + 1, dtype=np.float64, rng=rng)
        self.out = nn.Linear(d + 1, d, dtype=np.float64, rng=rng)

    def forward(self, x):
        return self.out(self.v_proj(self.q_proj(x).tanh()).tanh())


CFG = dict(init_r=4, target_r=2, total_step=20, lora_alpha=6, target_modules=["q_proj", "v_proj"])
X = Tensor(np.random.default_rng(0).normal(size=(5, 6)))


def trained(seed=0, **kw):
    """An AdaLoraModel with random triplets and a rank pattern where blocks.1.q_proj keeps nothing."""
    model = get_lora_model(Net(seed), AdaLoraConfig(**{**CFG, **kw}))
    rng = np.random.default_rng(seed + 1)
    for p in model.trainable_parameters():
        p.data = rng.normal(size=p.shape)
    pattern = {"blocks.0.q_proj.lora_E": [True, False, True, False], "blocks.0.v_proj.lora_E": [True] * 4,
               "blocks.1.q_proj.lora_E": [False] * 4, "blocks.1.v_proj.lora_E": [False, False, False, True]}
    model.peft_config["default"].rank_pattern = pattern
    model.rankallocator.mask_using_rank_pattern(pattern)
    return model


def out(model):
    with no_grad():
        return model(X).numpy()
