"""Adapter files in Hugging Face PEFT's format, so adapters move between minilora and PEFT.

A folder holds ``adapter_model.safetensors`` (the tensors, keys as adapter_state.py lists them)
and ``adapter_config.json`` (keys sorted, indent 2, ``peft_type`` "LORA", "ADALORA", ...). The
"default" adapter lives in the folder itself, any other in ``<folder>/<adapter name>/``.

One writer and one reader serve every adapter method: the model class registered for the config's
type (lora/model.py's MODEL_CLASSES) says which tensors an adapter has (``adapter_state_dict``),
which keys and shapes a file for a given base must hold (``expected_adapter_shapes``) and how to
take them in (``load_adapter_state_dict``); AdaLoraModel slices and resizes to its rank pattern there.
Reading uses safetensors (never pickle); loading checks every key and shape first and raises one
error listing all problems, leaving the model untouched. Every file is written atomically (io/atomic.py).
"""
from __future__ import annotations

import json
import os

from ..errors import ConfigError, FileFormatError
from ..io.atomic import write_text_atomic
from ..io.files import read_json_object, regular_file_size
from ..io.safetensors_io import load_safetensors, save_safetensors
from ..nn import Module
from .adapter_state import AdapterLoadError, adapter_parameters, check_keys_and_shapes
from .config import config_from_dict
from .layers import check_adapter_name
from .model import LoraModel, get_lora_model, model_class_for

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"

__all__ = ["save_adapter", "load_adapter", "read_adapter", "read_adapter_config", "write_adapter_folder",
           "adapter_state_dict", "AdapterLoadError", "WEIGHTS_NAME", "CONFIG_NAME"]


def adapter_state_dict(lora_model: LoraModel, adapter_name: str = "default") -> dict:
    """{saved key: host NumPy array} of one adapter, exactly what save_adapter writes."""
    return lora_model.adapter_state_dict(adapter_name)


def save_adapter(lora_model: LoraModel, directory, adapter_name=None) -> list:
    """Write adapters to ``directory`` in PEFT's layout; returns the folders written.

    adapter_name: None = every adapter, a name or a list of names otherwise.
    """
    if not isinstance(lora_model, LoraModel):
        raise ValueError(f"save_adapter: expected a LoraModel, got {type(lora_model).__name__}")
    names = list(lora_model.peft_config) if adapter_name is None else (
        [adapter_name] if isinstance(adapter_name, str) else list(adapter_name))
    for name in names:  # every name is checked before anything is written
        check_adapter_name(name)
    return [write_adapter_folder(lora_model, directory, name, lora_model.adapter_state_dict(name))
            for name in names]


def write_adapter_folder(lora_model, directory, name: str, tensors: dict) -> str:
    """Write ``tensors`` and adapter ``name``'s config as PEFT does, each file atomically; returns the folder.

    The folder is ``directory`` for "default" and ``directory/<name>`` otherwise; the JSON is sorted,
    indented by 2, with inference_mode true.
    """
    folder = os.path.join(os.fspath(directory), "" if name == "default" else name)
    os.makedirs(folder, exist_ok=True)
    save_safetensors(os.path.join(folder, WEIGHTS_NAME), tensors, metadata={"format": "pt"})
    config = lora_model.peft_config[name].to_dict()
    config["inference_mode"] = True
    if config.get("base_model_name_or_path") is None:
        config["base_model_name_or_path"] = getattr(lora_model.model, "name_or_path", None)
    write_text_atomic(os.path.join(folder, CONFIG_NAME), json.dumps(config, indent=2, sort_keys=True))
    return folder


def read_adapter_config(directory):
    """The config object (LoraConfig, AdaLoraConfig, ...) of a PEFT adapter folder."""
    config_path = os.path.join(os.fspath(directory), CONFIG_NAME)
    data = read_json_object(config_path, "adapter file")
    try:
        return config_from_dict(data)
    except (ValueError, TypeError) as exc:  # a field of the wrong type or range
        raise FileFormatError(config_path, str(exc)) from None


def read_adapter(directory) -> tuple:
    """(config, {key: NumPy array}) from a PEFT adapter folder."""
    weights_path = os.path.join(os.fspath(directory), WEIGHTS_NAME)
    regular_file_size(os.path.join(os.fspath(directory), CONFIG_NAME), "adapter file")
    regular_file_size(weights_path, "adapter file")
    return read_adapter_config(directory), load_safetensors(weights_path)[0]


def load_adapter(model: Module, directory, adapter_name: str = "default", is_trainable: bool = False,
                 seed: int = 0) -> LoraModel:
    """Load a PEFT adapter folder into ``model`` (a LoraModel / AdaLoraModel, or a plain model to wrap).

    A new ``adapter_name`` is injected from the file's config first (an AdaLoRA one resized to its
    rank pattern); an existing LoRA one gets its tensors overwritten. Every key and shape is checked
    before anything changes. is_trainable: whether the loaded adapter's parameters require grad
    (PEFT's default: False, for inference; a loaded AdaLoRA adapter keeps its ranks, no allocator
    prunes it again). Returns the model holding the adapter.
    """
    check_adapter_name(adapter_name)
    config, tensors = read_adapter(directory)
    model_class = model_class_for(config)
    wrapped = isinstance(model, LoraModel)
    if wrapped and not isinstance(model, model_class):
        raise ConfigError(f"load_adapter: {os.fspath(directory)!r} holds a {config.peft_type} adapter, which a "
                          f"{type(model).__name__} cannot hold; load it into the plain base model")
    existing = wrapped and adapter_name in model.peft_config
    if existing and not model.overwrites_on_load:
        raise ConfigError(f"load_adapter: adapter {adapter_name!r} exists already; pick another name")
    if existing:
        expected = {k: p.shape for k, p in adapter_parameters(model, adapter_name).items()}
    else:
        expected = model_class.expected_adapter_shapes(model.model if wrapped else model, config)
    check_keys_and_shapes(expected, tensors, directory)

    if not existing:
        config.inference_mode = True  # frozen while it is built (AdaLoRA: no rank allocator)
        if wrapped:
            model.add_adapter(adapter_name, config)
        else:
            model = get_lora_model(model, config, adapter_name=adapter_name, seed=seed)
    model.load_adapter_state_dict(adapter_name, tensors)
    for p in adapter_parameters(model, adapter_name).values():
        p.requires_grad = bool(is_trainable) and adapter_name in model.active_adapters
    model.peft_config[adapter_name].inference_mode = not is_trainable
    return model
