"""quant/gather.py: the table gather gives the same words whole or in pieces, and the process keeps
the way its timing found faster."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora.quant import gather
from minilora.quant.blockwise import _pair_table
from minilora.quant.codebooks import nf4_code
from minilora.quant.quantize import dequantize_4bit, quantize_4bit


@pytest.fixture(autouse=True)
def fresh_choice():
    saved = dict(gather._CHOICE)
    gather.set_pieces(None)
    yield
    gather._CHOICE.clear()
    gather._CHOICE.update(saved)


def _table():
    return _pair_table(np, np.asarray(nf4_code(), dtype=np.float32))


@given(n=st.sampled_from([0, 1, gather.PIECE - 1, gather.PIECE, gather.PIECE + 1, 3 * gather.PIECE + 7,
                          gather.MIN_BYTES + 5]), seed=st.integers(0, 2**32 - 1))
def test_pieces_and_whole_give_the_same_words(n, seed):
    packed = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    whole, pieces = np.empty(n, np.uint64), np.empty(n, np.uint64)
    gather.gather_words(np, _table(), packed, whole, pieces=False)
    gather.gather_words(np, _table(), packed, pieces, pieces=True)
    assert np.array_equal(whole, pieces) and np.array_equal(whole, _table()[packed])


def test_choose_alternates_the_order_and_keeps_the_faster():
    calls = []

    def timer(name, seconds):
        return lambda: calls.append(name) or seconds
    assert gather.choose(timer("whole", 2.0), timer("pieces", 1.0)) is True
    assert calls == ["whole", "pieces", "pieces", "whole", "whole", "pieces"]
    assert gather.choose(timer("whole", 1.0), timer("pieces", 2.0)) is False


def test_the_choice_is_made_once_on_a_large_input_and_can_be_fixed():
    table = _table()
    small = np.zeros(gather.MIN_BYTES - 1, np.uint8)
    assert gather.use_pieces(np, table, small, np.empty(small.shape[0], np.uint64)) is False
    assert "pieces" not in gather._CHOICE  # too small to tell
    large = np.zeros(gather.MIN_BYTES, np.uint8)
    made = gather.use_pieces(np, table, large, np.empty(large.shape[0], np.uint64))
    assert gather._CHOICE["pieces"] is made
    assert gather.use_pieces(np, table, large, np.empty(large.shape[0], np.uint64)) is made
    assert gather._CHOICE["pieces"] is made
    gather.set_pieces(not made)
    assert gather.use_pieces(np, table, large, np.empty(large.shape[0], np.uint64)) is (not made)
    assert gather._CHOICE["pieces"] is (not made)


def test_dequantize_gives_the_same_bits_whichever_way_it_gathers():
    w = np.random.default_rng(0).standard_normal((512, 1024), dtype=np.float32)  # 256 KiB packed >= MIN_BYTES
    packed, state = quantize_4bit(w, 64, "nf4", True)
    out = {}
    for pieces in (False, True):
        gather.set_pieces(pieces)
        out[pieces] = dequantize_4bit(packed, state).copy()
    assert np.array_equal(out[False], out[True])
