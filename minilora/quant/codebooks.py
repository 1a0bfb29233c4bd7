"""Codebooks: the value tables that 4-bit and 8-bit codes index.

NF4 (QLoRA, arXiv 2305.14314, section 3 "4-bit NormalFloat"): the quantiles of N(0, 1), normalised
to [-1, 1], with an exact zero and one more positive value than negative ones (16 = 8 + 1 + 7):

    p_i = linspace(offset, 0.5, 9)[:-1]   (8 probabilities),  q_i = Phi^{-1}(p_i)      positive half
    p_j = linspace(offset, 0.5, 8)[:-1]   (7 probabilities),  q_j = -Phi^{-1}(p_j)     negative half
    NF4 = sort(q_i, 0, q_j) / max(q)        offset = 0.9677083 = (1 - 1/(2*15) + 1 - 1/(2*16)) / 2

FP4 (E2M1 with bitsandbytes' bias) in code order:  [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, ...] / 12.

Int4 (plain absmax integer quantization, the baseline of QLoRA's Table 2): 16 evenly spaced levels
spanning [-1, 1], i.e. linspace(-1, 1, 16) = (2k - 15) / 15 for k = 0..15 (step 2/15). Every level is
used and +-absmax is exact; there is no exact zero (0 maps to +-1/15). bitsandbytes has no such type:
it exists here to compare data types, and files holding it are not bitsandbytes files.

The 8-bit "dynamic" map (Dettmers, arXiv 1511.04561) quantizes double-quantized absmax values: for
i = 0..6 the decade 10^(i-6) holds the 2^i midpoints of linspace(0.1, 1, 2^i + 1), with both signs;
plus 0 and 1, sorted (256 values).

Every table is built the way bitsandbytes builds it, rounding to float32 where it does (its
``torch.linspace`` evaluates ``start + step * i`` with one rounding, i.e. a fused multiply-add), so
the values are bit-identical to its tables. The tables are Python floats holding float32 values;
``code_array`` turns them into an array of any namespace.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from statistics import NormalDist

NF4_OFFSET = 0.9677083
QUANT_TYPES = ("nf4", "fp4", "int4")


def f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (round half to even), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def linspace_f32(start: float, end: float, steps: int) -> list:
    """torch.linspace in float32: step = f32((end - start) / (steps - 1)); the first half counts up
    from start, the second half down from end, each value rounded once from start + step * i."""
    start, end = f32(start), f32(end)
    if steps == 1:
        return [start]
    step = f32((end - start) / (steps - 1))
    half = steps // 2
    return [f32(start + step * i) if i < half else f32(end - step * (steps - i - 1)) for i in range(steps)]


@lru_cache(maxsize=None)
def nf4_code(offset: float = NF4_OFFSET) -> tuple:
    """The 16 NF4 values in code order (ascending), derived from normal quantiles (see module doc)."""
    ppf = NormalDist().inv_cdf
    positive = [f32(ppf(p)) for p in linspace_f32(offset, 0.5, 9)[:-1]]  # 8 values
    negative = [f32(-ppf(p)) for p in linspace_f32(offset, 0.5, 8)[:-1]]  # 7 values
    values = sorted(positive + [0.0] + negative)
    top = max(values)
    return tuple(f32(v / top) for v in values)


FP4_RAW = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)


@lru_cache(maxsize=None)
def fp4_code() -> tuple:
    """The 16 FP4 values in code order (bit patterns: sign, 2 exponent bits, 1 mantissa bit) / 12."""
    return tuple(f32(v / 12.0) for v in FP4_RAW)


@lru_cache(maxsize=None)
def int4_code() -> tuple:
    """The 16 Int4 values in code order (ascending): linspace(-1, 1, 16) in float32."""
    return tuple(linspace_f32(-1.0, 1.0, 16))


@lru_cache(maxsize=None)
def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> tuple:
    """bitsandbytes' ``create_dynamic_map``: 256 ascending float32 values in [-0.99296875, 1]."""
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    data = []

    def add_decade(i: int, items: int) -> None:
        bounds = linspace_f32(0.1, 1.0, items)
        means = [f32((a + b) / 2) for a, b in zip(bounds[:-1], bounds[1:])]
        scale = f32(10.0 ** (-(max_exponent_bits - 1) + i))
        data.extend(f32(scale * m) for m in means)
        if signed:
            data.extend(-f32(scale * m) for m in means)

    for i in range(max_exponent_bits):
        add_decade(i, 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                   else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
    if additional_items > 0:
        add_decade(max_exponent_bits - 1, additional_items + 1)
    data += [0.0, 1.0]
    if len(data) != 2 ** total_bits:
        raise ValueError(f"dynamic_map: signed={signed}, max_exponent_bits={max_exponent_bits}, "
                         f"total_bits={total_bits} give {len(data)} values, expected {2 ** total_bits}")
    data += [0.0] * (256 - len(data))
    return tuple(sorted(data))


def get_code(quant_type: str) -> tuple:
    """The 16 code values of ``quant_type`` ("nf4", "fp4" or "int4") in code order."""
    if quant_type == "nf4":
        return nf4_code()
    if quant_type == "fp4":
        return fp4_code()
    if quant_type == "int4":
        return int4_code()
    raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")


@lru_cache(maxsize=None)
def sorted_midpoints(quant_type: str) -> tuple:
    """(midpoints, order): the code sorted ascending by a stable sort gives ``order`` (code indices);
    midpoints[k] = f32((sorted[k] + sorted[k+1]) / 2), the 15 decision boundaries."""
    code = get_code(quant_type)
    order = tuple(sorted(range(len(code)), key=lambda i: code[i]))
    values = [code[i] for i in order]
    return tuple(f32((a + b) / 2) for a, b in zip(values[:-1], values[1:])), order


def code_array(xp, values, dtype=None):
    """A float32 (or ``dtype``) array of ``values`` (a code table) in namespace ``xp``."""
    return xp.asarray(list(values), dtype=xp.float32 if dtype is None else dtype)
