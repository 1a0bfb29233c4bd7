"""Double quantization of the absmax values (QLoRA, arXiv 2305.14314, section 3).

The 4-bit weight keeps one float32 absmax per block of 64: 32/64 = 0.5 bits per parameter. QLoRA
quantizes those constants again, to 8 bits, in blocks of 256:

    offset   = mean(absmax)                        one float32 per weight
    c        = absmax - offset                     centred, so the signed map is used fully
    absmax2  = max |c| per block of 256            float32, one per 256 * 64 weights
    q8       = nearest value of the signed dynamic map to c / absmax2     (uint8)
    absmax'  = dynamic[q8] * absmax2 + offset      dequantization

Cost: 8/64 + 32/(64 * 256) = 0.127 bits per parameter instead of 0.5.

The 8-bit code is the nearest map value (ties to the lower one), as specified. bitsandbytes' CPU
kernel (0.50) is approximate here: on uniform inputs about 5% of its 8-bit codes are a neighbour
of the nearest one (docs/qlora.md); offset, absmax2 and all 4-bit bytes agree bit for bit.
"""
from __future__ import annotations

from .blockwise import block_absmax, to_blocks
from .codebooks import code_array, dynamic_map, f32
from .state import QuantState

NESTED_BLOCKSIZE = 256


def quantize_blockwise_8bit(xp, flat, code_values, blocksize: int = NESTED_BLOCKSIZE):
    """flat (n,) float32 -> (q (n,) uint8, absmax (n_blocks,) float32): nearest of 256 sorted values.

    q = #{midpoints m_k < x / absmax} (ties to the lower value), by an 8-step binary search. A block
    of zeros (absmax 0) gets code 0 (as in bitsandbytes) and decodes to code[0] * 0 = 0: no NaN.
    """
    n = flat.shape[0]
    blocks = to_blocks(xp, flat, blocksize)  # (n_blocks, blocksize)
    absmax = block_absmax(xp, blocks)
    zero = (absmax == 0)[:, None]  # (n_blocks, 1)
    divisor = xp.where(zero, xp.ones_like(blocks[:, :1]), absmax[:, None])
    normed = xp.where(zero, xp.full_like(blocks, -1.0), blocks / divisor)  # -1 takes code 0
    normed = xp.reshape(normed, (-1,))[:n]  # (n,)
    mids = code_array(xp, [f32((a + b) / 2) for a, b in zip(code_values[:-1], code_values[1:])] + [2.0])
    k = xp.zeros((n,), dtype=xp.int32)
    for step in (128, 64, 32, 16, 8, 4, 2, 1):
        k = k + step * xp.astype(xp.take(mids, k + (step - 1)) < normed, xp.int32)
    return xp.astype(k, xp.uint8), absmax


def dequantize_blockwise_8bit(xp, q, absmax, code, blocksize: int = NESTED_BLOCKSIZE):
    """q (n,) uint8, absmax (n_blocks,), code (256,) -> (n,) float32 = code[q] * absmax[block]."""
    n = q.shape[0]
    values = to_blocks(xp, xp.take(code, q), blocksize)  # (n_blocks, blocksize)
    return xp.reshape(values * absmax[:, None], (-1,))[:n]


def _multi_row_sum(xp, rows, zero):
    """Sequential float32 sum of rows (size, ...) with PyTorch's 4-level cascade (SumKernel.cpp)."""
    size, levels = rows.shape[0], 4
    power = max(4, (size - 1).bit_length() // levels)  # CeilLog2(size) // levels, at least 4
    step, mask = 1 << power, (1 << power) - 1
    acc = [zero] * levels
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = acc[0] + rows[i, ...]
            i += 1
        for j in range(1, levels):
            acc[j], acc[j - 1] = acc[j] + acc[j - 1], zero
            if i & (mask << (j * power)):
                break
    for k in range(i, size):
        acc[0] = acc[0] + rows[k, ...]
    for j in range(1, levels):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def _row_sum(xp, items, zero):
    """PyTorch's row_sum: 4 interleaved accumulators (ILP), tail into the first, then combined."""
    n = items.shape[0]
    size_ilp = n // 4
    grid = xp.reshape(items[: size_ilp * 4, ...], (size_ilp, 4) + tuple(items.shape[1:]))
    partial = [_multi_row_sum(xp, grid[:, k, ...], zero) for k in range(4)]
    for i in range(size_ilp * 4, n):
        partial[0] = partial[0] + items[i, ...]
    return partial[0] + partial[1] + partial[2] + partial[3]


def torch_mean_f32(xp, a, lanes: int = 8) -> float:
    """mean(a) of a 1-D float32 array, summed in PyTorch's CPU order (float32, AVX2: 8 lanes).

    bitsandbytes takes the double-quantization offset as ``absmax.mean()``; replaying that order
    of float32 additions reproduces its offset bit for bit (for up to 32768 blocks, where PyTorch
    sums in one thread). The cost is a loop over groups of 4 * lanes values.
    """
    n = a.shape[0]
    zero_scalar = xp.zeros((), dtype=xp.float32)
    if n < lanes:
        return float(_row_sum(xp, a, zero_scalar) / xp.asarray(n, dtype=xp.float32))
    n_vec = n // lanes
    vectors = xp.reshape(a[: n_vec * lanes], (n_vec, lanes))  # (n_vec, lanes)
    lane_sums = _row_sum(xp, vectors, xp.zeros((lanes,), dtype=xp.float32))  # (lanes,)
    total = zero_scalar
    for k in range(n_vec * lanes, n):
        total = total + a[k]
    for k in range(lanes):
        total = total + lane_sums[k]
    return float(total / xp.asarray(n, dtype=xp.float32))


def double_quantize(xp, absmax, blocksize: int = NESTED_BLOCKSIZE) -> tuple:
    """absmax (n_blocks,) float32 -> (q8 (n_blocks,) uint8, offset, state2 QuantState)."""
    offset = torch_mean_f32(xp, absmax)
    centred = absmax - xp.asarray(offset, dtype=xp.float32)
    values = dynamic_map(signed=True)
    q8, absmax2 = quantize_blockwise_8bit(xp, centred, values, blocksize)
    state2 = QuantState(absmax=absmax2, code=code_array(xp, values), blocksize=blocksize,
                        quant_type="dynamic", shape=(absmax.shape[0],), dtype="float32")
    return q8, offset, state2


def double_dequantize(xp, q8, offset: float, state2: QuantState):
    """The float32 absmax (n_blocks,) = code2[q8] * absmax2[block] + offset."""
    absmax = dequantize_blockwise_8bit(xp, q8, state2.absmax, state2.code, state2.blocksize)
    return absmax + xp.asarray(offset, dtype=xp.float32)
