"""Tensor and reverse-mode autodiff.

A ``Tensor`` holds an array ``data`` of some backend, an optional ``grad`` of the same shape, and
``requires_grad``. Every differentiable operation is a *primitive*: a function

    forward(*arrays, **options) -> (out, vjp)        vjp(g, needs) -> (grad_input_0, ...)

where ``vjp`` maps the output cotangent g to one cotangent per input (None where ``needs[i]`` is
False). A primitive registered with ``takes_needs=True`` also receives ``needs`` in its forward
(all False when no graph is recorded), so that it saves only what the asked-for gradients use: a
frozen weight's linear keeps no reference to its input. ``apply`` runs a primitive on tensors and,
only when gradients are enabled and some input requires them, records the output's parents and
``vjp`` in a ``Node``. Frozen inputs therefore build no graph and keep nothing alive. The graph
holds Nodes (parents, vjp, shape), never an intermediate's array: once the code that computed a
tensor drops it, only what its consumers' VJPs saved stays alive. ``backward`` walks the graph once
in reverse topological order and frees it as it goes (each Node drops its parents and closure), so
activations die with the step; a later backward that reaches a freed node raises instead of
silently treating it as a leaf.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable

from . import backend

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Inside the block, operations record no graph (inference, optimizer updates)."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    previous = is_grad_enabled()
    _state.grad_enabled = True
    try:
        yield
    finally:
        _state.grad_enabled = previous


@dataclass(frozen=True)
class Primitive:
    name: str
    forward: Callable
    fused: bool = False
    takes_needs: bool = False  # forward(*arrays, needs=(bool per input), **options)


PRIMITIVES: dict[str, Primitive] = {}


def primitive(fused: bool = False, takes_needs: bool = False):
    """Register ``forward`` as a primitive and return its Tensor-level wrapper."""
    def register(forward):
        name = forward.__name__
        if name in PRIMITIVES:
            raise ValueError(f"primitive {name!r} registered twice")
        prim = Primitive(name, forward, fused, takes_needs)
        PRIMITIVES[name] = prim

        def wrapper(*inputs, **options):
            return apply(prim, *inputs, **options)

        wrapper.__name__ = name
        wrapper.__qualname__ = name
        wrapper.__doc__ = forward.__doc__
        wrapper.primitive = prim
        return wrapper
    return register


def apply(prim: Primitive, *inputs, **options) -> "Tensor":
    """Run ``prim`` on Tensors (and plain arrays/scalars, treated as constants)."""
    arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
    needs = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
    recording = any(needs) and is_grad_enabled()
    if prim.takes_needs:
        options["needs"] = needs if recording else (False,) * len(needs)
    out, vjp = prim.forward(*arrays, **options)
    if not recording:
        return Tensor(out)
    return record(out, tuple(x if needed else None for x, needed in zip(inputs, needs)), vjp, prim.name)


class Node:
    """An intermediate's place in the graph: its parents (Nodes, leaf Tensors or None), its vjp, the
    op's name and the output's shape. It holds no array of its own."""

    __slots__ = ("_parents", "_vjp", "_op", "shape", "__weakref__")

    def __init__(self, parents: tuple, vjp, op: str, shape: tuple):
        self._parents, self._vjp, self._op, self.shape = parents, vjp, op, shape


def _graph_ref(x):
    """What a consumer's Node points to: the Node of an intermediate, the Tensor itself for a leaf."""
    return x if x is None or x._node is None else x._node


def record(out, parents: tuple, vjp, op: str) -> "Tensor":
    """A Tensor over ``out`` whose gradient flows to ``parents`` (Tensors or None) through ``vjp``."""
    result = Tensor(out, requires_grad=True)
    result._node = Node(tuple(_graph_ref(x) for x in parents), vjp, op, tuple(out.shape))
    return result


