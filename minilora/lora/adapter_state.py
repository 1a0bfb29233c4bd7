"""One adapter as named tensors, with the keys PEFT saves: collect them, predict them, check them.

A key is ``base_model.model.<parameter path>`` with the adapter's name taken out, as PEFT's
get_peft_model_state_dict writes it:

    base_model.model.<path>.lora_A.weight           (r, d_in)       LoRALinear
    base_model.model.<path>.lora_B.weight           (d_out, r)
    base_model.model.<path>.lora_embedding_A        (r, V)          LoRAEmbedding
    base_model.model.<path>.lora_embedding_B        (C, r)
    base_model.model.<path>.lora_A / lora_E / lora_B                SVDLinear (AdaLoRA)
    base_model.model.<path>.base_layer.bias         (bias="all" or "lora_only")
    base_model.model.<module path>.<param>          (modules_to_save copies)

With bias="all", PEFT saves every parameter whose name ends in ``bias``, so a modules_to_save
layer's bias also appears as ``<path>.original_module.bias`` and ``<path>.modules_to_save.bias``.

The model classes build on these (LoraModel.adapter_state_dict / expected_adapter_shapes /
load_adapter_state_dict, which AdaLoraModel overrides for its rank pattern); save_load.py turns
them into files. Nothing here knows one adapter method from another: each layer names its own
tensors (LoRALayer.adapter_parameters, LoRALayer.adapter_shapes).
"""
from __future__ import annotations

import os

from .. import backend
from ..errors import MiniloraError
from ..nn import Module
from .inject import find_targets, lora_layer_class, lora_layers, matches, save_wrappers, shape_options, walk
from .layers import LoRALayer

PREFIX = "base_model.model."


class AdapterLoadError(MiniloraError, ValueError):
    """An adapter file that does not fit the model: every offending key is listed."""


def adapter_parameters(lora_model, adapter_name: str = "default") -> dict:
    """{saved key: Parameter} of one adapter (PEFT's get_peft_model_state_dict, as live tensors)."""
    if adapter_name not in lora_model.peft_config:
        raise ValueError(f"no adapter {adapter_name!r}; have {list(lora_model.peft_config)}")
    config = lora_model.peft_config[adapter_name]
    out = {}
    for path, layer in lora_layers(lora_model.model):
        if adapter_name not in layer.r:
            continue
        for suffix, p in layer.adapter_parameters(adapter_name).items():
            out[f"{PREFIX}{path}.{suffix}"] = p
        bias = getattr(layer.base_layer, "bias", None)
        if config.bias == "lora_only" and bias is not None:
            out[f"{PREFIX}{path}.base_layer.bias"] = bias
    if config.bias == "all":  # PEFT takes every parameter named *bias*, wrappers' ones included
        for name, p in lora_model.model.named_parameters():
            if name.split(".")[-1] != "bias":
                continue
            if ".modules_to_save." in name:  # <path>.modules_to_save.<adapter>.<sub> -> <path>.modules_to_save.<sub>
                head, _, rest = name.partition(".modules_to_save.")
                owner, _, sub = rest.partition(".")
                if owner != adapter_name:
                    continue
                name = f"{head}.modules_to_save.{sub}"
            out[PREFIX + name] = p
    for path, wrapper in save_wrappers(lora_model.model):
        if adapter_name in wrapper.modules_to_save:
            for name, p in wrapper.modules_to_save[adapter_name].named_parameters():
                out[f"{PREFIX}{path}.{name}"] = p
    return out


def host_arrays(arrays: dict) -> dict:
    """{key: C-contiguous host NumPy array} of {key: array of any backend}."""
    return {k: backend.to_numpy(v, contiguous=True) for k, v in arrays.items()}


def expected_shapes(base: Module, config, layer_class_for=lora_layer_class) -> dict:
    """{saved key: shape} that an adapter with ``config`` has on ``base`` (nothing is changed).

    layer_class_for(module): the LoRA layer class that will wrap a targeted module (its own class
    when it is one already); it names the adapter's tensors and their shapes."""
    try:
        targets = find_targets(base, config)
    except ValueError as exc:
        raise AdapterLoadError(f"the adapter does not fit this model: {exc}") from None
    out = {}
    for path, module in targets:
        cls = type(module) if isinstance(module, LoRALayer) else layer_class_for(module)
        for suffix, shape in cls.adapter_shapes(module, config.rank_for(path), **shape_options(config)).items():
            out[f"{PREFIX}{path}.{suffix}"] = shape
        inner = module.base_layer if isinstance(module, LoRALayer) else module
        bias = getattr(inner, "bias", None)
        if config.bias == "lora_only" and bias is not None:
            out[f"{PREFIX}{path}.base_layer.bias"] = bias.shape
    if config.bias == "all":
        lora_paths = {p for p, _ in targets}
        for name, p in base.named_parameters():
            owner = name.rpartition(".")[0]
            if name.split(".")[-1] == "bias" and ".modules_to_save." not in name:
                key = f"{owner}.base_layer.bias" if owner in lora_paths else name
                out[PREFIX + key] = p.shape
    saved_modules = [(path, module) for path, module in walk(base)
                     if config.modules_to_save and matches(config.modules_to_save, path)]
    if config.modules_to_save and not saved_modules:  # found here, before get_lora_model changes the model
        raise AdapterLoadError(f"the adapter does not fit this model: modules_to_save={config.modules_to_save!r} "
                               "matches no module")
    for path, module in saved_modules:
        inner = getattr(module, "original_module", module)
        for name, p in inner.named_parameters():
            out[f"{PREFIX}{path}.{name}"] = p.shape
            if config.bias == "all" and name.split(".")[-1] == "bias":
                out[f"{PREFIX}{path}.original_module.{name}"] = p.shape
                out[f"{PREFIX}{path}.modules_to_save.{name}"] = p.shape
    return out


def check_keys_and_shapes(expected: dict, tensors: dict, directory) -> None:
    """AdapterLoadError listing every problem at once: a missing or unexpected key, a wrong shape,
    a tensor that is not floating point. ``expected``: {key: shape}; ``tensors``: {key: host array}."""
    problems = [f"missing key {k!r} (expected shape {tuple(s)})" for k, s in expected.items() if k not in tensors]
    problems += [f"key {k!r}: expected shape {tuple(s)}, found {tuple(tensors[k].shape)}"
                 for k, s in expected.items() if k in tensors and tuple(tensors[k].shape) != tuple(s)]
    problems += [f"unexpected key {k!r} (found shape {tuple(v.shape)})" for k, v in tensors.items() if k not in expected]
    problems += [f"key {k!r}: dtype {v.dtype} is not floating point" for k, v in tensors.items()
                 if k in expected and v.dtype.kind != "f"]
    if problems:
        raise AdapterLoadError(f"load_adapter({os.fspath(directory)!r}): the file does not fit the model; "
                               f"nothing was changed. {len(problems)} problem(s): " + "; ".join(problems))


def copy_into(params: dict, tensors: dict) -> None:
    """Copy host arrays into the parameters of the same key (each in its own backend and dtype)."""
    for key, p in params.items():
        p.data = backend.to_namespace(tensors[key], p.xp, p.dtype)
