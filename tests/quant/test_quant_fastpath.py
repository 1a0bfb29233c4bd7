"""The NumPy dequantize fast path, the shared dequantize buffer and the keep-for-backward setting."""
from __future__ import annotations

import numpy as np
import pytest

from minilora import backend, nn
from minilora.models import checkpoint
from minilora.models.checkpoint import is_recomputing
from minilora.quant import Linear4bit, dequantize_4bit, quantize_4bit
from minilora.quant import linear4bit, threaded
from minilora.quant.blockwise import byte_table, dequantize_blocks_4bit, to_blocks
from minilora.quant.quantize import dequantized_absmax
from minilora.tensor import Tensor


def _portable(packed, state):
    """The row-wise gather of the (256, 2) table, as every non-NumPy backend runs it."""
    n = state.numel
    values = np.take(byte_table(np, state.code), packed, axis=0).reshape(-1)[:n]
    return (to_blocks(np, values, state.blocksize) * dequantized_absmax(state)[:, None]).reshape(-1)[:n]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape,blocksize", [((64, 96), 64), ((33, 128), 128), ((7, 9), 64), ((5, 13), 32)])
def test_fast_path_equals_the_portable_gather_bit_for_bit(quant_type, double_quant, shape, blocksize):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    packed, state = quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    got = dequantize_4bit(packed, state)
    assert got.shape == shape and got.dtype == np.float32
    assert got.reshape(-1).tobytes() == _portable(packed, state).tobytes()


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_threads_split_whole_blocks_and_give_the_same_bits(monkeypatch, workers):
    w = np.random.default_rng(2).standard_normal((37, 128)).astype(np.float32)  # 74 blocks of 64
    packed, state = quantize_4bit(w, double_quant=True)
    one = dequantize_4bit(packed, state)
    seen = []
    real = threaded.block_ranges
    monkeypatch.setattr(threaded, "worker_count", lambda n_values: workers)
    monkeypatch.setattr(threaded, "block_ranges", lambda n, parts: seen.append(real(n, parts)) or seen[-1])
    got = dequantize_4bit(packed, state)
    assert got.tobytes() == one.tobytes() == _portable(packed, state).reshape(w.shape).tobytes()
    assert len(seen[0]) == workers and seen[0][0][0] == 0 and seen[0][-1][1] == 74
    assert all(hi == lo for (_, hi), (lo, _) in zip(seen[0], seen[0][1:]))  # contiguous, no overlap


def test_worker_count_stays_at_one_for_small_weights_one_blas_thread_or_a_crowded_machine(monkeypatch):
    monkeypatch.setattr(threaded, "usable_cores", lambda: 4)
    monkeypatch.setattr(threaded, "machine_is_crowded", lambda cores: False)
    monkeypatch.setattr(threaded, "blas_threads", lambda: 2)
    assert threaded.worker_count(threaded.MIN_VALUES - 1) == 1
    assert threaded.worker_count(threaded.MIN_VALUES) == 2
    monkeypatch.setattr(threaded, "blas_threads", lambda: 8)
    assert threaded.worker_count(1 << 24) == 4  # never more threads than cores
    monkeypatch.setattr(threaded, "blas_threads", lambda: None)  # BLAS count unknown: stay single
    assert threaded.worker_count(1 << 24) == 1
    monkeypatch.setattr(threaded, "blas_threads", lambda: 2)
    monkeypatch.setattr(threaded, "machine_is_crowded", lambda cores: True)
    assert threaded.worker_count(1 << 24) == 1


def test_a_failing_part_raises_in_the_caller():
    def part(lo, hi):
        if lo > 0:
            raise RuntimeError(f"part {lo}")
    with pytest.raises(RuntimeError, match="part"):
        threaded.over_blocks(part, 10, 10, workers=2)


def test_out_buffer_is_written_and_checked():
    w = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    packed, state = quantize_4bit(w)
    buf = np.full(w.size, np.nan, np.float32)
    got = dequantize_4bit(packed, state, out=buf)
    assert np.shares_memory(got, buf) and got.tobytes() == dequantize_4bit(packed, state).tobytes()
    with pytest.raises(ValueError, match="out must be float32"):
        dequantize_4bit(packed, state, out=np.empty(w.size - 1, np.float32))
    short = np.empty(15, np.float32)  # the portable path (odd count, short block) writes into out too
    p2, s2 = quantize_4bit(w.reshape(-1)[:15])
    assert dequantize_blocks_4bit(np, p2, dequantized_absmax(s2), 15, 64, s2.code, out=short) is short


def _qlora_grads(mode, use_checkpoint):
    old = linear4bit.set_keep_dequantized(mode)
    try:
        rng = backend.Random(0, xp=np)
        layers = [Linear4bit.from_linear(nn.Linear(64, 128, rng=rng)), Linear4bit.from_linear(nn.Linear(128, 64, rng=rng))]
        x = Tensor(np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32), requires_grad=True)

        def block(h):
            return layers[1](layers[0](h) * 0.5)
        y = checkpoint(block, x) if use_checkpoint else block(x)
        (y * y).sum().backward()
        return x.grad
    finally:
        linear4bit.set_keep_dequantized(old)


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_keep_modes_give_identical_gradients(use_checkpoint):
    grads = [_qlora_grads(mode, use_checkpoint) for mode in linear4bit.KEEP_MODES]
    for g in grads[1:]:
        assert g.tobytes() == grads[0].tobytes()


def test_recompute_mode_keeps_weights_only_inside_the_recompute(monkeypatch):
    calls = []
    real = linear4bit._dequantized_weight

    def spy(packed, state, dtype, fresh=True):
        calls.append((fresh, is_recomputing()))
        return real(packed, state, dtype, fresh)
    monkeypatch.setattr(linear4bit, "_dequantized_weight", spy)
    layer = Linear4bit.from_linear(nn.Linear(64, 32, rng=backend.Random(0, xp=np)))
    x = Tensor(np.ones((2, 64), np.float32), requires_grad=True)
    checkpoint(layer, x).sum().backward()
    # no-grad forward: buffer; recompute: kept (fresh); backward: the kept weight, no third dequantize
    assert calls == [(False, False), (True, True)]
    calls.clear()
    layer(x).sum().backward()  # no checkpoint: buffer in forward, dequantized again in backward
    assert calls == [(False, False), (False, False)]


def test_a_4bit_product_without_its_value_dequantizes_only_for_backward(monkeypatch):
    """value=False: zeros out, no dequantize or product in forward, the same gx bits in backward."""
    layer = Linear4bit.from_linear(nn.Linear(64, 32, rng=backend.Random(0, xp=np)))
    g = np.random.default_rng(4).standard_normal((2, 32)).astype(np.float32)
    calls, grads = [], []
    real = linear4bit._dequantized_weight
    monkeypatch.setattr(linear4bit, "_dequantized_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    for value in (True, False):
        x = Tensor(np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32), requires_grad=True)
        y = layer(x, value=value)
        assert len(calls) == (1 if value else 0) and y.shape == (2, 32)
        y.backward(g)
        grads.append(x.grad.tobytes())
        calls.clear()
    assert grads[0] == grads[1]


def test_bad_keep_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        linear4bit.set_keep_dequantized("sometimes")
