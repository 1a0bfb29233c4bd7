"""AdaLoRA adapter files in Hugging Face PEFT's format (``peft_type: "ADALORA"``).

PEFT keeps A, B and E in ParameterDicts, so its saved keys have no ``.weight`` suffix, and it
slices every layer to the triplets the rank pattern keeps (resize_state_dict_by_rank_pattern):

    base_model.model.<path>.lora_A      (k, d_in)     rows of A that are kept
    base_model.model.<path>.lora_E      (k, 1)
    base_model.model.<path>.lora_B      (d_out, k)    columns of B that are kept

k = sum(rank_pattern["<path>.lora_E"]) (init_r when the pattern has no entry), and k = 0 is
written as an empty tensor. adapter_config.json carries the rank pattern with the adapter name
removed from its keys, {"<path>.lora_E": [true, false, ...]} (length init_r). Loading injects
init_r adapters, resizes each layer to its pattern (resize_modules_by_rank_pattern; the scale
lora_alpha / (init_r + 1e-5) is unchanged, and rank 0 loads), then copies the tensors in.
Biases (bias="all"/"lora_only") and modules_to_save copies are saved as LoRA saves them.
"""
from __future__ import annotations

import os

import numpy as np

from ... import backend
from ...nn import Module
from ..layers import check_adapter_name
from ..save_load import (AdapterLoadError, PREFIX, _check, adapter_parameters, expected_shapes, read_adapter,
                         write_adapter_folder)
from ..inject import find_targets
from ..model import get_lora_model
from .config import AdaLoraConfig
from .model import AdaLoraModel

TRIPLET = ("lora_A", "lora_E", "lora_B")


def adalora_state_dict(model: AdaLoraModel, adapter_name: str = "default") -> dict:
    """{saved key: host NumPy array} of one adapter, sliced to its rank pattern (what PEFT writes)."""
    if not isinstance(model, AdaLoraModel):
        raise ValueError(f"expected an AdaLoraModel, got {type(model).__name__}")
    pattern = model.peft_config[adapter_name].rank_pattern or {}
    out = {k: np.ascontiguousarray(backend.to_numpy(p.data))
           for k, p in adapter_parameters(model, adapter_name).items()}
    for path, layer in model.svd_layers(adapter_name):
        keep = pattern.get(f"{path}.lora_E")
        if keep is None or len(keep) != layer.r[adapter_name]:
            continue  # no pattern yet, or the layer was resized to it already
        idx = np.flatnonzero(np.asarray(keep, dtype=bool))
        for attr in TRIPLET:
            key = f"{PREFIX}{path}.{attr}"
            out[key] = np.ascontiguousarray(np.take(out[key], idx, axis=1 if attr == "lora_B" else 0))
    return out


def save_adalora_adapter(model: AdaLoraModel, directory, adapter_name: str = "default") -> str:
    """Write ``adapter_name`` to ``directory`` (``<directory>/<name>`` unless "default"); returns the folder."""
    check_adapter_name(adapter_name)
    if not isinstance(model, AdaLoraModel) or adapter_name not in model.peft_config:
        raise ValueError(f"save_adalora_adapter: expected an AdaLoraModel holding adapter {adapter_name!r}")
    return write_adapter_folder(model, directory, adapter_name, adalora_state_dict(model, adapter_name))


def kept_rank(config: AdaLoraConfig, path: str) -> int:
    keep = (config.rank_pattern or {}).get(f"{path}.lora_E")
    return config.init_r if keep is None else int(sum(keep))


def expected_adalora_shapes(base: Module, config: AdaLoraConfig) -> dict:
    """{saved key: shape} an AdaLoRA file written for ``base`` with ``config`` must hold."""
    out = {k: s for k, s in expected_shapes(base, config).items()
           if not k.endswith((".lora_A.weight", ".lora_B.weight"))}
    for path, module in find_targets(base, config):
        keep = (config.rank_pattern or {}).get(f"{path}.lora_E")
        if keep is not None and len(keep) != config.init_r:
            raise AdapterLoadError(f"rank_pattern[{path + '.lora_E'!r}] has {len(keep)} entries; init_r is {config.init_r}")
        k = kept_rank(config, path)
        out[f"{PREFIX}{path}.lora_A"] = (k, module.in_features)
        out[f"{PREFIX}{path}.lora_E"] = (k, 1)
        out[f"{PREFIX}{path}.lora_B"] = (module.out_features, k)
    return out


def load_adalora_adapter(model: Module, directory, adapter_name: str = "default", is_trainable: bool = False,
                         seed: int = 0) -> AdaLoraModel:
    """Load a PEFT AdaLoRA folder into ``model`` (a plain model, or an AdaLoraModel to extend).

    Every key and shape is checked before anything changes (AdapterLoadError lists all problems).
    Each layer gets the rank its pattern keeps, rank 0 included, with the saved scale. is_trainable:
    the kept triplets require grad and can be fine-tuned further; the ranks stay as loaded (no
    RankAllocator is attached, so nothing is pruned again).
    """
    check_adapter_name(adapter_name)
    config, tensors = read_adapter(directory)
    if not isinstance(config, AdaLoraConfig):
        raise ValueError(f"load_adalora_adapter: {os.fspath(directory)!r} holds a {config.peft_type} adapter, "
                         "not ADALORA (use minilora.lora.load_adapter)")
    base = model.model if isinstance(model, AdaLoraModel) else model
    if isinstance(model, AdaLoraModel) and adapter_name in model.peft_config:
        raise ValueError(f"load_adalora_adapter: adapter {adapter_name!r} exists already; pick another name")
    _check(expected_adalora_shapes(base, config), tensors, directory)

    config.inference_mode = True  # no allocator while the layers are resized
    if isinstance(model, AdaLoraModel):
        model.add_adapter(adapter_name, config)
    else:
        model = get_lora_model(model, config, adapter_name=adapter_name, seed=seed)
    pattern = config.rank_pattern or {}
    for path, layer in model.svd_layers(adapter_name):
        keep = pattern.get(f"{path}.lora_E")
        if keep is not None:
            layer.resize(adapter_name, keep)
        for attr in TRIPLET:
            p = getattr(layer, attr)[adapter_name]
            p.data = p.xp.astype(backend.from_numpy(np.ascontiguousarray(tensors[f"{PREFIX}{path}.{attr}"]), p.xp),
                                 p.dtype, copy=True)
    params = adapter_parameters(model, adapter_name)
    for key, p in params.items():
        if key in tensors and not key.endswith(TRIPLET):
            p.data = p.xp.astype(backend.from_numpy(np.ascontiguousarray(tensors[key]), p.xp), p.dtype, copy=True)
    for p in params.values():
        p.requires_grad = bool(is_trainable) and adapter_name in model.active_adapters
    config.inference_mode = not is_trainable
    return model
