"""LoRA+ (Hayou, Ghosh & Yu, arXiv 2402.12354): matrix B learns lambda times faster than matrix A.

With A (r, d_in) and B (d_out, r) at the same learning rate, feature learning in wide models is
inefficient; the paper sets lr_B = lambda * lr_A (lambda ~ 16). The param groups, in PEFT's order:

    A          every trainable 2-D parameter that is not a B matrix (lora_A, ...)      lr
    embedding  both adapters of an embedding layer (by the owning module's type)       loraplus_lr_embedding
    B          lora_B matrices and 1-D trainable parameters that decay                 lr * ratio
    B_no_decay 1-D parameters that do not decay (biases, norm weights)                 lr * ratio, wd 0

Embedding adapters are found by the type of the module that owns them, not by name, so both
lora_embedding_A and lora_embedding_B land in the embedding group.
"""
from __future__ import annotations

import warnings

from ..nn import LayerNorm, RMSNorm


def _is_embedding_adapter(model, name: str) -> bool:
    from ..lora.embedding import LoRAEmbedding
    path = name.split(".")
    # <owner>.lora_embedding_A.<adapter>: the owner is two levels above the parameter
    for depth in (2, 3):
        if len(path) > depth and isinstance(_get(model, path[:-depth]), LoRAEmbedding):
            return path[-depth] in LoRAEmbedding.adapter_param_names
    return False


def _get(model, parts):
    module = model
    for part in parts:
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _no_decay_names(model) -> set:
    """Biases and the parameters of normalization layers never decay (as in transformers' Trainer)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, (LayerNorm, RMSNorm)):
            names.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters())
    for name, _ in model.named_parameters():
        if "bias" in name:
            names.add(name)
    return names


def loraplus_param_groups(model, lr: float, loraplus_lr_ratio: float, loraplus_lr_embedding: float = 1e-6,
                          weight_decay: float = 0.0) -> list:
    """Param groups [A, embedding, B, B_no_decay] for any minilora optimizer (see module docstring).

    Every trainable parameter lands in exactly one group; frozen ones in none. Each group has a
    "name" key ("A", "embedding", "B", "B_no_decay") for reporting.
    """
    if loraplus_lr_ratio is None or isinstance(loraplus_lr_ratio, bool) or \
            not isinstance(loraplus_lr_ratio, (int, float)) or not loraplus_lr_ratio > 0:
        raise ValueError(f"loraplus_lr_ratio must be a number > 0, got {loraplus_lr_ratio!r}")
    if loraplus_lr_ratio < 1:
        warnings.warn(f"loraplus_lr_ratio={loraplus_lr_ratio} < 1 makes B slower than A; LoRA+ "
                      "(arXiv 2402.12354) wants B faster (the paper suggests about 16)", stacklevel=2)
    for arg, value in (("lr", lr), ("loraplus_lr_embedding", loraplus_lr_embedding)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{arg} must be a number >= 0, got {value!r}")
    no_decay = _no_decay_names(model)
    groups = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if _is_embedding_adapter(model, name):
            groups["embedding"].append(p)
        elif ".lora_B." in f".{name}." or p.ndim == 1:
            groups["B_no_decay" if name in no_decay else "B"].append(p)
        else:
            groups["A"].append(p)
    return [
        {"name": "A", "params": groups["A"], "lr": lr, "weight_decay": weight_decay},
        {"name": "embedding", "params": groups["embedding"], "lr": loraplus_lr_embedding,
         "weight_decay": weight_decay},
        {"name": "B", "params": groups["B"], "lr": lr * loraplus_lr_ratio, "weight_decay": weight_decay},
        {"name": "B_no_decay", "params": groups["B_no_decay"], "lr": lr * loraplus_lr_ratio, "weight_decay": 0.0},
    ]


def create_loraplus_optimizer(model, optimizer_cls, *, lr: float, loraplus_lr_ratio: float,
                              loraplus_lr_embedding: float = 1e-6, loraplus_weight_decay: float = 0.0,
                              **optimizer_kwargs):
    """``optimizer_cls(loraplus_param_groups(...), lr=lr, **optimizer_kwargs)``, as PEFT's helper of that name.

    Empty groups are dropped (an optimizer needs no empty group; the partition is unchanged).
    """
    groups = loraplus_param_groups(model, lr, loraplus_lr_ratio, loraplus_lr_embedding, loraplus_weight_decay)
    return optimizer_cls([g for g in groups if g["params"]], lr=lr, **optimizer_kwargs)
