"""bench/bench_generate.py's bandwidth probe reads as many distinct bytes per pass as a decoding token does.

One matrix timed over and over stays in a large cache (42-44 GB/s on a VM with a 480 MiB L3, against
29-30 GB/s for the same product over three or more copies), which overstated the limit decoding is
measured against.
"""
from __future__ import annotations

import numpy as np

from bench.bench_generate import LAYOUTS, cold_copies, gemv_bandwidth, probe_weights


def _input_major(rows):
    return np.ascontiguousarray(rows.T).T  # a (V, C) view of a row-major (C, V) array


def test_cold_copies_are_distinct_arrays_covering_the_working_set_in_the_same_layout():
    w = _input_major(np.arange(12, dtype=np.float32).reshape(3, 4))
    copies = cold_copies(np, w, working_set=5 * w.nbytes - 1)
    assert len(copies) == 5 and copies[0] is w
    for i, a in enumerate(copies):
        assert np.array_equal(a, w) and a.T.flags.c_contiguous
        assert not any(np.shares_memory(a, b) for b in copies[i + 1:])
    assert len(cold_copies(np, w, working_set=0)) == 1
    assert len(cold_copies(np, w, working_set=w.nbytes)) == 1


def test_probe_weights_hold_one_matrix_in_both_layouts_over_the_working_set():
    weights = probe_weights(np, (8, 6), working_set=1000)
    rows, major = weights["rows"], weights["input-major"]
    assert set(weights) == set(LAYOUTS) and len(rows) == len(major) == 6  # ceil(1000 / 192)
    assert sum(a.nbytes for a in rows) >= 1000
    assert rows[0].flags.c_contiguous and major[0].T.flags.c_contiguous and not major[0].flags.c_contiguous
    assert np.array_equal(rows[0], major[0])


class _Reads(list):
    """A list that records which of its items were read."""

    def __init__(self, items):
        super().__init__(items)
        self.read = set()

    def __getitem__(self, i):
        self.read.add(i % len(self))
        return super().__getitem__(i)


def test_gemv_bandwidth_times_every_copy_in_each_layout_and_thread_count():
    weights = {layout: _Reads(arrays) for layout, arrays in probe_weights(np, (64, 16), 64 * 16 * 4 * 3).items()}
    rates = gemv_bandwidth(np, weights, thread_counts=[1], repeats=7)
    assert set(rates) == {f"{layout}/1" for layout in LAYOUTS} and all(r > 0 for r in rates.values())
    for copies in weights.values():
        assert copies.read == {0, 1, 2}
