"""AdaLoraConfig: AdaLoRA's schedule and regularizer settings, with Hugging Face PEFT's names and defaults.

AdaLoRA (arXiv 2303.10512) starts every targeted layer at rank ``init_r`` and prunes singular
triplets until the layers hold ``target_r`` on average: warm-up for ``tinit`` steps, a cubic budget
down to the target, the final pattern fixed for the last ``tfinal`` steps. The formula and the
phases are RankAllocator's (allocator.py: ``budget_schedule`` and ``update_and_allocate``).
``rank_pattern`` is what the allocator found: {"<module path>.lora_E": [kept?] * init_r}, saved in
adapter_config.json.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

from ..config import CONFIG_CLASSES, LoraConfig


@dataclass
class AdaLoraConfig(LoraConfig):
    """Settings of one AdaLoRA adapter (PEFT's ``AdaLoraConfig``).

    init_r: starting rank of every adapter. target_r: average rank after pruning.
    tinit: warm-up steps before any pruning. tfinal: last steps with the final pattern fixed.
    deltaT: mask every deltaT steps during the pruning phase.
    beta1, beta2: EMA factors of the sensitivity and of its uncertainty, in (0, 1).
    orth_reg_weight: weight of the orthogonality penalty added to the loss (>= 0).
    total_step: the number of training steps (required, > 0).
    rank_pattern: {"<module path>.lora_E": [bool] * init_r}, None until the allocator masks.
    lora_alpha: the update is scaled by lora_alpha / (init_r + 1e-5) (not lora_alpha / r).
    ``r`` is LoraConfig's and is ignored (PEFT warns when it is changed).
    """

    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: Optional[int] = None
    rank_pattern: Optional[dict] = None

    peft_type = "ADALORA"

    def validate(self) -> None:
        """LoraConfig's checks (except rank_pattern, which means something else here), then AdaLoRA's."""
        pattern, self.rank_pattern = self.rank_pattern, {}
        try:
            super().validate()
        finally:
            self.rank_pattern = pattern
        for name in ("init_r", "target_r", "deltaT"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("tinit", "tfinal"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.target_r > self.init_r:
            raise ValueError(f"AdaLoraConfig.target_r ({self.target_r}) must be <= init_r ({self.init_r})")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"AdaLoraConfig.{name} must be a number in (0, 1), got {value!r}")
        w = self.orth_reg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
            raise ValueError(f"AdaLoraConfig.orth_reg_weight must be a finite number >= 0, got {w!r}")
        if self.total_step is None or isinstance(self.total_step, bool) or not isinstance(self.total_step, int) \
                or self.total_step <= 0:
            raise ValueError(f"AdaLoraConfig.total_step must be a positive integer (the number of training "
                             f"steps; AdaLoRA's schedule needs it), got {self.total_step!r}")
        if self.tinit >= self.total_step - self.tfinal:
            raise ValueError(f"AdaLoraConfig: tinit ({self.tinit}) must be < total_step - tfinal "
                             f"({self.total_step} - {self.tfinal} = {self.total_step - self.tfinal}), "
                             "or no step is left for pruning; lower tinit/tfinal or raise total_step")
        if self.rank_pattern is not None:
            if not isinstance(self.rank_pattern, dict):
                raise ValueError(f"AdaLoraConfig.rank_pattern must be None or a dict, got {self.rank_pattern!r}")
            for key, mask in self.rank_pattern.items():
                if not (isinstance(key, str) and isinstance(mask, list)
                        and all(isinstance(m, bool) for m in mask)):
                    raise ValueError(f"AdaLoraConfig.rank_pattern[{key!r}] must be a list of booleans "
                                     f"(one per initial rank), got {mask!r}")

    def __post_init__(self):
        if self.r != 8:
            warnings.warn("AdaLoraConfig: r is not used by AdaLoRA and is ignored; set init_r instead",
                          stacklevel=3)
        super().__post_init__()

    def rank_for(self, path: str) -> int:
        """Every AdaLoRA adapter is created at init_r (rank_pattern only masks or resizes later)."""
        return self.init_r

    def scaling_for(self, path: str) -> float:
        """PEFT's scale numerator: lora_alpha (or init_r when alpha is not positive)."""
        return adalora_scaling(self.alpha_for(path), self.init_r)


def adalora_scaling(lora_alpha: float, r: int) -> float:
    """PEFT keeps ``lora_alpha`` itself as the scaling; the division by ranknum happens in the layer."""
    return float(lora_alpha) if lora_alpha > 0 else float(r)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"AdaLoraConfig.{name} must be an integer >= {minimum}, got {value!r}")


CONFIG_CLASSES[AdaLoraConfig.peft_type] = AdaLoraConfig
