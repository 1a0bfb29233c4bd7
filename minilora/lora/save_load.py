"""Adapter files in Hugging Face PEFT's format, so adapters move between minilora and PEFT.

A folder holds ``adapter_model.safetensors`` and ``adapter_config.json`` (keys sorted, indent 2,
``peft_type: "LORA"``). Tensor keys drop the adapter name, as PEFT does:

    base_model.model.<path>.lora_A.weight           (r, d_in)
    base_model.model.<path>.lora_B.weight           (d_out, r)
    base_model.model.<path>.lora_embedding_A        (r, V)
    base_model.model.<path>.lora_embedding_B        (C, r)
    base_model.model.<path>.base_layer.bias         (bias="all" or "lora_only")
    base_model.model.<module path>.<param>          (modules_to_save copies)

With bias="all", PEFT saves every parameter whose name ends in ``bias``, so a modules_to_save
layer's bias also appears as ``<path>.original_module.bias`` and ``<path>.modules_to_save.bias``.

The "default" adapter lives in the folder itself, any other in ``<folder>/<adapter name>/``.
Reading uses safetensors (never pickle); loading checks every key and shape first and raises one
error listing all problems, leaving the model untouched. Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .. import backend
from ..errors import FileFormatError, MiniloraError, MissingFileError, UnsafePathError
from ..io.safetensors_io import load_safetensors
from ..nn import Module
from .config import config_from_dict
from .inject import adapter_shapes, find_targets, lora_layers, matches, save_wrappers, walk
from .layers import LoRALayer, check_adapter_name
from .model import LoraModel, get_lora_model

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PREFIX = "base_model.model."


class AdapterLoadError(MiniloraError, ValueError):
    """An adapter file that does not fit the model: every offending key is listed."""


def _safe_name(name) -> str:
    """check_adapter_name, raising UnsafePathError: adapter names become folder names."""
    try:
        return check_adapter_name(name)
    except ValueError as exc:
        raise UnsafePathError(str(exc)) from None


def adapter_parameters(lora_model: LoraModel, adapter_name: str = "default") -> dict:
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


def adapter_state_dict(lora_model: LoraModel, adapter_name: str = "default") -> dict:
    """{saved key: host NumPy array} of one adapter, exactly what save_adapter writes."""
    return {k: np.ascontiguousarray(backend.to_numpy(p.data))
            for k, p in adapter_parameters(lora_model, adapter_name).items()}


def save_adapter(lora_model: LoraModel, directory, adapter_name=None,
                 path_initial_model_for_weight_conversion=None) -> list:
    """Write adapters to ``directory`` in PEFT's layout; returns the folders written.

    adapter_name: None = every adapter, a name or a list of names otherwise.
    path_initial_model_for_weight_conversion: the folder a PiSSA/OLoRA adapter was saved to right
    after its initialization; the adapter is then written as the equivalent rank-2r LoRA adapter for
    the untouched base (init_conversion.py), as PEFT does.
    """
    if not isinstance(lora_model, LoraModel):
        raise ValueError(f"save_adapter: expected a LoraModel, got {type(lora_model).__name__}")
    names = list(lora_model.peft_config) if adapter_name is None else (
        [adapter_name] if isinstance(adapter_name, str) else list(adapter_name))
    for name in names:  # every name is checked before anything is written
        _safe_name(name)
    converted = {}
    if path_initial_model_for_weight_conversion is not None:  # every conversion is checked before any write
        from .init_conversion import converted_adapter
        for name in names:
            converted[name] = converted_adapter(lora_model.peft_config[name], adapter_state_dict(lora_model, name),
                                                path_initial_model_for_weight_conversion)
    written = []
    for name in names:
        if getattr(lora_model.peft_config[name], "peft_type", "LORA") == "ADALORA":
            from .adalora.save_load import save_adalora_adapter  # sliced to the kept ranks, with rank_pattern
            written.append(save_adalora_adapter(lora_model, directory, name))
            continue
        config, tensors = converted.get(name) or (lora_model.peft_config[name], adapter_state_dict(lora_model, name))
        written.append(write_adapter_folder(lora_model, directory, name, tensors, config))
    return written


def write_adapter_folder(lora_model, directory, name: str, tensors: dict, config=None) -> str:
    """Write ``tensors`` and adapter ``name``'s config as PEFT does, each file atomically; returns the folder.

    The folder is ``directory`` for "default" and ``directory/<name>`` otherwise; the JSON is sorted,
    indented by 2, with inference_mode true.
    """
    folder = os.path.join(os.fspath(directory), "" if name == "default" else name)
    os.makedirs(folder, exist_ok=True)
    from safetensors.numpy import save as safetensors_bytes
    _atomic_write(os.path.join(folder, WEIGHTS_NAME), safetensors_bytes(tensors, metadata={"format": "pt"}))
    config = (lora_model.peft_config[name] if config is None else config).to_dict()
    config["inference_mode"] = True
    if config.get("base_model_name_or_path") is None:
        config["base_model_name_or_path"] = getattr(lora_model.model, "name_or_path", None)
    _atomic_write(os.path.join(folder, CONFIG_NAME), json.dumps(config, indent=2, sort_keys=True).encode())
    return folder


def read_adapter(directory) -> tuple:
    """(config, {key: NumPy array}) from a PEFT adapter folder."""
    folder = os.fspath(directory)
    config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise MissingFileError(path, "adapter file")
    with open(config_path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FileFormatError(config_path, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FileFormatError(config_path, f"must hold a JSON object, found {type(data).__name__}")
    try:
        config = config_from_dict(data)
    except (ValueError, TypeError) as exc:  # a field of the wrong type or range
        raise FileFormatError(config_path, str(exc)) from None
    return config, load_safetensors(weights_path)[0]


def load_adapter(model: Module, directory, adapter_name: str = "default", is_trainable: bool = False,
                 seed: int = 0) -> LoraModel:
    """Load a PEFT adapter folder into ``model`` (a LoraModel, or a plain model to wrap).

    A new ``adapter_name`` is injected from the file's config first; an existing one gets its
    tensors overwritten. Every key and shape is checked before anything changes. is_trainable:
    whether the loaded adapter's parameters require grad (PEFT's default: False, for inference).
    Returns the LoraModel.
    """
    _safe_name(adapter_name)
    config, tensors = read_adapter(directory)
    if getattr(config, "peft_type", "LORA") == "ADALORA":
        from .adalora.save_load import load_adalora_adapter  # each layer resized to its kept rank
        return load_adalora_adapter(model, directory, adapter_name, is_trainable=is_trainable, seed=seed)
    existing = isinstance(model, LoraModel) and adapter_name in model.peft_config
    base = model.model if isinstance(model, LoraModel) else model
    if existing:
        expected = {k: p.shape for k, p in adapter_parameters(model, adapter_name).items()}
    else:
        expected = expected_shapes(base, config)
    _check(expected, tensors, directory)

    if not existing:
        if isinstance(model, LoraModel):
            model.add_adapter(adapter_name, config)
        else:
            model = get_lora_model(model, config, adapter_name=adapter_name, seed=seed)
    params = adapter_parameters(model, adapter_name)
    for key, p in params.items():
        p.data = p.xp.astype(backend.from_numpy(np.ascontiguousarray(tensors[key]), p.xp), p.dtype, copy=True)
    for p in params.values():
        p.requires_grad = bool(is_trainable) and adapter_name in model.active_adapters
    model.peft_config[adapter_name].inference_mode = not is_trainable
    return model


def expected_shapes(base: Module, config) -> dict:
    """{saved key: shape} that an adapter with ``config`` has on ``base`` (nothing is changed)."""
    try:
        targets = find_targets(base, config)
    except ValueError as exc:
        raise AdapterLoadError(f"the adapter does not fit this model: {exc}") from None
    out = {}
    for path, module in targets:
        for suffix, shape in adapter_shapes(module, config.rank_for(path), getattr(config, "use_dora", False)).items():
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


def _check(expected: dict, tensors: dict, directory) -> None:
    problems = [f"missing key {k!r} (expected shape {tuple(s)})" for k, s in expected.items() if k not in tensors]
    problems += [f"key {k!r}: expected shape {tuple(s)}, found {tuple(tensors[k].shape)}"
                 for k, s in expected.items() if k in tensors and tuple(tensors[k].shape) != tuple(s)]
    problems += [f"unexpected key {k!r} (found shape {tuple(v.shape)})" for k, v in tensors.items() if k not in expected]
    problems += [f"key {k!r}: dtype {v.dtype} is not floating point" for k, v in tensors.items()
                 if k in expected and v.dtype.kind != "f"]
    if problems:
        raise AdapterLoadError(f"load_adapter({os.fspath(directory)!r}): the file does not fit the model; "
                               f"nothing was changed. {len(problems)} problem(s): " + "; ".join(problems))


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, then rename it over ``path``."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
