"""Finding the layers a LoraConfig targets, wrapping them, and modules_to_save copies.

Matching follows PEFT: a target *list* matches a module whose dotted path equals an entry or ends
in ``.entry``; a target *string* is a regex that must match the whole path; "all-linear" takes
every Linear-like layer (anything with integer in_features / out_features that can be called)
except the output layer ``lm_head``. exclude_modules removes matches, layers_to_transform keeps
only the given layer indices.
"""
from __future__ import annotations

import copy
import re
import zlib

from ..errors import ConfigError
from ..nn import Embedding, Linear, Module
from .config import ALL_LINEAR
from .layers import AdapterDict, LoRAEmbedding, LoRALayer, LoRALinear, check_adapter_name


class ModulesToSaveWrapper(Module):
    """A frozen original module plus a trainable full copy per adapter (PEFT's modules_to_save).

    Paths: ``<path>.original_module.*`` and ``<path>.modules_to_save.<adapter>.*``; the forward
    uses the active adapter's copy, or the original when none is active or adapters are disabled.
    """

    def __init__(self, original: Module):
        self.original_module = original
        self.modules_to_save = AdapterDict()
        self.active_adapter = None
        self.adapters_disabled = False

    def update(self, name: str) -> None:
        clone = copy.deepcopy(self.original_module)
        for p in clone.parameters():
            p.requires_grad = True
        self.modules_to_save[name] = clone

    def set_adapter(self, names) -> None:
        found = [n for n in names if n in self.modules_to_save]
        self.active_adapter = found[0] if found else None
        for name, module in self.modules_to_save.items():
            for p in module.parameters():
                p.requires_grad = name == self.active_adapter

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def active_module(self) -> Module:
        if self.adapters_disabled or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        return self.active_module()(*args, **kwargs)

    def __getattr__(self, name):  # weight, in_features, ... of the module in use
        if name.startswith("__") or name in ("original_module", "modules_to_save"):
            raise AttributeError(name)
        return getattr(self.active_module(), name)


def is_linear_like(module) -> bool:
    if isinstance(module, Linear):
        return True
    return (isinstance(module, Module) and not isinstance(module, (LoRALayer, ModulesToSaveWrapper))
            and isinstance(getattr(module, "in_features", None), int)
            and isinstance(getattr(module, "out_features", None), int) and callable(module))


def is_embedding_like(module) -> bool:
    return isinstance(module, Embedding) or (
        isinstance(module, Module) and not isinstance(module, LoRALayer)
        and isinstance(getattr(module, "num_embeddings", None), int)
        and isinstance(getattr(module, "embedding_dim", None), int))


def walk(model: Module, prefix: str = ""):
    """(path, module) for every module, not descending into LoRA layers or modules_to_save wrappers."""
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        yield path, child
        if not isinstance(child, (LoRALayer, ModulesToSaveWrapper)):
            yield from walk(child, path)


