"""quantize_model: replace a model's Linear layers by Linear4bit (the frozen 4-bit base of QLoRA).

Which layers: every ``nn.Linear`` whose dotted path matches ``target_modules`` (None: all), except
those matching ``skip`` (default: ``lm_head``, whose weight is often tied to the embedding and
whose precision matters most). Embeddings and norms are never quantized. Matching follows PEFT:
a list matches a path equal to an entry or ending in ``.entry``; a string is a full regex.
"""
from __future__ import annotations

import re

from ..nn import Linear, Module
from .linear4bit import Linear4bit


def path_matches(path: str, patterns) -> bool:
    """PEFT's rule: str -> re.fullmatch(pattern, path); list -> path == p or endswith('.' + p)."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == p or path.endswith("." + p) for p in patterns)


def quantize_model(model: Module, target_modules=None, quant_type: str = "nf4", blocksize: int = 64,
                   double_quant: bool = True, skip=("lm_head",)) -> list:
    """Replace matching ``Linear`` submodules of ``model`` in place; returns their dotted paths."""
    if not isinstance(model, Module):
        raise ValueError(f"quantize_model: model must be a Module, got {type(model).__name__}")
    chosen = [path for path, m in model.named_modules()
              if type(m) is Linear and path
              and (target_modules is None or path_matches(path, target_modules))
              and not path_matches(path, skip)]
    if target_modules is not None and not chosen:
        raise ValueError(f"quantize_model: no Linear layer matches target_modules={target_modules!r}")
    for path in chosen:
        model.set_submodule(path, Linear4bit.from_linear(model.get_submodule(path), quant_type=quant_type,
                                                         blocksize=blocksize, double_quant=double_quant))
    return chosen
