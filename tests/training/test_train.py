"""The training loop: learning happens, non-finite steps are skipped and counted, stop after K bad steps."""
import numpy as np
import pytest

from minilora.data import Batches, CharTokenizer, encode_example, task_splits
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer
from minilora.nn import Module
from minilora.optim import AdamW
from minilora.train import TrainConfig, TrainingStopped, train


def _setup(seed=0):
    tok = CharTokenizer()
    train_set, _ = task_splits("sort", n_train=200, n_eval=5, seed=seed)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32)
    model = Transformer(config, seed=seed)
    batches = Batches([encode_example(tok, p, c, 31) for p, c in train_set], 8, tok.pad_token_id, seed=seed)
    return model, batches


class Faulty(Module):
    """Multiplies the logits by NaN on the calls listed in ``bad``."""

    def __init__(self, inner, bad):
        self.inner, self.bad, self.calls = inner, set(bad), 0
        self.config = inner.config

    def forward(self, ids, cache=None):
        out = self.inner(ids, cache=cache)
        self.calls += 1
        return out * float("nan") if self.calls - 1 in self.bad else out


def test_loss_goes_down():
    model, batches = _setup()
    history = train(model, AdamW(model.parameters(), lr=1e-2), batches, TrainConfig(steps=40, progress=False))
    first = np.mean([r["loss"] for r in history.steps[:5]])
    last = np.mean([r["loss"] for r in history.steps[-5:]])
    assert last < 0.7 * first


def test_non_finite_steps_are_skipped_counted_and_leave_parameters_untouched():
    model, batches = _setup()
    faulty = Faulty(model, bad={2, 3})
    snapshots = {}

    def watching(step):
        snapshots[step] = {n: p.data.copy() for n, p in model.named_parameters()}
        return batches(step)
    history = train(faulty, AdamW(model.parameters(), lr=1e-2), watching, TrainConfig(steps=6, progress=False))
    assert history.bad_steps == [2, 3]
    assert [r["step"] for r in history.steps] == [0, 1, 4, 5]
    for name, before in snapshots[2].items():  # step 2 and 3 skipped: params at step 4 == at step 2
        np.testing.assert_array_equal(snapshots[4][name], before)
    assert any(not np.array_equal(snapshots[5][n], snapshots[4][n]) for n in snapshots[4])


def test_too_many_consecutive_bad_steps_stop_training_with_a_clear_message():
    model, batches = _setup()
    start = {n: p.data.copy() for n, p in model.named_parameters()}
    faulty = Faulty(model, bad=set(range(100)))
    with pytest.raises(TrainingStopped, match="3 consecutive steps"):
        train(faulty, AdamW(model.parameters(), lr=1e-2), batches,
              TrainConfig(steps=10, max_bad_steps=3, progress=False))
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, start[n])


@pytest.mark.parametrize("field,value", [("steps", 0), ("warmup_steps", -1), ("max_grad_norm", 0.0),
                                         ("eval_every", 1.5)])
def test_bad_train_config_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_training_is_deterministic():
    results = []
    for _ in range(2):
        model, batches = _setup(seed=4)
        train(model, AdamW(model.parameters(), lr=1e-2), batches, TrainConfig(steps=5, progress=False))
        results.append({n: p.data.copy() for n, p in model.named_parameters()})
    for n in results[0]:
        np.testing.assert_array_equal(results[0][n], results[1][n])
