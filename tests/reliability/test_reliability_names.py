"""Names cannot escape their folder: adapter names and names read from files never become paths outside it.

Adapter names become folder names (``<out>/<name>/``), so ``../x``, absolute paths and names with a
separator are refused with UnsafePathError before anything is written. Names inside files (tensor
keys of adapters and checkpoints) are only ever matched against the model's own names.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from minilora.checkpoint import load_checkpoint, save_checkpoint
from minilora.errors import FileFormatError, MiniloraError, UnsafePathError
from minilora.lora import AdapterLoadError, LoraConfig, get_lora_model, load_adapter, save_adapter
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer
from minilora.optim import AdamW

BAD_NAMES = ["../x", "..", "a/b", "a\\b", "/tmp/abs", os.path.abspath("elsewhere"), "x" + os.sep + "y", "", ".hidden",
             "_private", "a\nb"]


def _model():
    config = ModelConfig(style="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return get_lora_model(Transformer(config, seed=0), LoraConfig(r=2, target_modules=["q_proj"]), seed=1)


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_save_adapter_refuses_unsafe_names_before_writing(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    model = _model()
    with pytest.raises(UnsafePathError, match="adapter_name"):
        save_adapter(model, out, adapter_name=name)
    with pytest.raises(UnsafePathError, match="adapter_name"):  # a good name first: still nothing written
        save_adapter(model, out, adapter_name=["default", name])
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_load_adapter_refuses_unsafe_names(tmp_path, name):
    save_adapter(_model(), tmp_path)
    model = _model()
    with pytest.raises(UnsafePathError, match="adapter_name"):
        load_adapter(model, tmp_path, adapter_name=name)
    assert list(model.peft_config) == ["default"]


def test_tensor_keys_from_files_are_names_not_paths(tmp_path):
    save_adapter(_model(), tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["../../escaped"] = np.zeros(2, np.float32)
    save_file(tensors, weights)
    before = _tree(tmp_path)
    with pytest.raises(AdapterLoadError, match="unexpected key '../../escaped'"):
        load_adapter(_model().model, tmp_path / "adapter")

    model = _model()
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad])
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, optimizer, 0)
    tensors = load_file(path)
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
    tensors["param/../../escaped"] = np.zeros(2, np.float32)
    tensors["optim/../../x/exp_avg"] = np.zeros(2, np.float32)
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(FileFormatError, match="unexpected parameter '../../escaped'"):
        load_checkpoint(path, model, optimizer)
    del tensors["param/../../escaped"]
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(FileFormatError, match="no such parameter slot"):
        load_checkpoint(path, model, optimizer)
    assert _tree(tmp_path) == sorted(before + ["checkpoint.safetensors"])
    assert not os.path.exists(tmp_path.parent / "escaped")


# ---------------------------------------------------------------- files are data, never code

def test_no_loader_can_run_code_from_a_file():
    """No pickle, no eval/exec, no unsafe YAML anywhere in minilora: every file format is data."""
    import re
    import minilora
    package = os.path.dirname(minilora.__file__)
    forbidden = re.compile(r"\bimport pickle\b|\bpickle\.|allow_pickle\s*=\s*True|torch\.load|yaml\.load\(|"
                           r"yaml\.unsafe_load|(?<![.\w])(?<!def )eval\(|(?<![.\w])exec\(|marshal\.loads")
    hits = []
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    hits += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if forbidden.search(line)]
    assert hits == []


def test_truncated_quant_state_file_raises_a_minilora_error(tmp_path):
    from minilora.quant import load_quantized, quantize_4bit, save_quantized
    packed, state = quantize_4bit(np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16), blocksize=64,
                                  quant_type="nf4", double_quant=False)
    path = tmp_path / "w.safetensors"
    save_quantized(str(path), packed, state)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(MiniloraError):
        load_quantized(str(path))


def test_add_adapter_with_an_unsafe_name_raises_a_minilora_error():
    from minilora.errors import UnsafePathError
    from minilora.lora import LoraConfig, check_adapter_name
    for bad in ("../x", "a/b", "", "_x", "a.b"):
        with pytest.raises(UnsafePathError):
            check_adapter_name(bad)
    assert issubclass(UnsafePathError, ValueError) and LoraConfig  # callers catching ValueError still work
