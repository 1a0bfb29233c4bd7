"""Tiled lm_head + cross entropy equals cross_entropy(h W^T, t): loss and both gradients, any tiling."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend, kernels
from minilora.lm_head_loss import LINEAR_CROSS_ENTROPY, linear_cross_entropy
from minilora.models import Transformer, lm_loss
from minilora.models.config import ModelConfig
from minilora.tensor import Tensor, no_grad
from minilora.testing import gradcheck


def _problem(xp, seed, n, c, v, ignored, dtype):
    rng = np.random.default_rng(seed)
    h = backend.from_numpy(rng.standard_normal((n, c)).astype(dtype), xp)
    w = backend.from_numpy((rng.standard_normal((v, c)) * 2).astype(dtype), xp)
    t = rng.integers(0, v, n)
    t[rng.random(n) < ignored] = -100
    return h, w, backend.from_numpy(t, xp)


def _loss_and_grads(fn, h, w, t):
    hh, ww = Tensor(h, requires_grad=True), Tensor(w, requires_grad=True)
    loss = fn(hh, ww, t)
    loss.backward(loss.xp.asarray(0.75, dtype=loss.dtype))  # a cotangent other than 1 is scaled through
    return [backend.to_numpy(a) for a in (loss.data, hh.grad, ww.grad)]


def _unchunked(h, w, t):
    return kernels.cross_entropy(kernels.linear(h, w), t)


@given(n=st.integers(1, 13), c=st.integers(1, 6), v=st.integers(1, 9), chunk=st.integers(1, 16),
       classes=st.integers(1, 12), ignored=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_chunked_equals_unchunked_in_float32(xp, n, c, v, chunk, classes, ignored, seed):
    h, w, t = _problem(xp, seed, n, c, v, ignored, np.float32)
    ref = _loss_and_grads(_unchunked, h, w, t)
    got = _loss_and_grads(lambda a, b, y: linear_cross_entropy(a, b, y, chunk_rows=chunk, chunk_classes=classes),
                          h, w, t)
    for name, a, b in zip(("loss", "grad h", "grad W"), got, ref):
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=name)


def test_gradcheck_float64():
    h, w, t = _problem(np, 3, 7, 4, 11, 0.2, np.float64)
    gradcheck(lambda a, b: linear_cross_entropy(a, b, t, chunk_rows=3, chunk_classes=4), Tensor(h, requires_grad=True),
              Tensor(w, requires_grad=True), rtol=1e-6)


def test_only_wanted_gradients_are_computed():
    h, w, t = _problem(np, 4, 6, 3, 5, 0.0, np.float64)
    hh, ww = Tensor(h, requires_grad=True), Tensor(w)  # a frozen head (tied embeddings under LoRA)
    loss = linear_cross_entropy(hh, ww, t, chunk_rows=4)
    loss.backward()
    assert hh.grad is not None and ww.grad is None
    with no_grad():
        assert not linear_cross_entropy(hh, Tensor(w, requires_grad=True), t).requires_grad


@pytest.mark.parametrize("needs", [(True, False, False), (True, True, False)])
def test_chunk_memory_is_about_one_tile_not_the_logits(needs):
    """One (R, Vj) float32 tile (exp in place) and gh (and gW): about 1 / 16 of the whole logits."""
    n, c, v, chunk, classes = 512, 16, 4096, 128, 512
    h, w, t = _problem(np, 5, n, c, v, 0.0, np.float32)
    tracemalloc.start()
    try:
        loss, vjp = LINEAR_CROSS_ENTROPY.forward(h, w, t, chunk_rows=chunk, chunk_classes=classes, needs=needs)
        vjp(np.float32(1.0), needs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    logits_bytes = n * v * 4
    assert peak < 0.12 * logits_bytes, f"peak {peak / logits_bytes:.2f} of the whole (N, V) logits"


@pytest.mark.parametrize("name", ["chunk_rows", "chunk_classes"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_chunk_sizes(name, bad):
    h, w, t = _problem(np, 0, 3, 2, 4, 0.0, np.float32)
    with pytest.raises(ValueError, match=name):
        linear_cross_entropy(Tensor(h), Tensor(w), t, **{name: bad})


def test_bad_targets():
    h, w, _ = _problem(np, 0, 3, 2, 4, 0.0, np.float32)
    with pytest.raises(ValueError, match="targets must lie"):
        linear_cross_entropy(Tensor(h), Tensor(w), np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="targets must be integers of shape"):
        linear_cross_entropy(Tensor(h), Tensor(w), np.array([0, 1]))


@pytest.mark.parametrize("tied", [True, False])
def test_lm_loss_chunked_matches_whole_logits(tied):
    config = ModelConfig(style="llama", vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tied)
    ids = np.random.default_rng(0).integers(0, 50, (2, 9))
    targets = ids.copy()
    targets[0, :3] = -100
    results = []
    for chunk in (None, 5):
        model = Transformer(config, seed=0)
        loss = lm_loss(model, ids, targets, chunk_rows=chunk)
        loss.backward()
        results.append((loss.item(), {k: p.grad for k, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_bench_memory_tile_sweep_runs_every_tile():
    """bench/bench_memory.py's sweep calls the kernel as it is now (it once passed a keyword the op had lost)."""
    from bench.bench_memory import sweep_tiles
    rows = sweep_tiles(24, 4, 40, ((8, None), (8, 16), None), repeats=1)
    assert [(r["chunk_rows"], r["chunk_classes"]) for r in rows] == [(8, "all"), (8, 16), ("whole", "whole")]
    assert all(r["seconds"] > 0 and r["traced_peak_MiB"] > 0 for r in rows)


def test_a_confident_row_never_gets_a_negative_loss():
    """A row's loss is (max z - z[t]) + log sum exp(z - max z), both terms from the same tile products
    and >= 0, so a row the model predicts with near certainty keeps its small loss to float32's digits
    near 1 and never goes below zero. Summed as (max + log sum) - z[t], or with z[t] recomputed as
    h . W[t], it would be off by about one unit in the last place of |z| ~ 100 (7.6e-6) either way."""
    rng = np.random.default_rng(7)
    c, v = 32, 1000
    w = rng.standard_normal((v, c)).astype(np.float32)
    for row in range(24):
        t = rng.integers(0, v, 1)
        h = (w[t] * 3.0 + rng.standard_normal((1, c)) * 0.01).astype(np.float32)  # z[t] ~ 100, the rest < 60
        z = h.astype(np.float64) @ w.T.astype(np.float64)  # (1, V)
        exact = float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[0, t[0]])  # float64, ~0 to 1e-5
        for classes in (v, 128, 300):
            loss = float(linear_cross_entropy(Tensor(h), Tensor(w), t, chunk_classes=classes).data)
            assert loss >= 0.0 and abs(loss - exact) <= 2e-7 + 0.1 * exact, (row, classes, loss, exact)
