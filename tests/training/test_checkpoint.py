"""Checkpoint files: a file that does not fit is refused and changes nothing, leftovers are cleaned.

Exact resume lives in test_resume.py."""
import numpy as np
import pytest

from minilora.checkpoint import load_checkpoint, save_checkpoint
from minilora.errors import FileFormatError
from minilora.lora import LoraConfig, get_lora_model
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer
from minilora.optim import AdamW

from tiny_run import tiny_run, trainable_arrays


def test_checkpoint_that_does_not_fit_the_model_is_rejected_and_changes_nothing(tmp_path):
    model, opt, _ = tiny_run()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, 0)
    other = get_lora_model(Transformer(ModelConfig(vocab_size=103, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=2, num_attention_heads=2), seed=1),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    before = trainable_arrays(other)
    with pytest.raises(FileFormatError, match="expected shape"):
        load_checkpoint(path, other, AdamW([p for p in other.parameters() if p.requires_grad]))
    for name, value in before.items():
        np.testing.assert_array_equal(trainable_arrays(other)[name], value)


def test_a_file_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path):
    from minilora.io import save_safetensors
    path = tmp_path / "other.safetensors"
    save_safetensors(path, {"x": np.zeros(3, dtype=np.float32)})
    model, opt, _ = tiny_run()
    with pytest.raises(FileFormatError, match="other.safetensors.*not a minilora checkpoint"):
        load_checkpoint(path, model, opt)


def test_a_complete_save_removes_temporaries_that_a_killed_writer_left(tmp_path):
    model, opt, _ = tiny_run()
    path = tmp_path / "checkpoint.safetensors"
    leftover = tmp_path / ".checkpoint.safetensors.abc123.tmp"  # the name pattern io/atomic.py uses
    leftover.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".other.safetensors.abc123.tmp"
    unrelated.write_bytes(b"not ours")
    save_checkpoint(path, model, opt, 0)
    assert path.is_file() and not leftover.exists() and unrelated.exists()
    assert load_checkpoint(path, model, opt)["step"] == 0
