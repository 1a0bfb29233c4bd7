"""4-bit quantization: codebooks, bitsandbytes' bytes, error bands, properties, QuantState files."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minilora import backend
from minilora.quant import (QuantState, dequantize_4bit, dequantized_absmax, dynamic_map, fp4_code, get_code,
                            load_quantized, nf4_code, quantize_4bit, save_quantized)
from minilora.quant.blockwise import unpack_nibbles
from minilora.quant.codebooks import linspace_f32

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
NF4_TABLE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]
SIN_HEX = ("7ef9104efc202cfe4019fe7106efa103dfd301bfe5017ef9104efc202cfd4019fe7006efa103dfd301bfe5017ef8104efb"
           "202cfd4019fe7006efa103dfc201bf")


def host(a):
    return np.asarray(backend.to_numpy(a))


# ---------------------------------------------------------------- codebooks
def test_nf4_derivation_reproduces_the_table_bit_for_bit():
    derived = np.array(nf4_code(), dtype=np.float32)
    assert derived.tobytes() == np.array(NF4_TABLE, dtype=np.float32).tobytes()
    assert derived[7] == 0.0 and (derived[:7] < 0).all() and (derived[8:] > 0).all()  # 7 negative, 8 positive


def test_nf4_quantiles_agree_with_scipy():
    norm = pytest.importorskip("scipy.stats").norm
    pos = norm.ppf(linspace_f32(0.9677083, 0.5, 9)[:-1]).astype(np.float32)
    neg = (-norm.ppf(linspace_f32(0.9677083, 0.5, 8)[:-1])).astype(np.float32)
    values = np.sort(np.concatenate([pos, [0.0], neg]).astype(np.float32))
    assert ((values / values.max()).astype(np.float32) == np.array(NF4_TABLE, dtype=np.float32)).all()


def test_fp4_table_in_code_order():
    raw = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3]
    assert np.array(fp4_code(), np.float32).tobytes() == (np.array(raw, np.float32) / np.float32(12)).tobytes()


def test_dynamic_map_matches_bitsandbytes():
    expected = np.array(json.loads((FIXTURES / "bnb_dynamic_map_signed.json").read_text()), dtype=np.float32)
    derived = np.array(dynamic_map(signed=True), dtype=np.float32)
    assert derived.tobytes() == expected.tobytes()
    assert derived[0] == np.float32(-0.99296874) and derived[-1] == 1.0 and (np.diff(derived) > 0).all()


def test_get_code_rejects_unknown_type():
    with pytest.raises(ValueError, match="quant_type"):
        get_code("int8")


# ---------------------------------------------------------------- golden bytes
def test_golden_nf4_table_packs_to_0123456789abcdef(xp):
    x = xp.asarray(NF4_TABLE, dtype=xp.float32)
    packed, state = quantize_4bit(x, blocksize=64, quant_type="nf4", double_quant=False)
    assert host(packed).tobytes().hex() == "0123456789abcdef"
    assert host(state.absmax).tolist() == [1.0]
    assert host(dequantize_4bit(packed, state)).tobytes() == np.array(NF4_TABLE, np.float32).tobytes()


def test_golden_sin_vector(xp):
    x = xp.asarray(np.sin(np.arange(128)).astype(np.float32))
    packed, state = quantize_4bit(x, blocksize=64, quant_type="nf4", double_quant=False)
    assert host(packed).tobytes().hex() == SIN_HEX
    assert host(state.absmax).tolist() == [0.9999902248382568, 0.9995201826095581]


def _bnb_cases():
    from safetensors import safe_open
    from safetensors.numpy import load_file
    path = FIXTURES / "bnb_quantize_4bit_cases.safetensors"
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    return [(name, json.loads(m), tensors) for name, m in sorted(meta.items()) if name != "source"]


@pytest.mark.parametrize("name, meta, tensors", _bnb_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bytes_match_bitsandbytes(xp, name, meta, tensors):
    """Cases quantized by bitsandbytes 0.50.2 (zero block, odd sizes, transposed, values on midpoints)."""
    x = xp.asarray(tensors[f"{name}.x"])
    packed, state = quantize_4bit(x, meta["blocksize"], meta["quant_type"], meta["double_quant"])
    assert host(packed).tobytes() == tensors[f"{name}.packed"].tobytes()
    assert host(state.absmax).tobytes() == tensors[f"{name}.absmax"].tobytes()
    if meta["double_quant"]:
        assert np.float32(state.offset) == tensors[f"{name}.offset"][0]
        assert host(state.state2.absmax).tobytes() == tensors[f"{name}.absmax2"].tobytes()
        assert host(dequantized_absmax(state)).tobytes() == tensors[f"{name}.dequantized_absmax"].tobytes()


# ---------------------------------------------------------------- error bands (bitsandbytes' test numbers)
@pytest.fixture(scope="module")
def randn_1024():
    return np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)


def _errors(x, quant_type, double_quant):
    packed, state = quantize_4bit(x, blocksize=64, quant_type=quant_type, double_quant=double_quant)
    err = np.abs(x - dequantize_4bit(packed, state))
    return float(err.mean()), float((err / (np.abs(x) + 1e-8)).mean())


def test_error_bands_nf4_fp4_and_double_quant(randn_1024):
    nf4_abs, nf4_rel = _errors(randn_1024, "nf4", False)
    assert 0.0724 <= nf4_abs <= 0.0732 and 0.2020 <= nf4_rel <= 0.2045
    fp4_abs, _ = _errors(randn_1024, "fp4", False)
    assert 0.0960 <= fp4_abs <= 0.0970
    dq_abs, _ = _errors(randn_1024, "nf4", True)
    assert 0.0 <= dq_abs - nf4_abs < 1e-3


def test_quantized_matmul_error():
    rng = np.random.default_rng(1)
    n, k = 256, 1024
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((32, k)).astype(np.float32)
    packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", double_quant=True)
    assert float(np.abs(x @ dequantize_4bit(packed, state).T - x @ w.T).mean()) < 0.115


# ---------------------------------------------------------------- properties
def _max_half_gap(quant_type):
    values = np.sort(np.array(get_code(quant_type), np.float64))
    return float(np.max(np.diff(values)) / 2)


cases = st.tuples(st.lists(st.integers(1, 70), min_size=1, max_size=2), st.sampled_from([32, 64, 128]),
                  st.sampled_from(["nf4", "fp4"]), st.booleans(), st.integers(0, 2**31 - 1),
                  st.booleans())


@given(case=cases)
def test_quantize_properties(xp, case):
    shape, blocksize, quant_type, double_quant, seed, transpose = case
    host_x = (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)
    x = xp.asarray(host_x)
    if transpose and len(shape) == 2:  # a non-contiguous view, quantized in its logical (C) order
        x, host_x = x.mT, host_x.T
    n = host_x.size
    packed, state = quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    assert packed.shape == ((n + 1) // 2,) and state.n_blocks == math.ceil(n / blocksize)
    assert state.absmax.shape == (math.ceil(n / blocksize),) and state.shape == host_x.shape
    codes = host(unpack_nibbles(xp, packed, n))
    assert codes.shape == (n,) and codes.max() <= 15
    if not double_quant:
        ref, _ = quantize_4bit(np.ascontiguousarray(host_x), blocksize=blocksize, quant_type=quant_type,
                               double_quant=False)
        assert host(packed).tobytes() == ref.tobytes()  # backends and memory layouts agree
    dq = host(dequantize_4bit(packed, state))
    flat = np.concatenate([host_x.reshape(-1), np.zeros(-n % blocksize, np.float32)])
    true_absmax = np.abs(flat.reshape(-1, blocksize)).max(axis=1)
    used_absmax = host(dequantized_absmax(state))  # == true_absmax without double quantization
    per_block = true_absmax * _max_half_gap(quant_type) + np.abs(true_absmax - used_absmax)
    bound = np.repeat(per_block, blocksize)[:n].reshape(host_x.shape)
    assert (np.abs(host_x - dq) <= bound * (1 + 1e-6) + 1e-30).all()
    again, state2 = quantize_4bit(xp.asarray(dq), blocksize=blocksize, quant_type=quant_type, double_quant=False)
    assert np.array_equal(host(dequantize_4bit(again, state2)), dq)  # dq(q(dq(q(x)))) == dq(q(x))
    if quant_type == "nf4":  # FP4 has +0 and -0: a tiny positive value takes -0, which comes back as +0
        assert host(again).tobytes() == host(quantize_4bit(xp.asarray(dq), blocksize, "nf4", False)[0]).tobytes()
        if not double_quant:
            assert host(again).tobytes() == host(packed).tobytes()  # q(dq(q)) == q


@given(scale=st.floats(1e-3, 1e3), quant_type=st.sampled_from(["nf4", "fp4"]), seed=st.integers(0, 1000))
def test_code_values_times_scale_are_fixed_points(xp, scale, quant_type, seed):
    code = np.array(get_code(quant_type), np.float32)
    picks = np.random.default_rng(seed).integers(0, 16, size=63)
    host_x = (np.concatenate([[1.0], code[picks]]) * np.float32(scale)).astype(np.float32)
    packed, state = quantize_4bit(xp.asarray(host_x), blocksize=64, quant_type=quant_type, double_quant=False)
    assert np.array_equal(host(dequantize_4bit(packed, state)), host_x)


def test_all_zero_blocks_come_back_as_zeros(xp):
    x = np.zeros(200, np.float32)
    x[64:128] = np.linspace(-1, 1, 64)
    for double_quant in (False, True):
        packed, state = quantize_4bit(xp.asarray(x), blocksize=64, double_quant=double_quant)
        dq = host(dequantize_4bit(packed, state))
        assert np.isfinite(dq).all() and (dq[:64] == 0).all() and (dq[128:] == 0).all()


def test_bad_arguments_raise_value_errors(xp):
    x = xp.ones((4, 4), dtype=xp.float32)
    with pytest.raises(ValueError, match="blocksize"):
        quantize_4bit(x, blocksize=48)
    with pytest.raises(ValueError, match="quant_type"):
        quantize_4bit(x, quant_type="int8")
    with pytest.raises(ValueError, match="real floating"):
        quantize_4bit(xp.ones((4,), dtype=xp.int32))
    packed, state = quantize_4bit(x)
    with pytest.raises(ValueError, match="packed must be uint8"):
        dequantize_4bit(packed[:3], state)


def test_float64_input_is_quantized_in_float32_and_restored_as_float64(xp):
    x = xp.asarray(np.random.default_rng(3).standard_normal((8, 16)))
    packed, state = quantize_4bit(x)
    ref, _ = quantize_4bit(xp.astype(x, xp.float32))
    assert host(packed).tobytes() == host(ref).tobytes()
    assert dequantize_4bit(packed, state).dtype == xp.float64


# ---------------------------------------------------------------- QuantState
@pytest.mark.parametrize("double_quant", [False, True])
def test_state_round_trips_through_dict_and_safetensors(xp, tmp_path, double_quant):
    x = xp.asarray(np.random.default_rng(4).standard_normal((40, 50)).astype(np.float32))
    packed, state = quantize_4bit(x, blocksize=128, quant_type="nf4", double_quant=double_quant)
    expected = host(dequantize_4bit(packed, state))
    for packed_meta in (False, True):
        again = QuantState.from_dict(state.to_dict(packed=packed_meta))
        assert host(dequantize_4bit(packed, again)).tobytes() == expected.tobytes()
    meta_key = [k for k in state.to_dict(packed=True) if k.startswith("quant_state.")]
    assert meta_key == ["quant_state.bitsandbytes__nf4"]
    path = tmp_path / "w.safetensors"
    save_quantized(str(path), packed, state)
    loaded_packed, loaded = load_quantized(str(path), xp=xp)
    assert loaded.nested == double_quant and loaded.shape == (40, 50) and loaded.blocksize == 128
    assert host(dequantize_4bit(loaded_packed, loaded)).tobytes() == expected.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left behind


def test_state_from_dict_names_missing_keys():
    with pytest.raises(ValueError, match="missing keys"):
        QuantState.from_dict({"absmax": np.zeros(1, np.float32)})
