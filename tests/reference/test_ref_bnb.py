"""minilora.quant against bitsandbytes' 4-bit quantization on CPU tensors.

On drawn shapes (1-D and 2-D, sizes that are and are not multiples of the block), block sizes
32..4096, NF4 and FP4, with and without double quantization (bitsandbytes' compress_statistics):

- packed bytes and float32 absmax are identical to ``bitsandbytes.functional.quantize_4bit``;
- nested states: offset, state2.absmax and the 8-bit map are identical; the 8-bit absmax codes are
  identical to bitsandbytes' portable kernel (nearest map value, ties to the lower one). Its CPU C
  kernel, which quantize_4bit calls on CPU tensors, is approximate: a few codes sit one (near 0,
  where the map is dense, two) steps away from the nearest value. The test asserts exactly that
  (at most two steps, minilora's code strictly nearer, under 5% of the codes) rather than accepting
  any difference;
- dequantized values: minilora decoding bitsandbytes' own bytes and state equals the decode
  code[nibble] * absmax[block] done with bitsandbytes' pieces (bitsandbytes' CPU dequantize_4bit is
  wrong for some 2-D shapes, so it is not the oracle); values compare as floats, so FP4's -0 and +0
  are the same value;
- the packed state dict (bitsandbytes' ``as_dict(packed=True)`` layout) loads both ways.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitsandbytes.functional as bnbf
from minilora import backend
from minilora.quant import QuantState, dequantize_4bit, dequantized_absmax, dynamic_map, get_code, quantize_4bit

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@st.composite
def weights(draw):
    """(float32 host array, blocksize): normal, uniform or heavy-tailed values at a drawn scale,
    sometimes with an all-zero block; some sizes span more than 256 blocks (two nested blocks)."""
    blocksize = draw(st.sampled_from(BLOCKSIZES))
    many = blocksize <= 128 and draw(st.booleans())
    n = draw(st.integers(255 * blocksize, 260 * blocksize + 7) if many else st.integers(1, 3 * blocksize + 1))
    cols = draw(st.sampled_from([None, 1, 24, 48, 64, 96]))
    shape = (n,) if cols is None else (max(1, n // cols), cols)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "uniform", "heavy"]))
    size = int(np.prod(shape))
    values = {"normal": rng.standard_normal, "uniform": lambda k: rng.uniform(-1, 1, k),
              "heavy": lambda k: rng.standard_t(2, k)}[kind](size)
    values = values * 10.0 ** draw(st.integers(-3, 3))
    if draw(st.booleans()) and size > blocksize:
        start = blocksize * draw(st.integers(0, size // blocksize - 1))
        values[start:start + blocksize] = 0.0
    return values.astype(np.float32).reshape(shape), blocksize


def bnb_quantize(x, blocksize, quant_type, double_quant):
    packed, state = bnbf.quantize_4bit(torch.from_numpy(x), blocksize=blocksize, quant_type=quant_type,
                                       compress_statistics=double_quant)
    return packed.numpy().reshape(-1), state


def bnb_exact_8bit(values, code):
    """bitsandbytes' portable quantize_blockwise kernel (torch.bucketize on the midpoints), called
    past the CPU C kernel that the public function dispatches to for CPU tensors."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    q, absmax = torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(keys, values, code, 256)
    return q.numpy(), absmax.numpy()


def bnb_absmax(state):
    """bitsandbytes' float32 absmax per block: plain, or dequantize_blockwise(q8, state2) + offset."""
    if state.nested:
        return (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).numpy()
    return state.absmax.numpy()


def bnb_decode(packed, state):
    """code[nibble] * absmax[block] from bitsandbytes' bytes and state (high nibble first)."""
    n = int(np.prod(state.shape))
    nibbles = np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)[:n]
    absmax = np.repeat(bnb_absmax(state), state.blocksize)[:n]
    return (state.code.numpy()[nibbles] * absmax).reshape(tuple(state.shape))


def host(a):
    return np.asarray(backend.to_numpy(a))


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def test_codebooks_equal_bitsandbytes():
    assert np.array_equal(bits(get_code("nf4")), bits(bnbf.get_4bit_type("nf4", device="cpu").numpy()))
    # FP4: equal values; code 8 is -0.0 in minilora (sign bit set, as the format says), +0.0 in bitsandbytes
    fp4, ref_fp4 = np.asarray(get_code("fp4"), dtype=np.float32), bnbf.get_4bit_type("fp4", device="cpu").numpy()
    assert np.array_equal(fp4, ref_fp4)
    assert np.array_equal(bits(dynamic_map(signed=True)), bits(bnbf.create_dynamic_map(signed=True).numpy()))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@SETTINGS
@given(case=weights(), double_quant=st.booleans())
def test_packed_bytes_and_absmax_equal_bitsandbytes(quant_type, xp, case, double_quant):
    x, blocksize = case
    check_against_bitsandbytes(x, blocksize, quant_type, double_quant, xp)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_nested_codes_on_many_blocks(quant_type, record_property):
    """Fixed inputs with thousands of blocks, where bitsandbytes' CPU 8-bit kernel is seen to deviate."""
    rng = np.random.default_rng(1)
    for x, blocksize in [(rng.uniform(-1, 1, 70001), 32), (0.02 * rng.standard_normal((384, 576)), 64)]:
        differ = check_against_bitsandbytes(x.astype(np.float32), blocksize, quant_type, True, np)
        record_property(f"cpu_kernel_codes_off_by_one_{x.size}_{blocksize}", differ)


