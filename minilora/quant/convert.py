"""quantize_model: replace a model's Linear layers by Linear4bit (the frozen 4-bit base of QLoRA).

Which layers: every ``nn.Linear`` whose dotted path matches ``target_modules`` (None: all), except
those matching ``skip`` (default: ``lm_head``, whose weight is often tied to the embedding and
whose precision matters most). Embeddings and norms are never quantized. Matching follows PEFT:
a list matches a path equal to an entry or ending in ``.entry``; a string is a full regex.

``QuantSpec`` holds those choices; ``load_weights_quantized`` applies them while weights arrive
one tensor at a time (``pretrained.load_pretrained(..., quantize=QuantSpec())``), so the float
model never exists whole: the peak is the 4-bit model, the float embeddings and one float matrix.
The bytes are those ``quantize_model`` gives on the whole float model (the same
``Linear4bit.from_linear`` call on the same float values).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..nn import Linear, Module
from .linear4bit import Linear4bit


def path_matches(path: str, patterns) -> bool:
    """PEFT's rule: str -> re.fullmatch(pattern, path); list -> path == p or endswith('.' + p)."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == p or path.endswith("." + p) for p in patterns)


@dataclass(frozen=True)
class QuantSpec:
    """Which Linear layers become 4-bit and how (bitsandbytes' quant_type, blocksize, compress_statistics)."""

    quant_type: str = "nf4"
    blocksize: int = 64
    double_quant: bool = True
    target_modules: object = None
    skip: tuple = ("lm_head",)

    def chosen_paths(self, model: Module) -> list:
        """Dotted paths of the ``Linear`` submodules of ``model`` this spec quantizes."""
        chosen = [path for path, m in model.named_modules()
                  if type(m) is Linear and path
                  and (self.target_modules is None or path_matches(path, self.target_modules))
                  and not path_matches(path, self.skip)]
        if self.target_modules is not None and not chosen:
            raise ValueError(f"quantize_model: no Linear layer matches target_modules={self.target_modules!r}")
        return chosen

    def to_4bit(self, linear: Linear) -> Linear4bit:
        return Linear4bit.from_linear(linear, quant_type=self.quant_type, blocksize=self.blocksize,
                                      double_quant=self.double_quant)


def quantize_model(model: Module, target_modules=None, quant_type: str = "nf4", blocksize: int = 64,
                   double_quant: bool = True, skip=("lm_head",)) -> list:
    """Replace matching ``Linear`` submodules of ``model`` in place; returns their dotted paths."""
    if not isinstance(model, Module):
        raise ValueError(f"quantize_model: model must be a Module, got {type(model).__name__}")
    spec = QuantSpec(quant_type, blocksize, double_quant, target_modules, skip)
    chosen = spec.chosen_paths(model)
    for path in chosen:
        model.set_submodule(path, spec.to_4bit(model.get_submodule(path)))
    return chosen


def _release_placeholders(model: Module) -> None:
    """Free the zero arrays of a model about to be loaded: each parameter becomes a read-only
    broadcast view of one zero of its shape and dtype (no memory) until its tensor arrives.

    Freed now, the allocator reuses that memory for the float matrices that come and go; freed one
    by one as their replacements arrive, never-touched pages would be handed out and touched
    instead, and the resident set would grow toward the whole float model.
    """
    for _, p in model.named_parameters():
        xp = p.xp
        p.data = xp.broadcast_to(xp.zeros((), dtype=p.dtype), p.shape)


def load_weights_quantized(model: Module, tensors, spec: QuantSpec) -> list:
    """Load (name, float array) pairs into ``model`` one at a time, quantizing the chosen layers as they come.

    model: built without drawing weights (``Transformer(config, init=False)``: its zero arrays are
    not resident until written). A chosen layer's weight is loaded into the float Linear, which
    is replaced at once by its ``Linear4bit``, so the float matrix is freed before the next tensor
    is read; a bias arriving after its weight lands in the Linear4bit's frozen bias. Every other
    tensor becomes the parameter (no copy). Returns the quantized paths.
    """
    chosen = set(spec.chosen_paths(model))
    owner = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}  # tied: one id
    _release_placeholders(model)
    missing = {i: name for name, i in reversed(owner.items())}  # id -> its first name
    for name, value in tensors:
        if name not in owner:
            raise ValueError(f"load_weights_quantized: unexpected weight {name!r} for this model")
        model.load_state_dict({name: value}, strict=False, copy=False)
        missing.pop(owner[name], None)
        path, _, leaf = name.rpartition(".")
        if leaf == "weight" and path in chosen:
            model.set_submodule(path, spec.to_4bit(model.get_submodule(path)))
    if missing:
        raise ValueError(f"load_weights_quantized: {len(missing)} weights never arrived, e.g. "
                         f"{sorted(missing.values())[:3]}")
    return sorted(chosen)
