"""LoraModel: the user's model with LoRA adapters injected, and the adapter-management API.

``get_lora_model(model, config)`` wraps the targeted layers in place (the user's model object is
modified) and returns a LoraModel that forwards calls and attribute reads to it. Parameter paths
inside the user's model follow PEFT: ``<path>.base_layer.weight``, ``<path>.lora_A.<name>.weight``.
"""
from __future__ import annotations

import contextlib
import warnings

from ..errors import ConfigError
from ..nn import Module
from ..tensor import no_grad
from .adapter_state import adapter_parameters, copy_into, expected_shapes, host_arrays
from .config import LoraConfig
from .inject import inject_adapter, lora_layer_class, lora_layers, save_wrappers
from .base_weight import is_quantized
from .layers import check_adapter_name
from .mixed_batch import mixed_batch


class LoraModel(Module):
    """A model with named LoRA adapters. Calls go to the wrapped model; so do unknown attributes.

    peft_config: {adapter name: config}. active_adapters: the adapters whose deltas add up in the
    forward (set with set_adapter).
    """

    def __init__(self, model: Module, config: LoraConfig, adapter_name: str = "default", seed: int = 0):
        if not isinstance(model, Module):
            raise ValueError(f"get_lora_model: model must be a minilora Module, got {type(model).__name__}")
        self.model = model
        self.peft_config = {}
        self.active_adapters = []
        self.seed = seed
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    def forward(self, *args, adapter_names=None, **kwargs):
        """The wrapped model's forward. adapter_names: one adapter name per batch row ("__base__":
        none), each row computed with its own adapter (mixed_batch.py); refused while merged."""
        if adapter_names is None:
            return self.model(*args, **kwargs)
        inputs = args[0] if args else next(iter(kwargs.values()), None)
        shape = getattr(inputs, "shape", ())
        if len(shape) < 1:
            raise ConfigError("adapter_names needs a batched input (rows first) to give each row its adapter")
        with mixed_batch(self, adapter_names, int(shape[0])):
            return self.model(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") or "model" not in vars(self):
            raise AttributeError(name)
        return getattr(vars(self)["model"], name)

    def get_base_model(self) -> Module:
        return self.model

    @property
    def active_adapter(self) -> str:
        return self.active_adapters[0]

    # ------------------------------------------------------------ adapters
    def _check_new_adapter(self, adapter_name: str, config, config_class) -> None:
        """A safe, unused name and a valid config of ``config_class``, before anything is injected."""
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ValueError(f"add_adapter: adapter {adapter_name!r} already exists")
        if not isinstance(config, config_class):
            raise ValueError(f"add_adapter: config must be a {config_class.__name__}, got {type(config).__name__}")
        config.validate()

    def add_adapter(self, adapter_name: str, config: LoraConfig) -> None:
        """Inject a new adapter (inactive and frozen until set_adapter names it)."""
        self._check_new_adapter(adapter_name, config, LoraConfig)
        inject_adapter(self.model, config, adapter_name, seed=self.seed)
        self.peft_config[adapter_name] = config
        self.mark_trainable()

    def set_adapter(self, adapter_names) -> None:
        """Make one adapter (str) or several (list; their deltas add) active and trainable."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [n for n in names if n not in self.peft_config]
        if missing or not names:
            raise ValueError(f"set_adapter: unknown adapter(s) {missing or names}; have {list(self.peft_config)}")
        self.active_adapters = names
        for _, layer in lora_layers(self.model):
            layer.active_adapters = [n for n in names if n in layer.r]
        for _, wrapper in save_wrappers(self.model):
            wrapper.set_adapter(names)
        self.mark_trainable()

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter everywhere; if it was active, the first remaining adapter becomes active."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"delete_adapter: no adapter {adapter_name!r}; have {list(self.peft_config)}")
        layers = lora_layers(self.model)
        merged = [p for p, layer in layers if adapter_name in layer.merged_adapters]
        if merged:
            raise ValueError(f"delete_adapter: {adapter_name!r} is merged in {merged}; unmerge_adapter() first")
        for _, layer in layers:
            if adapter_name in layer.r:
                layer.delete_adapter(adapter_name)
        for _, wrapper in save_wrappers(self.model):
            wrapper.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        remaining = [n for n in self.active_adapters if n != adapter_name]
        if not remaining and self.peft_config:
            remaining = [next(iter(self.peft_config))]
        self.active_adapters = []
        if remaining:
            self.set_adapter(remaining)

    def mark_trainable(self) -> None:
        """Freeze everything, then unfreeze active adapters, chosen biases and modules_to_save copies."""
        for _, p in self.model.named_parameters():
            p.requires_grad = False
        bias_modes = {self.peft_config[n].bias for n in self.active_adapters if n in self.peft_config}
        for _, layer in lora_layers(self.model):
            for name in layer.adapter_names:
                for p in layer.adapter_parameters(name).values():
                    p.requires_grad = name in self.active_adapters
            bias = getattr(layer.base_layer, "bias", None)
            if "lora_only" in bias_modes and bias is not None:
                bias.requires_grad = True
        if "all" in bias_modes:
            for name, p in self.model.named_parameters():
                if name.split(".")[-1] == "bias" and not _inside_save_wrapper(name):
                    p.requires_grad = True
        for _, wrapper in save_wrappers(self.model):
            wrapper.set_adapter(self.active_adapters)

    def add_weighted_adapter(self, adapters, weights, adapter_name: str, combination_type: str = "linear",
                             svd_rank=None) -> None:
        """New adapter = weighted combination of ``adapters`` ("linear": exact sum of deltas;
        "svd": its truncated SVD at rank ``svd_rank``). See weighted.py for the math."""
        from .weighted import add_weighted_adapter
        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank)

    # ------------------------------------------------------------ adapter state (what files hold)
    overwrites_on_load = True  # load_adapter may overwrite an existing adapter's tensors in place

    def adapter_state_dict(self, adapter_name: str = "default") -> dict:
        """{saved key: host NumPy array} of one adapter: what its adapter_model.safetensors holds."""
        return host_arrays({k: p.data for k, p in adapter_parameters(self, adapter_name).items()})

    @staticmethod
    def layer_class_for(module) -> type:
        """The LoRA layer class this model wraps ``module`` in (LoRALinear or LoRAEmbedding)."""
        return lora_layer_class(module)

    @classmethod
    def expected_adapter_shapes(cls, base: Module, config) -> dict:
        """{saved key: shape} a file of ``config``'s adapter written for ``base`` must hold."""
        return expected_shapes(base, config, cls.layer_class_for)

    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        """Copy checked host arrays (keys and shapes as expected_adapter_shapes says) into the adapter."""
        copy_into(adapter_parameters(self, adapter_name), tensors)

    # ------------------------------------------------------------ counting
    def get_nb_trainable_parameters(self) -> tuple:
        """(trainable, total) parameter counts (PEFT's name); a 4-bit weight counts d_out * d_in."""
        return self.model.num_parameters(trainable_only=True), self.model.num_parameters()

    def trainable_parameters_summary(self) -> str:
        """PEFT's print_trainable_parameters line, returned instead of printed."""
        trainable, total = self.get_nb_trainable_parameters()
        return (f"trainable params: {trainable:,d} || all params: {total:,d} || "
                f"trainable%: {100 * trainable / max(total, 1):.4f}")

    # ------------------------------------------------------------ merging
    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        """W0 += scaling B A for the active adapters (or ``adapter_names``) in every LoRA layer.

        An adapter merged already is skipped with a warning. safe_merge: a merged weight with
        NaN/Inf raises, and every layer merged by this call is restored (the model is unchanged).
        """
        skipped = self._merge_layers(lora_layers(self.model), self._names(adapter_names), safe_merge)
        if skipped:
            warnings.warn(f"merge_adapter: adapter(s) {sorted(skipped)} already merged; left as they are",
                          stacklevel=2)

    def unmerge_adapter(self) -> None:
        """Subtract every merged delta again, last merged first (LIFO)."""
        with no_grad():
            for _, layer in lora_layers(self.model):
                layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = False, adapter_names=None, requantize: bool = False):
        """Merge the active adapters (or ``adapter_names``) and return the plain model: LoRA layers
        become their merged bases (a quantized base becomes a float Linear holding dequantize() +
        scaling B A), modules_to_save wrappers become the active copy. This LoraModel is spent.

        requantize: quantized bases stay 4-bit (quant(dequantize() + scaling B A)) and the call
        returns (model, report) with, per layer, the error and the surviving update (quant/merge.py).
        """
        names = self._names(adapter_names)
        layers = lora_layers(self.model)
        report = {}
        with no_grad():  # quantized bases first: they build new layers and change nothing
            if requantize:
                from ..quant.merge import requantize_lora_layer
                replacements = []
                for path, layer in layers:
                    if is_quantized(layer.base_layer):
                        module, report[path] = requantize_lora_layer(layer, names, path, safe_merge)
                        replacements.append((path, module))
            else:
                replacements = [(path, layer.merged_base(names, safe_merge)) for path, layer in layers
                                if is_quantized(layer.base_layer)]
        plain = [(p, layer) for p, layer in layers if not is_quantized(layer.base_layer)]
        self._merge_layers(plain, names, safe_merge)
        replacements += [(path, layer.base_layer) for path, layer in plain]
        for path, module in replacements:
            self.model.set_submodule(path, module)
        for path, wrapper in save_wrappers(self.model):
            self.model.set_submodule(path, wrapper.active_module())
        return (self.model, report) if requantize else self.model

    def _names(self, adapter_names) -> list:
        if adapter_names is None:
            return list(self.active_adapters)
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"adapter_names: unknown adapter(s) {unknown}; have {list(self.peft_config)}")
        return names

    @staticmethod
    def _merge_layers(layers, names, safe_merge) -> set:
        """Merge ``names`` into every layer, all or nothing: on an error every layer gets its weight
        array from before the call back. Returns the names found merged already."""
        skipped, done = set(), []
        with no_grad():
            try:
                for _, layer in layers:
                    done.append((layer, layer.snapshot()))
                    skipped.update(layer.merge(names, safe_merge=safe_merge))
            except ValueError:
                for layer, state in reversed(done):
                    layer.restore(state)  # bit-identical: the old arrays are put back
                raise
        return skipped

    def unload(self) -> Module:
        """Return the base model without any adapter (merged deltas are subtracted first)."""
        self.unmerge_adapter()
        for path, layer in lora_layers(self.model):
            self.model.set_submodule(path, layer.base_layer)
        for path, wrapper in save_wrappers(self.model):
            self.model.set_submodule(path, wrapper.original_module)
        return self.model

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside the block the model computes its base output (nesting-safe; restores on exit).

        Merged adapters are subtracted on entry and merged again on exit."""
        layers = lora_layers(self.model)
        wrappers = save_wrappers(self.model)
        before = [(layer, layer.adapters_disabled, list(layer.merged_adapters)) for _, layer in layers]
        wrappers_before = [(w, w.adapters_disabled) for _, w in wrappers]
        with no_grad():
            for layer, _, _ in before:
                layer.unmerge()
                layer.adapters_disabled = True
        for w, _ in wrappers_before:
            w.adapters_disabled = True
        try:
            yield self
        finally:
            with no_grad():
                for layer, disabled, merged in before:
                    layer.adapters_disabled = disabled
                    layer.unmerge()
                    layer.merge(merged)
            for w, disabled in wrappers_before:
                w.adapters_disabled = disabled


def _inside_save_wrapper(name: str) -> bool:
    """modules_to_save copies train by their own rule; the original module stays frozen."""
    return ".modules_to_save." in name or ".original_module." in name or name.startswith(
        ("modules_to_save.", "original_module."))


# config class -> model class; AdaLoRA registers its own pair here.
MODEL_CLASSES: dict = {LoraConfig: LoraModel}


def register_model_class(config_cls, model_cls) -> None:
    """Teach get_lora_model a new adapter method: configs of ``config_cls`` build ``model_cls``."""
    MODEL_CLASSES[config_cls] = model_cls


def get_lora_model(model: Module, config, adapter_name: str = "default", seed: int = 0) -> LoraModel:
    """Inject adapter ``adapter_name`` described by ``config`` into ``model`` (in place) and return
    the wrapping model class registered for the config's type (LoraModel for a LoraConfig).

    seed: initialises the adapters and the dropout masks reproducibly (per layer and adapter).
    """
    return model_class_for(config)(model, config, adapter_name=adapter_name, seed=seed)


def model_class_for(config) -> type:
    """The model class registered for ``config``'s type (or the nearest base class of it)."""
    for cls in type(config).__mro__:
        if cls in MODEL_CLASSES:
            return MODEL_CLASSES[cls]
    raise ValueError(f"get_lora_model: no model class for config type {type(config).__name__} "
                     f"(known: {[c.__name__ for c in MODEL_CLASSES]})")
