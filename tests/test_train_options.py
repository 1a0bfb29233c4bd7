"""Training options of the loop: gradient accumulation is exact, schedules, epochs, the shared NLL."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.data import Batches, CharTokenizer, encode_example, in_order, task_splits, text_windows
from minilora.evaluate import mean_nll
from minilora.finetune_config import FinetuneConfig
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer, lm_loss
from minilora.optim import SGD, LRScheduler
from minilora.optim.schedule import linear_with_warmup
from minilora.tensor import no_grad
from minilora.train import TrainConfig, train, trained_tokens

TOK = CharTokenizer()
TRAIN_SET = task_splits("sort", n_train=64, n_eval=1, seed=4)[0]
ENCODED = [encode_example(TOK, p, c, 31) for p, c in TRAIN_SET]  # 4 to 7 digits: token counts differ


def _model(seed=0):
    config = ModelConfig(vocab_size=TOK.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32)
    return Transformer(config, seed=seed)


def _run(batch_size, accumulation, steps, seed):
    model = _model(seed)
    optimizer = SGD(model.parameters(), lr=0.5, momentum=0.9)
    history = train(model, optimizer, Batches(ENCODED, batch_size, TOK.pad_token_id, seed=seed),
                    TrainConfig(steps=steps, grad_accumulation_steps=accumulation, progress=False))
    return model, history


@given(k=st.integers(2, 4), b=st.integers(1, 4), steps=st.integers(1, 3), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_k_micro_batches_of_b_equal_one_batch_of_k_times_b(k, b, steps, seed):
    accumulated, hist_acc = _run(b, k, steps, seed)
    whole, hist_whole = _run(k * b, 1, steps, seed)
    for (name, p), (_, q) in zip(accumulated.named_parameters(), whole.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=2e-5, atol=2e-6, err_msg=name)
    for r, s in zip(hist_acc.steps, hist_whole.steps):
        assert r["trained_tokens"] == s["trained_tokens"]
        assert r["loss"] == pytest.approx(s["loss"], rel=1e-5)


def test_accumulated_loss_is_token_weighted_not_a_mean_of_means():
    batches = Batches(ENCODED, 2, TOK.pad_token_id, seed=1)
    micro = [batches(0), batches(1)]
    counts = [trained_tokens(labels) for _, labels in micro]
    assert counts[0] != counts[1]  # otherwise the two normalisations agree
    model = _model(0)
    with no_grad():
        means = [float(lm_loss(model, ids, labels).item()) for ids, labels in micro]
    fresh = _model(0)
    hist = train(fresh, SGD(fresh.parameters(), lr=0.0), lambda i: micro[i],
                 TrainConfig(steps=1, grad_accumulation_steps=2, progress=False))
    weighted = (means[0] * counts[0] + means[1] * counts[1]) / sum(counts)
    assert hist.steps[0]["loss"] == pytest.approx(weighted, rel=1e-6)
    assert abs(weighted - sum(means) / 2) > 1e-4


def test_linear_schedule_warms_up_then_decays_to_min_ratio():
    assert [linear_with_warmup(s, 10, 2) for s in (0, 1)] == [0.5, 1.0]
    assert linear_with_warmup(2, 10, 2) == 1.0 and linear_with_warmup(6, 10, 2) == pytest.approx(0.5)
    assert linear_with_warmup(10, 10, 2, min_ratio=0.1) == pytest.approx(0.1)
    opt = SGD(_model().parameters(), lr=2.0)
    assert LRScheduler(opt, 10, 0, "linear").set_step(5) == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_batches_walk_whole_epochs_and_epochs_give_the_step_count():
    batches = Batches(ENCODED, 8, TOK.pad_token_id, seed=2)
    first = sorted(i for step in range(8) for i in batches.indices(step))  # 64 examples, batch 8
    assert first == list(range(64))
    second = [i for step in range(8, 16) for i in batches.indices(step)]
    assert sorted(second) == list(range(64)) and second != [i for s in range(8) for i in batches.indices(s)]
    assert FinetuneConfig(epochs=2, batch_size=8).total_steps(64) == 16
    assert FinetuneConfig(epochs=1.5, batch_size=8, grad_accumulation_steps=2).total_steps(64) == 6
    assert FinetuneConfig(epochs=1, batch_size=5).total_steps(64) == 13  # rounded up
    assert FinetuneConfig().total_steps(64) == 60 and FinetuneConfig(steps=7).total_steps(64) == 7
    assert FinetuneConfig(steps=95).evaluation_interval(95) == 10 and FinetuneConfig().evaluation_interval(3) == 1


def test_mean_nll_is_the_token_weighted_mean_over_every_batch():
    model = _model(3)
    encoded = ENCODED[:10]
    batches = in_order(encoded, 4, TOK.pad_token_id)
    assert [len(ids) for ids, _ in batches] == [4, 4, 2]
    result = mean_nll(model, batches)
    total, count = 0.0, 0
    with no_grad():
        for ids, labels in encoded:  # one example at a time: sum of -log p over its scored tokens
            logits = model(np.asarray([ids])).numpy()[0].astype(np.float64)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            for t, label in enumerate(labels):
                if label != -100:
                    total, count = total - logp[t, label], count + 1
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert model.training is True  # a fresh model trains; mean_nll gave it back in that mode
    assert mean_nll(model, in_order(encoded, 4, TOK.pad_token_id, max_batches=1))["tokens"] < count


def test_text_windows_score_every_token_after_the_first_once():
    tokens = list(range(100, 123))
    windows = text_windows(tokens, 5)
    assert [t for _, labels in windows for t in labels] == tokens[1:]
    assert all(ids[1:] == labels[:-1] for ids, labels in windows) and max(len(i) for i, _ in windows) == 5