def check_against_bitsandbytes(x, blocksize, quant_type, double_quant, xp) -> int:
    """Assert the module doc's claims for one input; return how many 8-bit codes bitsandbytes' CPU
    kernel put one or two steps away from the nearest value."""
    packed, state = quantize_4bit(backend.from_numpy(x, xp), blocksize=blocksize, quant_type=quant_type,
                                  double_quant=double_quant)
    ref_packed, ref = bnb_quantize(x, blocksize, quant_type, double_quant)
    where = f"{quant_type} shape {x.shape} blocksize {blocksize} double_quant {double_quant}"
    assert np.array_equal(host(packed), ref_packed), f"packed bytes differ: {where}"
    assert state.nested == ref.nested and state.blocksize == ref.blocksize == blocksize
    if not double_quant:
        assert np.array_equal(bits(host(state.absmax)), bits(ref.absmax.numpy())), f"absmax differs: {where}"
        return 0
    assert bits(state.offset) == bits(ref.offset.item()), f"offset {state.offset!r} vs {ref.offset.item()!r}: {where}"
    assert state.state2.blocksize == ref.state2.blocksize == 256
    assert np.array_equal(bits(host(state.state2.absmax)), bits(ref.state2.absmax.numpy())), f"absmax2: {where}"
    assert np.array_equal(bits(host(state.state2.code)), bits(ref.state2.code.numpy()))
    codes, ref_codes = host(state.absmax), ref.absmax.numpy()

    # bitsandbytes' nearest-value kernel on the same centred absmax gives the same codes, except in a
    # nested block that is all zero (absmax2 = 0): any code decodes to 0 there; minilora writes code 0
    # like bitsandbytes' CPU kernel, the portable kernel writes 127 (the map's 0).
    _, plain = bnb_quantize(x, blocksize, quant_type, False)
    exact, _ = bnb_exact_8bit(plain.absmax - ref.offset, ref.state2.code)
    zero_block = np.repeat(ref.state2.absmax.numpy() == 0, 256)[:codes.size]
    assert np.array_equal(np.where(zero_block, ref_codes, exact), codes), (
        f"8-bit absmax codes differ from bitsandbytes' portable kernel: {where}")

    # its CPU kernel: each code it chose differently is one or two steps off, and farther from the value
    differ = np.nonzero(codes != ref_codes)[0]
    if differ.size:
        code = ref.state2.code.numpy()
        target = (plain.absmax - ref.offset).numpy() / np.repeat(ref.state2.absmax.numpy(), 256)[:codes.size]
        ours, theirs = codes[differ].astype(int), ref_codes[differ].astype(int)
        assert np.all(np.abs(ours - theirs) <= 2), f"8-bit codes more than two steps apart at {differ}: {where}"
        assert np.all(np.abs(code[ours] - target[differ]) < np.abs(code[theirs] - target[differ])), where
        assert differ.size <= 0.05 * codes.size + 1, f"{differ.size} of {codes.size} 8-bit codes differ: {where}"
    return int(differ.size)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@SETTINGS
@given(case=weights(), double_quant=st.booleans())
def test_dequantize_equals_decoding_bitsandbytes_bytes(quant_type, xp, case, double_quant):
    x, blocksize = case
    ref_packed, ref = bnb_quantize(x, blocksize, quant_type, double_quant)
    expected = bnb_decode(ref_packed, ref)
    tensors = {k: v.numpy() for k, v in ref.as_dict(packed=True).items()}
    state = QuantState.from_dict(tensors, xp=xp)  # bitsandbytes' state, read by minilora
    assert state.nested == double_quant and tuple(state.shape) == x.shape
    assert np.array_equal(bits(host(dequantized_absmax(state))), bits(bnb_absmax(ref)))
    got = host(dequantize_4bit(backend.from_numpy(ref_packed, xp), state))
    assert got.shape == x.shape and str(got.dtype) == "float32"
    assert np.array_equal(got, expected), (f"dequantized values differ from bitsandbytes' bytes decoded: {quant_type} "
                                           f"shape {x.shape} blocksize {blocksize} double_quant {double_quant}")
    if not double_quant:  # minilora's own quantization decodes to the same values
        packed, own = quantize_4bit(backend.from_numpy(x, xp), blocksize=blocksize, quant_type=quant_type,
                                    double_quant=False)
        assert np.array_equal(host(dequantize_4bit(packed, own)), expected)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@SETTINGS
@given(case=weights(), double_quant=st.booleans())
def test_state_dict_loads_in_bitsandbytes(quant_type, case, double_quant):
    x, blocksize = case
    packed, state = quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    tensors = {k: torch.from_numpy(np.array(host(v))) for k, v in state.to_dict(packed=True).items()}
    loaded = bnbf.QuantState.from_dict(tensors, device=torch.device("cpu"))
    assert (loaded.quant_type, loaded.blocksize, tuple(loaded.shape), loaded.dtype) == (
        quant_type, blocksize, x.shape, torch.float32)
    assert loaded.nested == double_quant
    assert np.array_equal(bits(bnb_absmax(loaded)), bits(host(dequantized_absmax(state))))
    assert np.array_equal(bnb_decode(packed, loaded), dequantize_4bit(packed, state))


def test_one_known_vector():
    """A hand-checkable case: one block of 8 values, NF4 and FP4 bytes as bitsandbytes writes them."""
    x = np.array([0.0, -1.0, 1.0, 0.5, -0.25, 0.1, -0.7, 0.33], dtype=np.float32)
    for quant_type in ("nf4", "fp4"):
        ref_packed, ref = bnb_quantize(x, 64, quant_type, False)
        packed, state = quantize_4bit(x, blocksize=64, quant_type=quant_type, double_quant=False)
        assert host(packed).tolist() == ref_packed.tolist()
        assert host(state.absmax).tolist() == [1.0]
