"""to_lora: turn a trained AdaLoRA model into plain LoRA adapters with per-module ranks.

A layer that keeps the triplets K (|K| = k) computes  scale * B[:, K] (A[K] * E[K])  with
scale = lora_alpha / (init_r + 1e-5). As LoRA (delta = (alpha_l / r_l) B_l A_l) that is

    A_l = A[K] * E[K]  (k, d_in),   B_l = B[:, K]  (d_out, k),   r_l = k,   alpha_l = k * scale,

written as LoraConfig.rank_pattern / alpha_pattern (exact module paths). Layers pruned to k = 0
get no LoRA adapter (they compute their base alone, as before). The outputs are identical up to
rounding, and the result saves as an ordinary PEFT LoRA adapter.
"""
from __future__ import annotations

import re

from ...tensor import no_grad
from ..config import LoraConfig
from ..inject import save_wrappers
from ..model import LoraModel, get_lora_model
from .model import AdaLoraModel


def to_lora(model: AdaLoraModel, adapter_name: str | None = None) -> LoraModel:
    """A LoraModel over the same base model with the kept triplets of ``adapter_name`` (default: the
    trainable or active one). The AdaLoRA wrappers are removed from the base model (``model`` is
    spent, as after unload()); the pruned triplets (E_i = 0 or resized away) are dropped."""
    if not isinstance(model, AdaLoraModel):
        raise ValueError(f"to_lora: expected an AdaLoraModel, got {type(model).__name__}")
    name = adapter_name or model.trainable_adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise ValueError(f"to_lora: no adapter {name!r}; have {list(model.peft_config)}")
    config = model.peft_config[name]
    kept = model.kept_indices(name)
    factors = {}
    with no_grad():
        for path, layer in model.svd_layers(name):
            xp = layer.xp
            a, e, b = layer.triplet(name)
            idx = xp.asarray(kept[path], dtype=xp.int64)
            if idx.shape[0] > 0:
                a_l = xp.take(a * e, idx, axis=0)  # (k, d_in)
                b_l = xp.take(b, idx, axis=1)  # (d_out, k)
                factors[path] = (a_l, b_l, layer.scale(name))
    if not factors:
        raise ValueError("to_lora: every layer was pruned to rank 0; there is no LoRA adapter to build "
                         "(the model equals its base: use unload())")
    lora_config = LoraConfig(
        r=config.init_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=sorted(factors), bias=config.bias, modules_to_save=config.modules_to_save,
        rank_pattern={re.escape(p): int(f[0].shape[0]) for p, f in factors.items()},
        alpha_pattern={re.escape(p): int(f[0].shape[0]) * f[2] for p, f in factors.items()},
        task_type=config.task_type, base_model_name_or_path=config.base_model_name_or_path)
    saved = {path: {n: p.data for n, p in w.modules_to_save[name].named_parameters()}
             for path, w in save_wrappers(model.model) if name in w.modules_to_save}
    base = model.unload()  # biases stay: the base layers (and their bias Parameters) are the same objects
    lora = get_lora_model(base, lora_config, adapter_name=name, seed=model.seed)
    with no_grad():
        for path, (a_l, b_l, _) in factors.items():
            layer = lora.model.get_submodule(path)
            layer.lora_A[name].weight.data = a_l
            layer.lora_B[name].weight.data = b_l
        for path, wrapper in save_wrappers(lora.model):  # trained modules_to_save copies carry over
            for n, p in wrapper.modules_to_save[name].named_parameters():
                p.data = saved.get(path, {}).get(n, p.data)
    return lora
