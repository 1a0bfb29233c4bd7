"""Every file minilora writes gets the mode a plain open() gives: 0666 minus the umask (0644 under umask 022).

The temporary file of the atomic writer used to be made by mkstemp (0600), and the rename kept that
mode, so a merged model could not be read by another user or a service.
"""
from __future__ import annotations

import os
import stat

import pytest

from gguf_fixtures import write_tiny_llama_gguf
from minilora import cli
from minilora.finetune import run_finetune
from minilora.finetune_config import FinetuneConfig
from minilora.io import atomic_open, atomic_path, write_text_atomic


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one."""
    previous = os.umask(0o022)

    def set_mask(value):
        os.umask(value)
    yield set_mask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _modes(folder) -> dict:
    return {os.path.relpath(os.path.join(root, f), folder): _mode(os.path.join(root, f))
            for root, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_atomic_writer_gives_open_s_mode(tmp_path, umask, mask, expected):
    umask(mask)
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    write_text_atomic(tmp_path / "text", "x")
    with atomic_open(tmp_path / "binary", "wb") as f:
        f.write(b"x")
    with atomic_path(tmp_path / "named") as tmp:
        with open(tmp, "w") as f:
            f.write("x")
    assert _modes(tmp_path) == {"plain": expected, "text": expected, "binary": expected, "named": expected}


def test_finetune_outputs_merged_model_and_gguf_are_0644_under_umask_022(tmp_path, umask):
    cfg = FinetuneConfig(model="tiny", data="sort", steps=2, save_every=1, eval_examples=2, n_train=8,
                         progress=False, out=str(tmp_path / "run"))
    run_finetune(cfg, log=lambda line: None)
    written = _modes(tmp_path / "run")
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "checkpoint.safetensors",
                 "history.json", "summary.json"):
        assert written.pop(name) == 0o644, name
    assert set(written.values()) <= {0o644}, written  # loss.png when matplotlib is installed

    write_tiny_llama_gguf(tmp_path / "base.gguf")
    from minilora.io import load_pretrained
    from minilora.lora import LoraConfig, get_lora_model, save_adapter
    save_adapter(get_lora_model(load_pretrained(tmp_path / "base.gguf")[0], LoraConfig(r=2, target_modules=["q_proj"])),
                 tmp_path / "adapter")
    assert cli.main(["merge", "--model", str(tmp_path / "base.gguf"), "--adapter", str(tmp_path / "adapter"),
                     "--out", str(tmp_path / "merged"), "--gguf", str(tmp_path / "merged.gguf")]) == 0
    merged = _modes(tmp_path / "merged")
    assert set(merged) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert set(merged.values()) == {0o644}, merged
    assert _mode(tmp_path / "merged.gguf") == 0o644
