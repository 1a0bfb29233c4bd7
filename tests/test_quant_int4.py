"""The Int4 codebook: 16 evenly spaced absmax levels, usable wherever NF4 and FP4 are."""
from __future__ import annotations

import numpy as np

from minilora.quant import dequantize_4bit, get_code, quantize_4bit


def test_int4_code_is_16_evenly_spaced_levels_from_minus_one_to_one():
    code = np.array(get_code("int4"), dtype=np.float64)
    assert code.shape == (16,) and code[0] == -1.0 and code[-1] == 1.0
    np.testing.assert_allclose(np.diff(code), 2.0 / 15.0, rtol=1e-6)
    np.testing.assert_allclose(code, -code[::-1], atol=1e-7)  # symmetric, so no exact zero


def test_int4_round_trip_error_is_at_most_half_a_step_of_each_blocks_absmax(xp, to_np):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 128)).astype(np.float32)
    packed, state = quantize_4bit(xp.asarray(w), blocksize=64, quant_type="int4", double_quant=False)
    back = to_np(dequantize_4bit(packed, state))
    blocks, back_blocks = w.reshape(-1, 64), back.reshape(-1, 64)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    assert (np.abs(back_blocks - blocks) <= absmax / 15.0 * (1 + 1e-5)).all()
    np.testing.assert_allclose(np.abs(back_blocks).max(axis=1, keepdims=True), absmax, rtol=1e-6)  # +-absmax exact
    levels = np.unique(np.round(back_blocks[0] / absmax[0] * 7.5 + 7.5, 4))
    assert set(levels) <= set(float(k) for k in range(16))  # every value on the grid


def test_int4_differs_from_nf4_on_the_same_weights(xp, to_np):
    w = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    outs = {t: to_np(dequantize_4bit(*quantize_4bit(xp.asarray(w), quant_type=t, double_quant=True)))
            for t in ("int4", "nf4")}
    assert not np.array_equal(outs["int4"], outs["nf4"])
