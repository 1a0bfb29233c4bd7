"""Turning a PiSSA/OLoRA adapter into a plain LoRA adapter for the untouched base (PEFT's
``path_initial_model_for_weight_conversion``).

A PiSSA/OLoRA model holds W_res = W - s B0 A0 in its base and trains A, B from A0, B0, so its layer is
W_res + s B A = W + s (B A - B0 A0). The difference is itself a LoRA product of rank 2r:

    B A - B0 A0 = [B | -B0] [A ; A0]        A' = concat(A, A0) (2r, d_in), B' = concat(B, -B0) (d_out, 2r)

With r' = 2r and alpha' = 2 alpha (rsLoRA: alpha' = sqrt(2) alpha) the scaling s is unchanged, so
W + s' B' A' is exactly the trained layer, on the original W: the file loads on a fresh base.
``initial`` is the folder where the adapter was saved right after initialization (A0, B0).
"""
from __future__ import annotations

import dataclasses
import math

from .. import backend
from ..errors import ConfigError


def converted_adapter(config, tensors: dict, initial_dir) -> tuple:
    """(config', tensors') of the equivalent rank-2r LoRA adapter on the untouched base (module doc).

    tensors: {saved key: array} of the trained adapter; initial_dir: the folder saved at init.
    """
    from .save_load import read_adapter
    if getattr(config, "peft_type", "LORA") != "LORA":
        raise ConfigError(f"path_initial_model_for_weight_conversion applies to LoRA adapters, not {config.peft_type}")
    if config.init_lora_weights == "loftq":
        raise ConfigError("path_initial_model_for_weight_conversion: a LoftQ adapter cannot be converted (its base "
                          "is the quantized weight, not the original one)")
    if config.use_dora:
        raise ConfigError("path_initial_model_for_weight_conversion: a DoRA adapter cannot be converted (its "
                          "magnitude was computed on the residual weight)")
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise ConfigError("path_initial_model_for_weight_conversion does not support rank_pattern or alpha_pattern "
                          "together with use_rslora=True (PEFT refuses it too)")
    _, initial = read_adapter(initial_dir)
    out = dict(tensors)
    for key, value in tensors.items():
        if ".lora_A." not in f"{key}." and ".lora_B." not in f"{key}.":
            continue
        if key not in initial or initial[key].shape != value.shape:
            found = None if key not in initial else tuple(initial[key].shape)
            raise ConfigError(f"path_initial_model_for_weight_conversion: {initial_dir} does not hold this adapter's "
                              f"initial {key!r} of shape {tuple(value.shape)} (found {found})")
        xp = backend.namespace_of(value, initial[key])  # both read from adapter files: host arrays
        start = xp.astype(initial[key], value.dtype)
        if ".lora_A." in f"{key}.":
            out[key] = xp.concat([value, start], axis=0)  # (2r, d_in)
        else:
            out[key] = xp.concat([value, -start], axis=1)  # (d_out, 2r)
    alpha_factor = math.sqrt(2.0) if config.use_rslora else 2.0
    new_config = dataclasses.replace(
        config, init_lora_weights=True, loftq_config={}, r=2 * config.r, lora_alpha=alpha_factor * config.lora_alpha,
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: 2 * v for k, v in config.alpha_pattern.items()})
    return new_config, out
