"""LoRA+ param groups: partition, exact ratio, embedding adapters, ratio-1 identity, first-step ratio."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilora.lora import LoraConfig, get_lora_model
from minilora.nn import Embedding, LayerNorm, Linear, Module
from minilora.optim import AdamW, create_loraplus_optimizer, loraplus_param_groups
from minilora.tensor import Tensor


class Toy(Module):
    def __init__(self, seed=0, dtype=np.float64):
        from minilora.backend import Random
        rng = Random(seed)
        self.embed = Embedding(11, 6, dtype=dtype, rng=rng)
        self.q_proj = Linear(6, 6, bias=True, dtype=dtype, rng=rng)
        self.v_proj = Linear(6, 4, bias=False, dtype=dtype, rng=rng)
        self.norm = LayerNorm(4, dtype=dtype)

    def forward(self, ids):
        return self.norm(self.v_proj(self.q_proj(self.embed(ids))))


def _model(targets=("q_proj", "v_proj"), bias="none", seed=0):
    config = LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), bias=bias, init_lora_weights=False)
    return get_lora_model(Toy(seed), config)


def _unfreeze_norm(model):
    for name, p in model.named_parameters():
        if "norm" in name:
            p.requires_grad = True


def _ids():
    return np.array([[1, 2, 3, 4], [5, 6, 7, 10]])


def test_groups_partition_the_trainable_parameters():
    model = _model(targets=("embed", "q_proj", "v_proj"), bias="lora_only")
    _unfreeze_norm(model)
    groups = loraplus_param_groups(model, lr=1e-3, loraplus_lr_ratio=16)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not frozen & set(grouped)


def test_group_order_learning_rates_and_membership():
    model = _model(targets=("embed", "q_proj", "v_proj"), bias="lora_only")
    _unfreeze_norm(model)
    groups = loraplus_param_groups(model, lr=2e-4, loraplus_lr_ratio=16, loraplus_lr_embedding=5e-6,
                                   weight_decay=0.1)
    assert [g["name"] for g in groups] == ["A", "embedding", "B", "B_no_decay"]
    by_name = {g["name"]: g for g in groups}
    assert by_name["B"]["lr"] / by_name["A"]["lr"] == 16
    assert by_name["embedding"]["lr"] == 5e-6 and by_name["B_no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    member = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert all("lora_A" in n for n in member["A"]) and len(member["A"]) == 2
    assert sorted(n.split(".")[-2] for n in member["embedding"]) == ["lora_embedding_A", "lora_embedding_B"]
    assert all("lora_B" in n for n in member["B"]) and len(member["B"]) == 2
    assert all(n.endswith("bias") or "norm" in n for n in member["B_no_decay"])


def test_a_model_without_embedding_adapters_has_an_empty_embedding_group():
    groups = loraplus_param_groups(_model(), lr=1e-3, loraplus_lr_ratio=8)
    assert groups[1]["name"] == "embedding" and groups[1]["params"] == []


@pytest.mark.parametrize("bad", [None, 0, -2.0, "16", True])
def test_ratio_is_required_and_positive(bad):
    with pytest.raises(ValueError, match="loraplus_lr_ratio"):
        loraplus_param_groups(_model(), lr=1e-3, loraplus_lr_ratio=bad)


def test_ratio_below_one_warns():
    with pytest.warns(UserWarning, match="slower"):
        loraplus_param_groups(_model(), lr=1e-3, loraplus_lr_ratio=0.5)


def _train(model, optimizer, steps):
    for _ in range(steps):
        out = model(_ids())
        (out * out).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}


@settings(max_examples=8)
@given(steps=st.integers(1, 6), lr=st.sampled_from([1e-3, 3e-2]), seed=st.integers(0, 100))
def test_ratio_one_is_bit_identical_to_plain_adamw(steps, lr, seed):
    a = _model(targets=("embed", "q_proj", "v_proj"), bias="all", seed=seed)
    b = _model(targets=("embed", "q_proj", "v_proj"), bias="all", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plus = create_loraplus_optimizer(a, AdamW, lr=lr, loraplus_lr_ratio=1, loraplus_lr_embedding=lr,
                                         weight_decay=0.0)
    plain = AdamW([p for p in b.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    got, want = _train(a, plus, steps), _train(b, plain, steps)
    assert got.keys() == want.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_first_step_from_b_zero_moves_b_ratio_times_as_far():
    ratio, lr, eps = 16.0, 1e-3, 1e-8
    model = get_lora_model(Toy(3), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    b_param = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert not np.any(b_param.data)
    optimizer = create_loraplus_optimizer(model, AdamW, lr=lr, loraplus_lr_ratio=ratio, weight_decay=0.0, eps=eps)
    out = model(_ids())
    (out * out).sum().backward()
    g = b_param.grad.copy()
    optimizer.step()
    # AdamW's first step: m_hat = g, v_hat = g^2, so the update is -lr_B * g / (|g| + eps)
    np.testing.assert_allclose(b_param.data, -lr * ratio * g / (np.abs(g) + eps), rtol=1e-12, atol=0)
    assert isinstance(out, Tensor)
