"""A NumPy pass over whole blocks, split into contiguous runs of blocks, one per thread.

Dequantizing a 4-bit weight is a gather and a multiply per value, bound by memory bandwidth on one
core. NumPy releases the GIL inside ``take`` and in-place ufuncs, so k threads that each own blocks
[lo, hi) of the output write k parts at once. Each value is still one gather and one product, so the
result is the same bit for bit whatever k is.

    k = 1                      when n_values < MIN_VALUES (a thread hand-off costs more than it saves)
                               or the 1-minute load average already fills every core
    k = min(BLAS threads, cores)  otherwise: the count the user gave BLAS (OPENBLAS_NUM_THREADS, ...)

The calling thread runs the first part itself; a small pool, built once, runs the others.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..models.blas_threads import blas_threads, machine_is_crowded, usable_cores

MIN_VALUES = 1 << 18  # 1 MiB of float32 output
_POOLS: dict[int, ThreadPoolExecutor] = {}


def worker_count(n_values: int) -> int:
    """How many threads a pass over n_values values uses (see the module docstring)."""
    if n_values < MIN_VALUES:
        return 1
    threads, available = blas_threads() or 1, usable_cores()
    if threads <= 1 or machine_is_crowded(available):
        return 1
    return min(threads, available)


def block_ranges(n_blocks: int, parts: int) -> list[tuple[int, int]]:
    """[0, n_blocks) as up to ``parts`` contiguous, non-empty (lo, hi) runs of near-equal length."""
    bounds = [n_blocks * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def over_blocks(part, n_blocks: int, n_values: int, workers: int | None = None) -> None:
    """Call part(lo, hi) on runs of blocks covering [0, n_blocks), in parallel when worth it."""
    ranges = block_ranges(n_blocks, worker_count(n_values) if workers is None else workers)
    if len(ranges) <= 1:
        part(0, n_blocks)
        return
    pool = _POOLS.get(len(ranges) - 1)
    if pool is None:
        pool = _POOLS[len(ranges) - 1] = ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="minilora-dequant")
    futures = [pool.submit(part, lo, hi) for lo, hi in ranges[1:]]
    part(*ranges[0])
    for future in futures:
        future.result()  # re-raises a worker's exception here
