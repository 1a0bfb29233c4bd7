"""Checkpoints: exact resume (parameters, optimizer, dropout RNG, data order) and clear errors."""
import numpy as np
import pytest

from minilora.checkpoint import load_checkpoint, save_checkpoint
from minilora.data import Batches, CharTokenizer, encode_example, task_splits
from minilora.errors import FileFormatError
from minilora.lora import LoraConfig, get_lora_model
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer
from minilora.optim import AdamW
from minilora.train import History, TrainConfig, train


def _setup(adapter=None):
    """A tiny adapted model, its optimizer and batches; adapter: the adapter config (default LoRA r=4)."""
    tok = CharTokenizer()
    train_set, _ = task_splits("sort", n_train=100, n_eval=5)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32)
    adapter = adapter or LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"])
    model = get_lora_model(Transformer(config, seed=1), adapter, seed=2)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    batches = Batches([encode_example(tok, p, c, 31) for p, c in train_set], 4, tok.pad_token_id, seed=3)
    return model, optimizer, batches


def _params(model):
    return {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=8, progress=False)
    model, opt, batches = _setup()
    full = train(model, opt, batches, cfg)
    expected = _params(model)

    model, opt, batches = _setup()
    path = tmp_path / "ckpt.safetensors"

    def save_at(step, history):
        if step == 3:
            save_checkpoint(path, model, opt, step, history)
    train(model, opt, batches, TrainConfig(steps=8, save_every=4, progress=False), save_checkpoint=save_at)

    model, opt, batches = _setup()  # a fresh process would start like this
    state = load_checkpoint(path, model, opt)
    assert state["step"] == 3
    history = History(**state["history"])
    resumed = train(model, opt, batches, cfg, start_step=state["step"] + 1, history=history)
    for name, value in expected.items():
        np.testing.assert_array_equal(_params(model)[name], value, err_msg=name)
    assert [r["loss"] for r in resumed.steps] == [r["loss"] for r in full.steps]


def test_checkpoint_that_does_not_fit_the_model_is_rejected_and_changes_nothing(tmp_path):
    model, opt, _ = _setup()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, 0)
    other = get_lora_model(Transformer(ModelConfig(vocab_size=103, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=2, num_attention_heads=2), seed=1),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    before = _params(other)
    with pytest.raises(FileFormatError, match="expected shape"):
        load_checkpoint(path, other, AdamW([p for p in other.parameters() if p.requires_grad]))
    for name, value in before.items():
        np.testing.assert_array_equal(_params(other)[name], value)


def test_a_file_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path):
    from minilora.io import save_safetensors
    path = tmp_path / "other.safetensors"
    save_safetensors(path, {"x": np.zeros(3, dtype=np.float32)})
    model, opt, _ = _setup()
    with pytest.raises(FileFormatError, match="other.safetensors.*not a minilora checkpoint"):
        load_checkpoint(path, model, opt)


def test_adalora_resume_masks_exactly_like_an_uninterrupted_run(tmp_path):
    from minilora.lora import AdaLoraConfig

    def setup():
        return _setup(AdaLoraConfig(init_r=4, target_r=2, total_step=10, tinit=2, tfinal=2,
                                    target_modules=["q_proj", "v_proj"]))
    cfg = TrainConfig(steps=10, progress=False)
    model, opt, batches = setup()
    train(model, opt, batches, cfg)
    expected, pattern = _params(model), model.peft_config["default"].rank_pattern
    model, opt, batches = setup()
    path = tmp_path / "ckpt.safetensors"
    train(model, opt, batches, TrainConfig(steps=10, save_every=1, progress=False),
          save_checkpoint=lambda step, h: step == 4 and save_checkpoint(path, model, opt, step, h))
    model, opt, batches = setup()
    state = load_checkpoint(path, model, opt)
    train(model, opt, batches, cfg, start_step=state["step"] + 1, history=History(**state["history"]))
    assert model.peft_config["default"].rank_pattern == pattern
    for name, value in expected.items():
        np.testing.assert_array_equal(_params(model)[name], value, err_msg=name)


def test_a_complete_save_removes_temporaries_that_a_killed_writer_left(tmp_path):
    model, opt, _ = _setup()
    path = tmp_path / "checkpoint.safetensors"
    leftover = tmp_path / ".checkpoint.safetensors.abc123.tmp"  # the name pattern io/atomic.py uses
    leftover.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".other.safetensors.abc123.tmp"
    unrelated.write_bytes(b"not ours")
    save_checkpoint(path, model, opt, 0)
    assert path.is_file() and not leftover.exists() and unrelated.exists()
    assert load_checkpoint(path, model, opt)["step"] == 0