def matches(spec, path: str) -> bool:
    """PEFT's rule: a str is a full regex; a list entry matches the whole path or a dotted suffix."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    return any(path == t or path.endswith("." + t) for t in spec)


def layer_index(path: str, layers_pattern):
    """The number after ``<pattern>.`` in the path (any segment when no pattern), or None."""
    patterns = layers_pattern or [r"[^.]*"]
    for pattern in patterns:
        found = re.match(rf"(?:.*\.)?{pattern}\.(\d+)\.", path)
        if found:
            return int(found.group(1))
    return None


def find_targets(model: Module, config) -> list:
    """[(path, module)] that ``config`` adapts; ValueError when it names layers that do not exist
    or cannot be adapted (the message lists the available module names)."""
    found, unsupported = [], []
    candidates = [(p, m) for p, m in walk(model)]
    for path, module in candidates:
        if config.target_modules == ALL_LINEAR:
            hit = (is_linear_like(module) or isinstance(module, LoRALinear)) and path.split(".")[-1] != "lm_head"
        else:
            hit = matches(config.target_modules, path)
        if not hit or matches(config.exclude_modules, path):
            continue
        if config.layers_to_transform is not None and layer_index(path, config.layers_pattern) \
                not in config.layers_to_transform:
            continue
        if isinstance(module, LoRALayer) or is_linear_like(module) or is_embedding_like(module):
            found.append((path, module))
        else:
            unsupported.append(f"{path} ({type(module).__name__})")
    if unsupported:
        raise ValueError(f"target_modules matches layers LoRA cannot adapt: {unsupported}; "
                         "only Linear-like and Embedding layers are supported")
    if not found:
        names = sorted({p for p, m in candidates if is_linear_like(m) or is_embedding_like(m)
                        or isinstance(m, LoRALayer)})
        raise ValueError(f"target_modules={config.target_modules!r} matches no module of the model "
                         f"(exclude_modules={config.exclude_modules!r}, layers_to_transform="
                         f"{config.layers_to_transform!r}); adaptable modules are: {names}")
    return found


def lora_layer_class(module) -> type:
    """The LoRA layer class that adapts ``module`` (its own class when it is one already)."""
    if isinstance(module, LoRALayer):
        return type(module)
    return LoRAEmbedding if is_embedding_like(module) and not is_linear_like(module) else LoRALinear


def check_layer_kinds(targets, config) -> None:
    """A layer holds adapters of one method: refuse, before anything changes, targets that are LoRA
    layers of another method than ``config``'s (an SVDLinear cannot take a plain LoRA adapter)."""
    wrong = [f"{path} ({type(m).__name__}, {m.peft_type})" for path, m in targets
             if isinstance(m, LoRALayer) and m.peft_type != config.peft_type]
    if wrong:
        raise ConfigError(f"a {config.peft_type} adapter cannot be added to layers holding adapters of another "
                          f"method: {wrong}. Convert an AdaLoRA model with to_lora() first, or exclude these "
                          "layers with exclude_modules")


def layer_seed(seed: int, path: str, what: str) -> int:
    """A reproducible per-layer seed: the same model, config and seed give the same adapters."""
    return zlib.crc32(f"{seed}/{path}/{what}".encode())


def inject_adapter(model: Module, config, adapter_name: str, seed: int = 0) -> list:
    """Wrap (or extend) every targeted layer with adapter ``adapter_name``; returns the paths."""
    check_adapter_name(adapter_name)
    targets = find_targets(model, config)
    check_layer_kinds(targets, config)
    for path, module in targets:
        if isinstance(module, LoRALayer):
            layer = module
        else:
            layer = lora_layer_class(module)(module, rng_seed=layer_seed(seed, path, "dropout"))
            layer.train(module.training)
            model.set_submodule(path, layer)
        if adapter_name in layer.r:
            raise ValueError(f"adapter {adapter_name!r} already exists on {path}")
        layer.update_layer(adapter_name, config.rank_for(path), config.alpha_for(path), config.lora_dropout,
                           config.init_lora_weights, config.use_rslora, seed=layer_seed(seed, path, adapter_name))
    add_modules_to_save(model, config, adapter_name)
    return [p for p, _ in targets]


def add_modules_to_save(model: Module, config, adapter_name: str) -> None:
    """Give each module named in config.modules_to_save a trainable copy for this adapter."""
    if not config.modules_to_save:
        return
    hits = [(p, m) for p, m in walk(model) if matches(config.modules_to_save, p)]
    if not hits:
        raise ValueError(f"modules_to_save={config.modules_to_save!r} matches no module of the model")
    for path, module in hits:
        if isinstance(module, LoRALayer):
            raise ValueError(f"modules_to_save: {path} is also a LoRA target; choose one")
        if not isinstance(module, ModulesToSaveWrapper):
            wrapper = ModulesToSaveWrapper(module)
            model.set_submodule(path, wrapper)
            module = wrapper
        module.update(adapter_name)


def lora_layers(model: Module) -> list:
    """[(path, layer)] of every LoRA layer in the model."""
    return [(p, m) for p, m in walk(model) if isinstance(m, LoRALayer)]


def save_wrappers(model: Module) -> list:
    return [(p, m) for p, m in walk(model) if isinstance(m, ModulesToSaveWrapper)]
