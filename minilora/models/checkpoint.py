"""Gradient checkpointing: trade compute for memory by recomputing a block in backward.

``checkpoint(fn, *inputs)`` runs ``fn`` under no_grad, so none of its activations are kept, and
returns one graph node y whose VJP re-runs ``fn`` with gradients enabled on detached copies of the
inputs and backpropagates the incoming cotangent g through that fresh graph:

    forward:  y = fn(x_1, ..., x_n)                       (no graph kept)
    backward: y' = fn(x_1', ..., x_n') with x_i' = detach(x_i);  y'.backward(g);  gx_i = x_i'.grad

Parameters used inside ``fn`` are leaves of the recomputed graph, so their ``.grad`` accumulates
exactly as without checkpointing. ``rng`` (a backend.Random, e.g. the one dropout draws from) is
rewound before the recompute so that dropout masks repeat, and restored afterwards.

``is_recomputing()`` is True while such a recompute runs: its backward follows at once, so a layer
may keep what it would otherwise rebuild for backward (quant.linear4bit keeps its dequantized
weight then). The recompute's value y' is thrown away (only its graph carries g), so an operation
whose result feeds nothing but y' need not compute it: a Transformer layer's last product
(down_proj) runs with value=False there, gx = g W without the forward GEMM. Memory: one (B, T, C)
input per checkpointed call between forward and backward, plus one block's activations during its
recompute.
"""
from __future__ import annotations

import threading

from ..tensor import Tensor, enable_grad, is_grad_enabled, no_grad, record

_state = threading.local()


def is_recomputing() -> bool:
    """True inside the re-run of a checkpointed function during backward."""
    return getattr(_state, "depth", 0) > 0


def checkpoint(fn, *inputs, rng=None) -> Tensor:
    """y = fn(*inputs) (a Tensor), recomputed in backward instead of stored. See the module doc."""
    if not is_grad_enabled():
        return fn(*inputs)
    state = None if rng is None else rng.state
    with no_grad():
        out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise ValueError(f"checkpoint: fn must return a Tensor, got {type(out).__name__}")

    def vjp(g, needs):
        detached = [Tensor(x.data, requires_grad=needed) if isinstance(x, Tensor) else x
                    for x, needed in zip(inputs, needs)]
        after = None if rng is None else rng.state
        if rng is not None:
            rng.state = state
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            with enable_grad():
                again = fn(*detached)
        finally:
            _state.depth -= 1
        if rng is not None:
            rng.state = after
        if again.requires_grad:
            again.backward(g)
        return tuple(x.grad if needed else None for x, needed in zip(detached, needs))

    # Recorded even when no input requires grad: parameters inside fn may.
    return record(out.data, tuple(x if isinstance(x, Tensor) and x.requires_grad else None for x in inputs),
                  vjp, "checkpoint")
