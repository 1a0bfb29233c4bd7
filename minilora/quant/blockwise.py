"""Blockwise 4-bit quantization: blocks, absmax scaling, nearest code, two codes per byte.

For x flattened in C order into blocks of ``blocksize`` (the last block may be short):

    absmax_b = max_i |x_bi|                        one float32 per block
    s_bi     = clip(x_bi / absmax_b, -1, 1)        (full blocks: x * f32(1 / absmax), last short
                                                    block: x / absmax, both with absmax >= 1e-38)
    q_bi     = the code whose value is nearest to s_bi; a value exactly on a midpoint between two
               neighbouring values takes the lower one (k = #{midpoints m_k < s})
    byte_j   = q_{2j} << 4 | q_{2j+1}              first element in the HIGH nibble
    x'_bi    = code[q_bi] * absmax_b               dequantization

This is bitsandbytes' arithmetic operation for operation (float32 throughout), so bytes and absmax
agree bit for bit. An all-zero block has absmax 0, codes of 0.0 and dequantizes to exact zeros.
The nearest-code search counts the sorted midpoints below each value (15 vectorized comparisons),
which is bitsandbytes' ``bucketize`` on the same float32 midpoints.
"""
from __future__ import annotations

from .. import backend
from .codebooks import sorted_midpoints
from .gather import gather_words, use_pieces
from .threaded import over_blocks

ABSMAX_FLOOR = 1e-38  # bitsandbytes clamps the divisor, so all-zero blocks give 0 / 1e-38 = 0
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def check_blocksize(blocksize) -> int:
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")
    return int(blocksize)


def to_blocks(xp, flat, blocksize: int):
    """flat (n,) -> (n_blocks, blocksize), the last block padded with zeros."""
    n = flat.shape[0]
    n_blocks = -(-n // blocksize)
    pad = n_blocks * blocksize - n
    if pad:
        flat = xp.concat([flat, xp.zeros((pad,), dtype=flat.dtype)])
    return xp.reshape(flat, (n_blocks, blocksize))  # (n_blocks, blocksize)


def block_absmax(xp, blocks):
    """(n_blocks, blocksize) -> (n_blocks,) max |x| per block (zero padding does not change it)."""
    return xp.max(xp.abs(blocks), axis=1)


def scale_blocks(xp, blocks, absmax, n: int):
    """s = clip(x / absmax, -1, 1) per block, with bitsandbytes' rounding (see module doc)."""
    floor = xp.asarray(ABSMAX_FLOOR, dtype=xp.float32)
    divisor = xp.maximum(absmax, floor)  # (n_blocks,)
    n_blocks, blocksize = blocks.shape
    n_full = n // blocksize
    scaled = blocks[:n_full, :] * (1.0 / divisor[:n_full])[:, None]  # (n_full, blocksize)
    if n_full < n_blocks:  # the short last block divides
        scaled = xp.concat([scaled, blocks[n_full:, :] / divisor[n_full:, None]], axis=0)
    return xp.clip(scaled, -1.0, 1.0)


def nearest_code(xp, scaled, quant_type: str):
    """uint8 code index of the nearest code value (ties to the lower value), any shape.

    k = #{midpoints m : m < s} over the 15 sorted midpoints (15 vectorized comparisons summed in
    uint8), then the sorted position k is mapped back to the code index (identity for NF4).
    """
    mids, order = sorted_midpoints(quant_type)
    k = xp.zeros(scaled.shape, dtype=xp.uint8)
    for m in mids:
        k = k + xp.astype(scaled > m, xp.uint8)
    if list(order) != list(range(16)):  # FP4 is not stored in value order
        k = xp.reshape(xp.take(xp.asarray(list(order), dtype=xp.uint8), xp.reshape(k, (-1,))), scaled.shape)
    return k


def pack_nibbles(xp, codes, n: int):
    """codes (>= n + n % 2,) uint8 in [0, 15] -> ((n + 1) // 2,) bytes, first code in the high nibble.

    For odd n the code after the last element fills the low nibble (that of a padded 0.0).
    """
    pairs = xp.reshape(codes[: n + n % 2], (-1, 2))  # (n_bytes, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_nibbles(xp, packed, n: int):
    """(n_bytes,) uint8 -> (n,) uint8 codes (high nibble first)."""
    pairs = xp.stack([packed >> 4, packed & 15], axis=1)  # (n_bytes, 2)
    return xp.reshape(pairs, (-1,))[:n]


def byte_table(xp, code):
    """code (16,) -> (256, 2) values of the (high, low) nibbles of every byte value.

    Dequantization then costs one gather per byte instead of two shifts and two gathers.
    """
    byte = xp.arange(256, dtype=xp.int32)
    return xp.stack([xp.take(code, byte >> 4), xp.take(code, byte & 15)], axis=1)  # (256, 2)


_PAIR_TABLES: dict = {}


def _pair_table(xp, code):
    """byte_table as (256,) 8-byte words (NumPy): one gather of a word writes both float32 values."""
    key = code.tobytes()
    if key not in _PAIR_TABLES:
        _PAIR_TABLES[key] = xp.reshape(byte_table(xp, xp.astype(code, xp.float32)), (-1,)).view(xp.uint64)
    return _PAIR_TABLES[key]


def quantize_blocks_4bit(xp, flat, blocksize: int, quant_type: str):
    """flat (n,) float32 -> (packed (ceil(n/2),) uint8, absmax (n_blocks,) float32)."""
    n = flat.shape[0]
    blocks = to_blocks(xp, flat, blocksize)  # (n_blocks, blocksize)
    absmax = block_absmax(xp, blocks)
    codes = nearest_code(xp, scale_blocks(xp, blocks, absmax, n), quant_type)
    return pack_nibbles(xp, xp.reshape(codes, (-1,)), n), absmax


def dequantize_blocks_4bit(xp, packed, absmax, n: int, blocksize: int, code, out=None):
    """packed (ceil(n/2),) uint8, absmax (n_blocks,), code (16,) -> (n,) float32 = code[q] * absmax.

    ``out``: an optional float32 (n,) array to write into (NumPy; a buffer reused across layers).
    NumPy fast path, for whole bytes and whole blocks: the (256, 2) byte table viewed as 8-byte
    words, gathered straight into the output (quant/gather.py: whole or in cache-sized pieces,
    whichever the machine runs faster), then one in-place multiply by absmax per block, on runs of
    blocks split over threads (quant/threaded.py). Elsewhere: the same table gathered row-wise.
    All give the same float32 products, bit for bit.
    """
    if backend.backend_name(xp) == "numpy" and n % 2 == 0 and n % blocksize == 0:
        out = xp.empty((n,), dtype=xp.float32) if out is None else out
        table, words, half = _pair_table(xp, code), out.view(xp.uint64), blocksize // 2
        blocks = xp.reshape(out, (n // blocksize, blocksize))  # a view of out

        pieces = use_pieces(xp, table, packed, words)  # timed once per process (quant/gather.py)

        def decode(lo, hi):  # blocks [lo, hi): bytes [lo * half, hi * half)
            gather_words(xp, table, packed[lo * half:hi * half], words[lo * half:hi * half], pieces)
            blocks[lo:hi] *= absmax[lo:hi, None]
        over_blocks(decode, n // blocksize, n)
        return out
    values = xp.reshape(xp.take(byte_table(xp, code), packed, axis=0), (-1,))  # (2 * n_bytes,)
    blocks = to_blocks(xp, values[:n], blocksize)  # (n_blocks, blocksize)
    flat = xp.reshape(blocks * absmax[:, None], (-1,))[:n]
    if out is None:
        return flat
    out[...] = flat
    return out