class Tensor:
    """An array with an optional gradient. ``grad`` is filled on leaves by ``backward``."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    __array_priority__ = 1000  # so that ndarray * Tensor dispatches to Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            raise TypeError("Tensor(data): data is already a Tensor; use .detach() or .data")
        if isinstance(data, (int, float, list, tuple)):  # Python values: the current backend
            data = backend.default_namespace().asarray(data)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None  # a Node when this tensor is the output of a recorded op

    # the graph facts of this tensor (its Node's; a leaf has none)
    @property
    def _parents(self) -> tuple:
        return () if self._node is None else self._node._parents

    @property
    def _vjp(self):
        return None if self._node is None else self._node._vjp

    @property
    def _op(self):
        return None if self._node is None else self._node._op

    # ------------------------------------------------------------ array-like facts
    @property
    def xp(self):
        return backend.namespace_of(self.data)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        n = 1
        for s in self.data.shape:
            n *= s
        return n

    @property
    def is_leaf(self) -> bool:
        """True for tensors not made by a recorded op (parameters, inputs, detached values)."""
        return self._op is None

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad})"

    def __len__(self):
        return self.shape[0]

    def numpy(self):
        """A host NumPy array of the data (explicit copy off the device)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return float(self.numpy().reshape(-1)[0]) if self.size == 1 else _raise_item(self.shape)

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------ autodiff
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        grad: the cotangent of self, same shape (default 1 for a one-element tensor). The graph is
        freed as it is walked, so a second backward through it raises. Leaf gradients are fresh,
        writable arrays of the leaf's dtype (never a view shared with another leaf).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input required grad, or it was made under no_grad())")
        root = _graph_ref(self)
        if _is_freed(root):
            raise RuntimeError(_FREED_MESSAGE.format(op=self._op))
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() needs a grad argument for a non-scalar output of shape {self.shape}")
            grad = xp.ones(self.data.shape, dtype=self.data.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if isinstance(grad, (int, float)):
                grad = xp.full(self.data.shape, grad, dtype=self.data.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(grad): grad has shape {tuple(grad.shape)}, "
                                 f"expected the output's shape {self.shape}")
        order = _topological_order(root)
        grads = {id(root): grad}
        while order:
            node = order.pop()  # reverse topological order; popping lets finished nodes die early
            g = grads.pop(id(node), None)
            if isinstance(node, Tensor):  # a leaf
                if g is not None:
                    g = xp.astype(g, node.data.dtype, copy=True)
                    node.grad = g if node.grad is None else node.grad + g
                continue
            if _is_freed(node):
                raise RuntimeError(_FREED_MESSAGE.format(op=node._op))
            parents, vjp = node._parents, node._vjp
            node._parents, node._vjp = (), None  # free the graph as we go (the op name stays)
            if g is None:
                continue
            needs = tuple(p is not None for p in parents)
            for parent, pg in zip(parents, vjp(g, needs)):
                if parent is None or pg is None:
                    continue
                if tuple(pg.shape) != parent.shape:
                    raise RuntimeError(f"the VJP of {node._op!r} returned a cotangent of shape "
                                       f"{tuple(pg.shape)} for an input of shape {parent.shape}")
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    # ------------------------------------------------------------ operators (see ops.py)
    def __add__(self, other): return _ops().add(self, other)
    def __radd__(self, other): return _ops().add(other, self)
    def __sub__(self, other): return _ops().sub(self, other)
    def __rsub__(self, other): return _ops().sub(other, self)
    def __mul__(self, other): return _ops().mul(self, other)
    def __rmul__(self, other): return _ops().mul(other, self)
    def __truediv__(self, other): return _ops().div(self, other)
    def __rtruediv__(self, other): return _ops().div(other, self)
    def __neg__(self): return _ops().neg(self)
    def __pow__(self, exponent): return _ops().pow(self, exponent=exponent)
    def __matmul__(self, other): return _ops().matmul(self, other)
    def __rmatmul__(self, other): return _ops().matmul(other, self)
    def __getitem__(self, key): return _ops().getitem(self, key=key)

    def sum(self, axis=None, keepdims=False): return _ops().sum(self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return _ops().mean(self, axis=axis, keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return _ops().max(self, axis=axis, keepdims=keepdims)
    def exp(self): return _ops().exp(self)
    def log(self): return _ops().log(self)
    def sqrt(self): return _ops().sqrt(self)
    def tanh(self): return _ops().tanh(self)
    def relu(self): return _ops().relu(self)
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops().reshape(self, shape=tuple(shape))
    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _ops().permute(self, axes=tuple(axes))
    def transpose(self, a: int = -2, b: int = -1):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(tuple(axes))

    @property
    def T(self):
        return self.transpose(-2, -1)


_FREED_MESSAGE = ("backward() reached the output of {op!r} whose graph was already freed by an earlier "
                  "backward(); compute the loss again (or sum the losses and call backward() once)")


def _is_freed(node) -> bool:
    return isinstance(node, Node) and node._vjp is None


def _raise_item(shape):
    raise ValueError(f"item() needs a one-element tensor, got shape {shape}")


def _topological_order(root) -> list:
    """Nodes and leaf Tensors reachable from root, each after all of its parents (iterative DFS)."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent is not None and id(parent) not in seen:
                stack.append((parent, False))
    return order


def _ops():
    from . import ops
    return ops


def as_tensor(x, dtype=None, xp=None) -> Tensor:
    """Wrap an array (or nested lists) as a constant Tensor in namespace ``xp``."""
    if isinstance(x, Tensor):
        return x
    xp = xp or backend.default_namespace()
    return Tensor(xp.asarray(x, dtype=dtype))
