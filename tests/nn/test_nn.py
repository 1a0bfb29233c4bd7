"""nn: parameter names, tied weights, submodules by path, state dicts, modes, layer errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend, functional as F, ops
from minilora.backend import Random
from minilora.nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter, RMSNorm, StateDictError
from minilora.tensor import Tensor


class Block(Module):
    def __init__(self, rng, dim=4):
        self.norm = RMSNorm(dim, xp=rng.xp)
        self.proj = Linear(dim, dim, rng=rng)
        self.drop = Dropout(0.5, rng=rng)

    def forward(self, x):
        return self.drop(self.proj(self.norm(x)))


class Tiny(Module):
    def __init__(self, rng, vocab=7, dim=4, layers=2, tie=True):
        self.embed = Embedding(vocab, dim, rng=rng)
        self.layers = ModuleList([Block(rng, dim) for _ in range(layers)])
        self.head = Linear(dim, vocab, bias=False, rng=rng)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = h + layer(h)
        return self.head(h)


def names(module):
    return [n for n, _ in module.named_parameters()]


def test_named_parameters_dotted_paths_and_tied_once(xp):
    model = Tiny(Random(0, xp))
    assert names(model) == ["embed.weight", "layers.0.norm.weight", "layers.0.proj.weight", "layers.0.proj.bias",
                            "layers.1.norm.weight", "layers.1.proj.weight", "layers.1.proj.bias"]
    all_names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert "head.weight" in all_names and len(all_names) == len(names(model)) + 1
    assert model.num_parameters() == 7 * 4 + 2 * (4 + 16 + 4)
    assert [n for n, _ in model.named_modules()][:4] == ["", "embed", "layers", "layers.0"]
    assert list(model.state_dict()) == names(model)


def test_get_and_set_submodule(xp):
    rng = Random(0, xp)
    model = Tiny(rng)
    assert model.get_submodule("layers.1.proj") is model.layers[1].proj
    assert model.get_submodule("") is model
    new = Linear(4, 4, rng=rng)
    model.set_submodule("layers.1.proj", new)
    assert model.layers[1].proj is new and "layers.1.proj.weight" in names(model)
    with pytest.raises(KeyError, match="layers.9"):
        model.get_submodule("layers.9.proj")
    with pytest.raises(KeyError):
        model.set_submodule("layers.0.nothing", new)
    with pytest.raises(IndexError, match="out of range"):
        model.layers[5]
    assert model.layers[-1] is model.layers[1]


def test_state_dict_round_trip(xp):
    a, b = Tiny(Random(0, xp)), Tiny(Random(1, xp))
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    assert b.head.weight is b.embed.weight  # still tied


def test_load_state_dict_copies_and_accepts_host_arrays_and_tied_aliases(xp):
    model = Tiny(Random(0, xp))
    state = {k: backend.to_numpy(v) + 1.0 for k, v in model.state_dict().items()}
    state["head.weight"] = state["embed.weight"]  # a Hugging Face style checkpoint lists both names
    model.load_state_dict(state)
    np.testing.assert_allclose(model.embed.weight.numpy(), state["embed.weight"])
    assert backend.namespace_of(model.embed.weight.data) is xp and model.embed.weight.dtype == xp.float32
    state["embed.weight"] += 1.0
    assert not np.allclose(model.embed.weight.numpy(), state["embed.weight"])  # a copy, not a view


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_load_state_dict_errors_name_the_key_and_leave_the_module_unchanged(xp, problem):
    model = Tiny(Random(0, xp))
    before = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
    state = {k: backend.to_numpy(v) * 0.0 for k, v in model.state_dict().items()}
    if problem == "missing":
        del state["layers.1.proj.bias"]
        match = r"missing key 'layers.1.proj.bias' \(expected shape \(4,\)\)"
    elif problem == "unexpected":
        state["layers.2.proj.weight"] = np.zeros((4, 4))
        match = r"unexpected key 'layers.2.proj.weight' \(shape \(4, 4\)\)"
    else:
        state["layers.0.proj.weight"] = np.zeros((4, 5))
        match = r"'layers.0.proj.weight': expected shape \(4, 4\), found \(4, 5\)"
    with pytest.raises(StateDictError, match=match):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(backend.to_numpy(v), before[k])
    if problem != "shape":
        model.load_state_dict(state, strict=False)  # non-strict tolerates missing/unexpected keys
        assert np.all(model.layers[0].proj.weight.numpy() == 0)


def test_linear_and_matmul_shape_errors(xp):
    layer = Linear(3, 2, rng=Random(0, xp))
    with pytest.raises(ValueError, match=r"Linear\(3 -> 2\).*4 features"):
        layer(Tensor(xp.ones((5, 4), dtype=xp.float32)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2, 3\)"):
        ops.matmul(Tensor(xp.ones((2, 3))), Tensor(xp.ones((2, 3))))
    with pytest.raises(ValueError, match="linear: input of shape"):
        F.linear(Tensor(xp.ones((2, 4), dtype=xp.float32)), layer.weight)
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)


@given(lead=st.lists(st.integers(1, 3), max_size=2).map(tuple), seed=st.integers(0, 2**32 - 1))
def test_linear_matches_its_formula(xp, lead, seed):
    layer = Linear(3, 2, rng=Random(seed, xp), dtype=xp.float64)
    x = np.random.default_rng(seed).standard_normal(lead + (3,))
    y = layer(Tensor(backend.from_numpy(x, xp))).numpy()
    np.testing.assert_allclose(y, x @ layer.weight.numpy().T + layer.bias.numpy(), rtol=1e-12)
    bound = 1 / np.sqrt(3)
    assert np.all(np.abs(layer.weight.numpy()) <= bound)


def test_train_eval_toggle_dropout(xp):
    model = Tiny(Random(0, xp))
    x = Tensor(xp.ones((64, 4), dtype=xp.float32))
    drop = model.layers[0].drop
    assert model.training and drop.training
    y = drop(x).numpy()
    assert np.any(y == 0) and np.allclose(y[y != 0], 2.0)
    model.eval()
    assert not drop.training and all(not m.training for m in model.modules())
    assert drop(x) is x
    model.train()
    assert drop.training
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)


def test_freeze_zero_grad_and_trainable(xp):
    model = Tiny(Random(0, xp))
    ids = backend.from_numpy(np.array([[1, 2, 3]]), xp)
    model.eval()
    model(ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.layers[0].freeze()
    trainable = model.trainable_parameters()
    assert model.layers[0].proj.weight not in trainable and model.layers[1].proj.weight in trainable
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - (4 + 16 + 4)
    model(ids).sum().backward()
    assert model.layers[0].proj.weight.grad is None and model.layers[1].proj.weight.grad is not None


def test_embedding_gradient_accumulates_repeated_ids(xp):
    emb = Embedding(5, 3, rng=Random(0, xp), dtype=xp.float64)
    ids = backend.from_numpy(np.array([[1, 1, 4], [1, 0, 4]]), xp)
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    out.sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(emb.weight.grad)[:, 0], [1, 3, 0, 0, 2])


def test_norm_layers_and_astype(xp):
    ln, rms = LayerNorm(4, xp=xp), RMSNorm(4, xp=xp)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = ln(Tensor(backend.from_numpy(x, xp))).numpy()
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-6)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-3)
    z = rms(Tensor(backend.from_numpy(x, xp))).numpy()
    np.testing.assert_allclose((z ** 2).mean(-1), 1, rtol=1e-4)
    ln.astype(xp.float64)
    assert ln.weight.dtype == xp.float64 and ln.bias.dtype == xp.float64
    assert isinstance(ln.weight, Parameter) and ln.weight.requires_grad


def test_embedding_rejects_out_of_range_and_float_ids(xp):
    """A negative id (e.g. -100 padding) used to wrap to the last row in the forward pass, while the
    portable scatter-add dropped its gradient: numpy and array_api_strict disagreed."""
    emb = Embedding(5, 3, rng=Random(0, xp))
    for bad in ([[0, -1]], [[5, 0]], [[-100, 2]]):
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
            emb(backend.from_numpy(np.array(bad), xp))
    with pytest.raises(ValueError, match="integers"):
        emb(backend.from_numpy(np.array([[0.0, 1.0]]), xp))
    assert emb(backend.from_numpy(np.zeros((2, 0), dtype=np.int64), xp)).shape == (2, 0, 3)
