"""Mixed-adapter batches (PEFT's ``adapter_names``): one adapter per batch row, "__base__" for none.

    model(ids, adapter_names=["a", "__base__", "b"])        ids (3, T)

Row i computes exactly what the model computes for ids[i] alone with adapter names[i] active (and no
adapter for "__base__"). Each LoRA layer adds, for every adapter u named in the batch,

    y = base(x) + sum_u mask_u * increment_u(x)          mask_u (B, 1, ..., 1) = [names[i] == u]

so rows never see another row's adapter; the cost is one adapter path per distinct name over the
whole batch (adapter paths are rank r, small next to the base). Merged weights would leak into every
row, so the call is refused while any adapter is merged; modules_to_save copies are refused too.
"""
from __future__ import annotations

import contextlib

from ..errors import ConfigError
from ..tensor import Tensor

BASE = "__base__"


def rows_only(increment: Tensor, rows):
    """increment (B, ...) with the rows outside ``rows`` (a 0/1 mask (B,), or None: all rows) zeroed."""
    if rows is None:
        return increment
    xp = increment.xp
    return increment * xp.reshape(rows, (rows.shape[0],) + (1,) * (len(increment.shape) - 1))


def row_masks(layer, names) -> list:
    """[(adapter, mask (B,))] for the adapters of ``layer`` named in ``names``, in first-seen order;
    the mask is 1.0 on the rows that use the adapter, in the layer's dtype."""
    xp = layer.xp
    return [(name, xp.asarray([1.0 if n == name else 0.0 for n in names], dtype=layer.dtype))
            for name in dict.fromkeys(names) if name != BASE and name in layer.r]


def check_adapter_names(lora_model, adapter_names, batch: int) -> list:
    """adapter_names as a list: one known adapter (or "__base__") per row; ConfigError otherwise."""
    from .inject import lora_layers, save_wrappers
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
        raise ConfigError(f"adapter_names must be a list with one adapter name per batch row, got {adapter_names!r}")
    names = list(adapter_names)
    if len(names) != batch:
        raise ConfigError(f"adapter_names has {len(names)} entries for a batch of {batch} rows: give one per row")
    unknown = sorted({n for n in names if n != BASE and n not in lora_model.peft_config})
    if unknown:
        raise ConfigError(f"adapter_names: unknown adapter(s) {unknown}; have {list(lora_model.peft_config)} "
                          f"and {BASE!r} for rows without an adapter")
    merged = sorted({n for _, layer in lora_layers(lora_model.model) for n in layer.merged_adapters})
    if merged:
        raise ConfigError(f"adapter_names cannot be used while adapters are merged ({merged} are): their deltas "
                          "would apply to every row; call unmerge_adapter() first")
    if save_wrappers(lora_model.model):
        raise ConfigError("adapter_names is not supported with modules_to_save (each row would need its own copy "
                          "of the saved module)")
    return names


@contextlib.contextmanager
def mixed_batch(lora_model, adapter_names, batch: int):
    """Inside the block every LoRA layer adds each row's own adapter (module docstring)."""
    from .inject import lora_layers
    names = check_adapter_names(lora_model, adapter_names, batch)
    layers = [layer for _, layer in lora_layers(lora_model.model)]
    for layer in layers:
        layer.row_adapters = names
    try:
        yield
    finally:
        for layer in layers:
            layer.row_adapters = None
