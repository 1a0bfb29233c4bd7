"""LoraConfig: what to adapt and how, with Hugging Face PEFT's field names and defaults.

LoRA (arXiv 2106.09685) learns W' = W0 + scaling * B A for each targeted layer, W0 (d_out, d_in)
frozen, A (r, d_in), B (d_out, r), scaling = lora_alpha / r (rsLoRA, arXiv 2312.03732:
lora_alpha / sqrt(r)). The config is saved as ``adapter_config.json`` exactly as PEFT reads it;
keys this version does not know are ignored with a warning (PEFT's rule).
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

from ..errors import ConfigError
from .init_methods import check_loftq_config, parse_init

BIAS_CHOICES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"


@dataclass
class LoraConfig:
    """Settings of one LoRA adapter (PEFT's ``LoraConfig`` names and defaults).

    r: rank of A (r, d_in) and B (d_out, r). lora_alpha: scaling numerator.
    lora_dropout: dropout probability on the adapter's input x (A's input only).
    target_modules: list of names (a module matches when its dotted path equals a name or ends in
        ``.name``), a string (a regex that must match the whole path), or "all-linear" (every
        Linear-like layer except ``lm_head``).
    exclude_modules: same forms as target_modules; matching modules are skipped.
    use_rslora: scaling = lora_alpha / sqrt(r) instead of lora_alpha / r.
    rank_pattern, alpha_pattern: {regex: r or alpha} overrides, matched against the path's suffix.
    bias: "none" | "all" (every bias trains) | "lora_only" (biases of adapted layers train).
    init_lora_weights: True: A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), B = 0 (the adapter starts as a
        no-op); "gaussian": A ~ N(0, std=1/r), B = 0; False: A and B both random (not a no-op);
        "pissa", "pissa_niter_K", "olora", "loftq": from the base weight, which keeps the residual
        (init_methods.py). loftq_config: {"loftq_bits": 4, "loftq_iter": T} for "loftq" (PEFT's names).
    use_dora: DoRA (arXiv 2402.09353) on Linear layers: a magnitude vector per output row (dora.py).
    layers_to_transform: adapt only layers whose index (the number after ``layers_pattern`` in the
        path, or after any segment when that is None) is in this list.
    modules_to_save: modules (same matching as a target list) that get a trainable full copy.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: Optional[Union[list, str]] = None
    exclude_modules: Optional[Union[list, str]] = None
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    bias: str = "none"
    init_lora_weights: Union[bool, str] = True
    layers_to_transform: Optional[Union[list, int]] = None
    layers_pattern: Optional[Union[list, str]] = None
    modules_to_save: Optional[list] = None
    fan_in_fan_out: bool = False
    use_dora: bool = False
    loftq_config: dict = field(default_factory=dict)
    lora_bias: bool = False
    task_type: Optional[str] = "CAUSAL_LM"
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    inference_mode: bool = False

    peft_type = "LORA"  # class attribute: written to the JSON file, not a constructor argument

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        _positive_int("r", self.r)
        _positive_number("lora_alpha", self.lora_alpha)
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be a number in [0, 1), got {self.lora_dropout!r}")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (set, tuple, list)) and all(isinstance(v, str) for v in value):
                value = sorted(set(value))  # order does not matter (PEFT keeps a set)
                setattr(self, name, value)
            if value is None:
                continue
            if isinstance(value, str):
                if value != ALL_LINEAR or name == "exclude_modules":
                    _check_regex(name, value)
            elif not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
                raise ValueError(f"LoraConfig.{name} must be a list of module names, a regex string or "
                                 f"'{ALL_LINEAR}', got {value!r}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("LoraConfig.target_modules is an empty list: name at least one module")
        for name in ("rank_pattern", "alpha_pattern"):
            pattern = getattr(self, name)
            if not isinstance(pattern, dict):
                raise ValueError(f"LoraConfig.{name} must be a dict {{regex: value}}, got {pattern!r}")
            for key, value in pattern.items():
                _check_regex(f"{name} key", key)
                if name == "rank_pattern":
                    _positive_int(f"rank_pattern[{key!r}]", value)
                else:
                    _positive_number(f"alpha_pattern[{key!r}]", value)
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"LoraConfig.bias must be one of {BIAS_CHOICES}, got {self.bias!r}")
        try:
            kind, _ = parse_init(self.init_lora_weights)
            if kind == "loftq":
                self.loftq_config = check_loftq_config(self.loftq_config)
        except ConfigError as exc:
            raise ConfigError(f"LoraConfig.{exc}") from None
        if kind != "loftq" and not isinstance(self.loftq_config, dict):  # otherwise ignored, as in PEFT
            raise ConfigError(f"LoraConfig.loftq_config must be a dict, got {self.loftq_config!r}")
        if not isinstance(self.use_dora, bool):
            raise ConfigError(f"LoraConfig.use_dora must be True or False, got {self.use_dora!r}")
        if isinstance(self.layers_to_transform, int) and not isinstance(self.layers_to_transform, bool):
            self.layers_to_transform = [self.layers_to_transform]
        if self.layers_to_transform is not None and not (
                isinstance(self.layers_to_transform, list)
                and all(isinstance(i, int) and i >= 0 for i in self.layers_to_transform)):
            raise ValueError(f"LoraConfig.layers_to_transform must be a list of layer indices >= 0, "
                             f"got {self.layers_to_transform!r}")
        if isinstance(self.layers_pattern, str):
            self.layers_pattern = [self.layers_pattern]
        if self.modules_to_save is not None and not (
                isinstance(self.modules_to_save, list) and all(isinstance(m, str) and m for m in self.modules_to_save)):
            raise ValueError(f"LoraConfig.modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        for name in ("fan_in_fan_out", "lora_bias"):
            if getattr(self, name):
                raise ValueError(f"LoraConfig.{name}=True is not supported by minilora (got {getattr(self, name)!r})")

    # ------------------------------------------------------------ per-module values
    def rank_for(self, path: str) -> int:
        """r for the module at ``path`` (rank_pattern overrides the default)."""
        key = pattern_key(self.rank_pattern, path)
        return self.r if key is None else self.rank_pattern[key]

    def alpha_for(self, path: str) -> float:
        key = pattern_key(self.alpha_pattern, path)
        return self.lora_alpha if key is None else self.alpha_pattern[key]

    def scaling_for(self, path: str) -> float:
        """alpha / r, or alpha / sqrt(r) with use_rslora."""
        return lora_scaling(self.alpha_for(path), self.rank_for(path), self.use_rslora)

    # ------------------------------------------------------------ JSON form
    def to_dict(self) -> dict:
        """The adapter_config.json content: every field plus peft_type (lists sorted)."""
        out = dataclasses.asdict(self)
        for name in ("target_modules", "exclude_modules"):
            if isinstance(out[name], list):
                out[name] = sorted(out[name])
        out["peft_type"] = self.peft_type
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        """Build a config from a loaded JSON dict; unknown keys warn and are ignored."""
        data = dict(data)
        peft_type = data.pop("peft_type", cls.peft_type)
        if peft_type != cls.peft_type:
            raise ValueError(f"{cls.__name__}: peft_type must be {cls.peft_type!r}, got {peft_type!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known and not _peft_default(k, data[k]))
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown config keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


# peft_type -> config class; other methods (AdaLoRA) register theirs here so files load by type.
CONFIG_CLASSES: dict = {"LORA": LoraConfig}


def config_from_dict(data: dict):
    """The config object for a loaded adapter_config.json, chosen by its peft_type."""
    peft_type = data.get("peft_type", "LORA")
    if peft_type not in CONFIG_CLASSES:
        raise ValueError(f"adapter_config.json: peft_type {peft_type!r} is not supported "
                         f"(expected one of {sorted(CONFIG_CLASSES)})")
    return CONFIG_CLASSES[peft_type].from_dict(data)


# PEFT writes every field of its own config; these carry no meaning for minilora at these values,
# so they are dropped without a warning (any other value, or any other unknown key, warns).
_PEFT_METADATA = ("peft_version", "auto_mapping")
_PEFT_DEFAULTS = {"qalora_group_size": 16, "megatron_core": "megatron.core"}


def _peft_default(key, value) -> bool:
    if key in _PEFT_METADATA:
        return True
    if key in _PEFT_DEFAULTS:
        return value == _PEFT_DEFAULTS[key]
    return value is None or value is False or value == {} or value == []


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """scaling = alpha / r (LoRA, 2106.09685 sec. 4.1) or alpha / sqrt(r) (rsLoRA, 2312.03732)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def pattern_key(patterns: dict, path: str):
    """The first key of ``patterns`` that matches ``path`` as a whole or as a dotted suffix."""
    for key in patterns:
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", path):
            return key
    return None


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"LoraConfig.{name} must be a positive integer, got {value!r}")


def _positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"LoraConfig.{name} must be a positive number, got {value!r}")


def _check_regex(name, value):
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"LoraConfig.{name} {value!r} is not a valid regular expression: {exc}") from None
