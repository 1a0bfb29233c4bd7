"""Fused projections for inference: several Linears that read the same input as one GEMM.

    [y_1 | y_2 | ... ] = x [W_1; W_2; ...]^T + [b_1 | b_2 | ...]        x (..., C) -> each y_i (..., d_i)

Decoding reads every weight once per token, so q/k/v (and gate/up) as one product saves a BLAS call,
its thread wake-up and the Python around it, per layer and token. The stacked weight costs no memory:
the first fused call copies W_1, W_2, ... into one buffer and makes each Linear's ``weight.data`` a
block (a view) of it, so training updates in place, ``state_dict`` and merges keep seeing the same
numbers. If anything later rebinds a ``weight.data`` (a load, a cast, an optimizer that assigns), the
identity check below notices and the next call restacks.

The buffer's layout follows the product's shape. When the stack is at least as wide as its input
(sum d_i >= C: q/k/v, gate/up, o_proj, lm_head) it is stored input-major, W^T as a (C, sum d_i)
array, and each weight is a transposed view of a column block: x W^T then reads W^T row by row, which
OpenBLAS's matrix-vector kernel streams faster than the (d, C) rows of W (bench_generate on the
2-core test VM, GB/s: lm_head 36.9 against 20.9, gate/up 29.9 against 21.2, o_proj 14.6 against
12.7; docs/speed.md). A narrower stack (down_proj, sum d_i < C) keeps W's own (sum d_i, C) layout,
which streams faster there (24.5 against 18.4). Only the layout changes; matrix-matrix products at
training sizes pack their operands and give the same bits either way (tests/models/test_decode.py).

``fused_linears`` runs only when no gradient is recorded and every module is a plain ``nn.Linear``
(not a LoRA wrapper, not a 4-bit layer): anything else returns None and the caller runs the modules
one by one. ``stacked`` of a single Linear (o_proj, down_proj, lm_head) only sets its layout; the
decoder (models/decode.py) asks for that.
"""
from __future__ import annotations

import weakref

from .. import kernels, runtime
from ..nn import Linear
from ..tensor import Tensor, is_grad_enabled

_STACKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # first Linear -> _Stack


class _Stack:
    """The stacked weight (sum d_i, C) (a view of an input-major buffer when wide, see the module doc),
    the stacked bias or None, and the per-Linear views handed out."""

    def __init__(self, linears, xp):
        weights = [m.weight.data for m in linears]
        self.sizes = [int(w.shape[0]) for w in weights]
        ends = [sum(self.sizes[:i + 1]) for i in range(len(self.sizes))]
        starts = [e - s for e, s in zip(ends, self.sizes)]
        self.input_major = sum(self.sizes) >= int(weights[0].shape[1])
        if self.input_major:
            self.weight = _input_major(xp, weights, ends[-1]).mT  # a (sum d_i, C) view of W^T (C, sum d_i)
        elif len(weights) == 1:
            self.weight = weights[0]  # a narrow Linear alone (down_proj) keeps its own array: nothing to move
        else:
            self.weight = xp.concat(weights, axis=0)  # (sum d_i, C): one copy, then the originals go
        self.bias = None
        if linears[0].bias is not None:
            self.bias = xp.concat([m.bias.data for m in linears], axis=0)  # (sum d_i,)
            for m, a, e in zip(linears, starts, ends):
                m.bias.data = self.bias[a:e]
        for m, a, e in zip(linears, starts, ends):
            m.weight.data = self.weight[a:e, :]
        self.views = [(m.weight.data, None if m.bias is None else m.bias.data) for m in linears]

    def holds(self, linears) -> bool:
        """True while every Linear still uses the very arrays this stack handed out."""
        return all(m.weight.data is w and (m.bias is None if b is None else (m.bias is not None and m.bias.data is b))
                   for m, (w, b) in zip(linears, self.views))


TRANSPOSE_ROWS = 512  # rows of W transposed at a time: the block and its image stay in the 1 MiB L2


def _input_major(xp, weights, total: int):
    """[W_1; W_2; ...]^T as one row-major (C, sum d_i) array, filled a block of W's rows at a time
    (a cache-blocked transpose: 3.4 GB/s on the test VM against 1.2 for one strided copy)."""
    with runtime.mapped_allocations():  # a buffer that lives on: huge pages, not the tuned heap's
        buffer = xp.empty((int(weights[0].shape[1]), total), dtype=weights[0].dtype)
    start = 0
    for w in weights:
        rows = int(w.shape[0])
        for row in range(0, rows, TRANSPOSE_ROWS):
            stop = min(row + TRANSPOSE_ROWS, rows)  # the array API leaves slices past the end unspecified
            buffer[:, start + row:start + stop] = w[row:stop, :].mT
        start += rows
    return buffer


def stacked(linears) -> _Stack | None:
    """The current stack of ``linears`` (made or remade as needed), or None unless every one is a plain
    Linear with the same input width, dtype and bias presence."""
    if any(type(m) is not Linear for m in linears):
        return None
    first = linears[0]
    if any((m.bias is None) != (first.bias is None) or m.weight.dtype != first.weight.dtype
           or m.in_features != first.in_features for m in linears):
        return None
    stack = _STACKS.get(first)
    if stack is None or not stack.holds(linears):
        stack = _STACKS[first] = _Stack(linears, first.weight.xp)
    return stack


def split_outputs(y, sizes) -> list:
    """The column blocks of y (..., sum d_i): one view (..., d_i) per stacked Linear."""
    out, start = [], 0
    for size in sizes:
        out.append(y[..., start:start + size])
        start += size
    return out


def fused_linears(x: Tensor, linears) -> list[Tensor] | None:
    """[m(x) for m in linears] as one product, or None where that is not allowed (see the module doc)."""
    stack = None if is_grad_enabled() else stacked(linears)
    if stack is None:
        return None
    y = kernels.linear(x.data, stack.weight, stack.bias).data  # (..., sum d_i)
    return [Tensor(block) for block in split_outputs(y, stack.sizes)]
