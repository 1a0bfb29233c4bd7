"""Tensor autodiff: topological backward, accumulation, no_grad, frozen inputs, graph freeing, errors."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend, ops
from minilora.tensor import Tensor, enable_grad, is_grad_enabled, no_grad


def t(xp, values, requires_grad=True):
    return Tensor(backend.from_numpy(np.asarray(values, dtype=np.float64), xp), requires_grad=requires_grad)


def g(tensor):
    return backend.to_numpy(tensor.grad)


@given(values=st.lists(st.floats(-3, 3), min_size=1, max_size=5))
def test_shared_subexpressions(xp, values):
    """x*x, and a diamond: y = a*b + a*c with b = exp(x), c = tanh(x), a = 2x: every path counted once."""
    x0 = np.asarray(values)
    x = t(xp, x0)
    (x * x).sum().backward()
    np.testing.assert_allclose(g(x), 2 * x0, rtol=1e-12)

    x = t(xp, x0)
    a = x * 2.0
    y = (a * ops.exp(x) + a * ops.tanh(x)).sum()
    y.backward()
    expected = 2 * np.exp(x0) + 2 * x0 * np.exp(x0) + 2 * np.tanh(x0) + 2 * x0 * (1 - np.tanh(x0) ** 2)
    np.testing.assert_allclose(g(x), expected, rtol=1e-12)


def test_deep_diamond_chain_is_linear_in_depth(xp):
    """h_{i+1} = h_i + h_i doubles the gradient each level; a wrong (tree-walk) order would explode or miss."""
    x = t(xp, [1.0, 2.0])
    h = x
    for _ in range(40):
        h = h + h
    h.sum().backward()
    np.testing.assert_allclose(g(x), [2.0 ** 40] * 2)


def test_deep_chain_does_not_recurse(xp):
    x = t(xp, [1.0])
    h = x
    for _ in range(5000):
        h = h * 1.0
    h.sum().backward()
    assert g(x)[0] == 1.0


def test_grad_accumulates_on_leaves_over_backward_calls(xp):
    x = t(xp, [1.0, -2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(g(x), [3 + 2, 3 - 4])


def test_leaf_grads_are_fresh_writable_arrays(xp):
    """a + b used to hand both leaves the same cotangent object, and sum's VJP a read-only broadcast
    view: an in-place update of one grad (grad clipping) then corrupted the other or failed."""
    a, b = t(xp, [1.0, 2.0]), t(xp, [3.0, 4.0])
    (a + b).sum().backward()
    assert a.grad is not b.grad
    a.grad *= 0.5
    np.testing.assert_allclose(g(b), [1.0, 1.0])
    np.testing.assert_allclose(g(a), [0.5, 0.5])
    u = backend.from_numpy(np.ones(2), xp)
    c = t(xp, [1.0, 1.0])
    (c * 1.0).backward(u)
    assert c.grad is not u


def test_leaf_grad_has_the_leaf_dtype(xp):
    x = Tensor(xp.asarray([1.0, 2.0], dtype=xp.float32), requires_grad=True)
    y = x * Tensor(xp.asarray([1.0, 1.0], dtype=xp.float64))
    y.sum().backward()
    assert x.grad.dtype == xp.float32


def test_no_grad_records_nothing(xp):
    x = t(xp, [1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = (x * x).sum()
        with enable_grad():
            z = (x * x).sum()
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y._vjp is None
    assert z.requires_grad and z._parents[0]._parents == (x, x)
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError
    assert is_grad_enabled()


def test_frozen_inputs_build_no_graph_and_keep_nothing_alive(xp):
    w = t(xp, [[1.0, 2.0], [3.0, 4.0]], requires_grad=False)
    x = t(xp, [[1.0, 1.0]], requires_grad=False)
    out = ops.matmul(x, w)
    assert not out.requires_grad and out._parents == () and out._vjp is None

    a = t(xp, [[0.5, 0.5]])
    out = ops.matmul(a, w)  # one input requires grad
    assert out._parents[0] is a and out._parents[1] is None
    frozen = t(xp, [[1.0, 0.0], [0.0, 1.0]], requires_grad=False)
    ref = weakref.ref(frozen)
    out = ops.matmul(a, frozen) + ops.exp(frozen)
    del frozen
    gc.collect()
    assert ref() is None, "the graph keeps a frozen Tensor alive"
    out.sum().backward()
    np.testing.assert_allclose(g(a), [[2.0, 2.0]])  # out broadcasts to (2, 2)


def test_backward_frees_the_graph(xp):
    x = t(xp, [1.0, 2.0])
    hidden = ops.exp(x)
    tensor_ref, node_ref = weakref.ref(hidden), weakref.ref(hidden._node)
    y = (hidden * 2.0).sum()
    del hidden
    gc.collect()
    assert tensor_ref() is None  # the graph keeps the intermediate's Node, not the Tensor
    assert node_ref() is not None
    y.backward()
    gc.collect()
    assert node_ref() is None, "backward left the intermediate's node alive"
    assert y._parents == () and y._vjp is None
    assert np.allclose(backend.to_numpy(x.grad), 2 * np.exp([1.0, 2.0]))


def test_the_graph_keeps_no_intermediate_array_that_no_vjp_needs(xp):
    """mul saves its inputs and sum only a shape, so the product's array dies with its Tensor
    (the graph used to hold every intermediate Tensor, and so every intermediate array, until backward)."""
    x = t(xp, [1.0, 2.0, 3.0])
    h = x * 2.0
    array_ref = weakref.ref(h.data) if backend.backend_name(xp) == "numpy" else None
    y = h.sum()
    del h
    gc.collect()
    if array_ref is not None:
        assert array_ref() is None
    y.backward()
    assert np.allclose(backend.to_numpy(x.grad), [2.0, 2.0, 2.0])


def test_second_backward_through_a_freed_graph_raises(xp):
    """Two losses sharing a trunk, each with its own backward: the second used to treat the freed
    trunk as a leaf and silently gave the parameters no gradient from it."""
    x = t(xp, [1.0, 2.0])
    trunk = ops.exp(x)
    loss1, loss2 = trunk.sum(), (trunk * trunk).sum()
    loss1.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        loss2.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        loss1.backward()


def test_backward_argument_errors(xp):
    x = t(xp, [1.0, 2.0])
    with pytest.raises(ValueError, match="non-scalar"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\)"):
        (x * 2.0).backward(backend.from_numpy(np.ones(3), xp))
    y = x * 2.0
    y.backward(1.0)  # a Python number means a constant cotangent
    np.testing.assert_allclose(g(x), [2.0, 2.0])


def test_a_wrong_vjp_shape_is_reported(xp):
    from minilora.tensor import Primitive, apply

    def bad_forward(a):
        return a * 2, lambda g_, needs: (xp.sum(g_),)  # forgets to broadcast back
    x = t(xp, [1.0, 2.0])
    y = apply(Primitive("bad", bad_forward), x)
    with pytest.raises(RuntimeError, match="VJP of 'bad'.*shape"):
        y.sum().backward()


def test_getitem_basic_keys_and_rejects_fancy(xp):
    x = t(xp, np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(x[0].numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(x[:, 1].numpy(), [1, 5, 9])
    assert x[None, 1].shape == (1, 4)
    x[None, 1:, ::2].sum().backward()
    np.testing.assert_array_equal(g(x), [[0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0]])
    with pytest.raises(ValueError, match="basic indexing"):
        x[backend.from_numpy(np.array([0, 0]), xp)]


def test_tensor_facts_and_helpers(xp):
    x = t(xp, [[1.0, 2.0, 3.0]])
    assert x.shape == (1, 3) and x.ndim == 2 and x.size == 3 and len(x) == 1 and x.is_leaf
    assert not x.detach().requires_grad and x.detach().data is x.data
    assert (x * 2.0).is_leaf is False
    assert x.T.shape == (3, 1) and x.reshape(3).shape == (3,) and x.permute(1, 0).shape == (3, 1)
    assert x.sum().item() == 6.0
    with pytest.raises(ValueError, match="one-element"):
        x.item()
    with pytest.raises(TypeError, match="already a Tensor"):
        Tensor(x)
    y = 2.0 - x / 2.0 + (-x) ** 2
    np.testing.assert_allclose(y.numpy(), 2.0 - np.array([[1, 2, 3]]) / 2 + np.array([[1, 4, 9]]))


def test_getitem_accepts_numpy_integers_and_tensor_accepts_lists(xp):
    """Indices from a NumPy loop (np.int64) used to be rejected as non-basic keys."""
    x = t(xp, np.arange(6.0).reshape(2, 3))
    x[np.int64(1), np.int64(1):].sum().backward()
    np.testing.assert_array_equal(g(x), [[0, 0, 0], [0, 1, 1]])
    with pytest.raises(ValueError, match="basic indexing"):
        x[True]
    y = Tensor([[1.0, 2.0]])
    assert y.shape == (1, 2) and backend.namespace_of(y.data) is xp
