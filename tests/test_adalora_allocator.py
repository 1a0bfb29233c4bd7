"""RankAllocator and the orthogonal regularizer: the formulas of issue 6 (PEFT's), checked in isolation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minilora import backend, nn
from minilora.lora import get_lora_model
from minilora.lora.adalora import AdaLoraConfig, orthogonal_regularizer
from minilora.tensor import Tensor, no_grad
from minilora.testing import gradcheck


class Stack(nn.Module):
    """n Linear layers of drawn sizes, applied in turn (d_0 -> d_1 -> ... -> d_n)."""

    def __init__(self, dims, xp=np, dtype="float64", seed=0):
        rng = backend.Random(seed, xp)
        self.layers = nn.ModuleList(nn.Linear(a, b, dtype=getattr(xp, dtype), rng=rng) for a, b in zip(dims, dims[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).tanh()
        return x


def ada(dims, xp=np, **kw):
    kw = {"init_r": 3, "target_r": 1, "total_step": 10, "target_modules": r"layers\.\d+", **kw}
    return get_lora_model(Stack(dims, xp), AdaLoraConfig(**kw))


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a).astype(np.float64)


# ---------------------------------------------------------------- the budget schedule
@st.composite
def schedules(draw):
    n = draw(st.integers(1, 4))
    init_r = draw(st.integers(1, 12))
    target_r = draw(st.integers(1, init_r))
    total = draw(st.integers(2, 300))
    tinit = draw(st.integers(0, total - 1))
    tfinal = draw(st.integers(0, total - tinit - 1))
    return dict(n=n, init_r=init_r, target_r=target_r, total_step=total, tinit=tinit, tfinal=tfinal,
                deltaT=draw(st.integers(1, 5)))


@settings(max_examples=40)
@given(s=schedules(), data=st.data())
def test_budget_schedule_is_the_cubic_formula(s, data):
    n = s.pop("n")
    alloc = ada([2] * (n + 1), **s).rankallocator
    init_bgt, target_bgt = n * s["init_r"], n * s["target_r"]
    assert (alloc.init_bgt, alloc.target_bgt) == (init_bgt, target_bgt)
    total, tinit, tfinal = s["total_step"], s["tinit"], s["tfinal"]
    steps = sorted(data.draw(st.lists(st.integers(0, total + 20), min_size=2, max_size=12)))
    budgets = []
    for step in steps:
        budget, mask_now = alloc.budget_schedule(step)
        assert target_bgt <= budget <= init_bgt
        if step <= tinit:
            assert (budget, mask_now) == (init_bgt, False)
        elif step > total - tfinal:
            assert (budget, mask_now) == (target_bgt, True)
        else:
            m = 1 - (step - tinit) / (total - tfinal - tinit)
            assert budget == int((init_bgt - target_bgt) * m ** 3 + target_bgt)
            assert mask_now == (step % s["deltaT"] == 0)
        budgets.append(budget)
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))  # non-increasing
    assert alloc.budget_schedule(total - tfinal)[0] == target_bgt  # the schedule ends on the target


# ---------------------------------------------------------------- scores
def set_random_grads(model, seed):
    rng = np.random.default_rng(seed)
    for p in model.trainable_parameters():
        p.data = p.xp.asarray(rng.normal(size=p.shape), dtype=p.dtype)  # E != 0 so every score is nonzero
        p.grad = p.xp.asarray(rng.normal(size=p.shape), dtype=p.dtype)


def test_sensitivity_and_uncertainty_emas_match_the_formulas(xp):
    model = ada([4, 5, 3], xp, beta1=0.7, beta2=0.6)
    alloc = model.rankallocator
    ibar, ubar = {}, {}
    for seed in range(3):
        set_random_grads(model, seed)
        for key, p in alloc._params():
            i = np.abs(host(p) * host(p.grad))
            ibar[key] = 0.7 * ibar.get(key, 0) + 0.3 * i
            ubar[key] = 0.6 * ubar.get(key, 0) + 0.4 * np.abs(i - ibar[key])  # with the updated Ibar
        alloc.update_ipt()
    for key in ibar:
        np.testing.assert_allclose(host(alloc.element_score(key)), ibar[key] * ubar[key], rtol=1e-12)
    for path, layer in alloc.layers:
        s = {attr: ibar[(path, attr)] * ubar[(path, attr)] for attr in ("lora_A", "lora_E", "lora_B")}
        oracle = s["lora_E"][:, 0] + s["lora_A"].mean(axis=1) + s["lora_B"].mean(axis=0)
        np.testing.assert_allclose(host(alloc.triplet_scores()[path]), oracle, rtol=1e-12)


def test_parameters_without_gradients_are_skipped():
    model = ada([4, 5, 3])
    alloc = model.rankallocator
    set_random_grads(model, 0)
    first = alloc.layers[0][1]
    for attr in ("lora_A", "lora_E", "lora_B"):
        getattr(first, attr)["default"].grad = None  # e.g. a layer the batch did not reach
    alloc.update_ipt()
    assert (alloc.layers[0][0], "lora_A") not in alloc.exp_avg_ipt
    assert np.all(host(alloc.triplet_scores()[alloc.layers[0][0]]) == 0)
    pattern = alloc.mask_to_budget(alloc.init_bgt - 2)
    assert sum(map(sum, pattern.values())) <= alloc.init_bgt - 2


@settings(max_examples=25)
@given(dims=st.lists(st.integers(2, 6), min_size=2, max_size=5), init_r=st.integers(1, 4), data=st.data())
def test_masking_keeps_exactly_the_top_scores_within_budget(xp, dims, init_r, data):
    model = ada(dims, xp, init_r=init_r, target_r=1)
    alloc = model.rankallocator
    set_random_grads(model, data.draw(st.integers(0, 100)))
    alloc.update_ipt()
    budget = data.draw(st.integers(0, alloc.init_bgt))
    scores = {p: host(s) for p, s in alloc.triplet_scores().items()}
    flat = np.concatenate(list(scores.values()))
    assume(len(np.unique(flat)) == len(flat))  # ties aside
    e_before = {p: host(layer.lora_E["default"]) for p, layer in alloc.layers}
    with no_grad():
        pattern = alloc.mask_to_budget(budget)
    kept = np.concatenate([np.array(pattern[f"{p}.lora_E"]) for p in scores])
    assert kept.sum() == budget  # <= budget in general; == when no scores tie
    top = np.argsort(flat)[len(flat) - budget:]
    assert set(np.flatnonzero(kept)) == set(top)
    for path, layer in alloc.layers:
        keep = np.array(pattern[f"{path}.lora_E"])
        e = host(layer.lora_E["default"])[:, 0]
        assert np.all(e[~keep] == 0) and np.all(e[keep] == e_before[path][keep, 0])


def test_update_and_allocate_phases_end_on_the_target_and_stay_there():
    model = ada([4, 5, 6, 3], init_r=4, target_r=2, total_step=12, tinit=2, tfinal=4)
    config, alloc = model.peft_config["default"], model.rankallocator
    for step in range(16):
        set_random_grads(model, step)  # moves every E away from 0, as an optimizer step would
        model.update_and_allocate(step)
        kept = sum(map(sum, config.rank_pattern.values())) if config.rank_pattern else alloc.init_bgt
        assert kept <= alloc.budget_schedule(step)[0]
        if step <= 2:
            assert config.rank_pattern is None
        if step == 8:
            final = {k: list(v) for k, v in config.rank_pattern.items()}
            assert kept == alloc.target_bgt == 6 and alloc.exp_avg_ipt == {}
        if step >= 8:
            assert config.rank_pattern == final
            for path, layer in alloc.layers:
                e = host(layer.lora_E["default"])[:, 0]
                assert np.all((e != 0) == np.array(final[f"{path}.lora_E"]))


def test_the_allocator_alone_runs_all_three_phases():
    """RankAllocator.update_and_allocate owns warm-up, cubic budget and the fixed final pattern:
    driven directly, it leaves the triplets exactly as AdaLoraModel.update_and_allocate does."""
    kw = dict(init_r=4, target_r=2, total_step=12, tinit=2, tfinal=4)
    via_model, direct = ada([4, 5, 6, 3], **kw), ada([4, 5, 6, 3], **kw)
    pattern = None
    for step in range(16):
        set_random_grads(via_model, step)
        set_random_grads(direct, step)
        via_model.update_and_allocate(step)
        with no_grad():
            budget, found = direct.rankallocator.update_and_allocate(step, pattern)
        pattern = found or pattern
        assert budget == direct.rankallocator.budget_schedule(step)[0]
        assert pattern == via_model.peft_config["default"].rank_pattern
        if step == 8:  # T - tfinal: the final pattern, and the scores are dropped
            assert found is not None and direct.rankallocator.exp_avg_ipt == {}
        for (_, a), (_, b) in zip(via_model.rankallocator.layers, direct.rankallocator.layers):
            np.testing.assert_array_equal(host(a.lora_E["default"]), host(b.lora_E["default"]))


def test_equal_init_and_target_rank_never_masks():
    model = ada([3, 3], init_r=2, target_r=2, total_step=5)
    set_random_grads(model, 0)
    model.update_and_allocate(3)
    assert model.peft_config["default"].rank_pattern == {"layers.0.lora_E": [True, True]}


# ---------------------------------------------------------------- orthogonal regularization
def regularizer_oracle(model):
    terms = []
    for _, layer in model.rankallocator.layers:
        a, b = host(layer.lora_A["default"]), host(layer.lora_B["default"])
        terms += [np.linalg.norm(a @ a.T - np.eye(len(a))), np.linalg.norm(b.T @ b - np.eye(b.shape[1]))]
    return np.mean(terms)  # PEFT: the mean over the 2n factors


@settings(max_examples=15)
@given(dims=st.lists(st.integers(1, 6), min_size=2, max_size=4), init_r=st.integers(1, 4),
       weight=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 50))
def test_regularizer_is_nonnegative_and_matches_the_oracle(xp, dims, init_r, weight, seed):
    model = ada(dims, xp, init_r=init_r, orth_reg_weight=weight)
    set_random_grads(model, seed)
    value = float(host(model.regularization_loss()))
    assert value >= 0
    np.testing.assert_allclose(value, weight * regularizer_oracle(model), rtol=1e-10)


def test_regularizer_is_zero_for_orthonormal_factors(xp):
    model = ada([8, 7, 6], xp, init_r=3)
    rng = np.random.default_rng(0)
    for _, layer in model.rankallocator.layers:
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        q_a, _ = np.linalg.qr(rng.normal(size=(a.shape[1], a.shape[0])))  # orthonormal columns
        q_b, _ = np.linalg.qr(rng.normal(size=b.shape))
        a.data, b.data = xp.asarray(q_a.T), xp.asarray(q_b)
    assert float(host(model.regularization_loss())) < 1e-12


def test_regularizer_gradient_passes_gradcheck(xp):
    model = ada([4, 5, 3], xp, init_r=2)
    layers = model.rankallocator.layers
    params = [getattr(layer, attr)["default"] for _, layer in layers for attr in ("lora_A", "lora_B")]

    def f(*ps):
        for (_, layer), a, b in zip(layers, ps[::2], ps[1::2]):
            for holder, value in ((layer.lora_A, a), (layer.lora_B, b)):
                value.__class__ = type(params[0])  # AdapterDict holds Parameters (same slots)
                holder["default"] = value
        return orthogonal_regularizer(layers, "default")
    try:
        gradcheck(f, *params)
    finally:
        f(*params)


def test_allocator_state_round_trip_resumes_exactly():
    """A run resumed from (parameters, config.rank_pattern, allocator state) masks like an uninterrupted one."""
    def run(steps, model=None):
        model = model or ada([4, 5, 6, 3], init_r=4, target_r=2, total_step=12, tinit=1, tfinal=3)
        for step in steps:
            set_random_grads(model, step)
            model.update_and_allocate(step)
        return model

    whole = run(range(12))
    first = run(range(6))
    state = {k: v.copy() for k, v in first.rankallocator.state_dict().items()}
    assert len(state) == 2 * 3 * 3  # two EMAs x three layers x (A, E, B)
    resumed = ada([4, 5, 6, 3], init_r=4, target_r=2, total_step=12, tinit=1, tfinal=3)
    resumed.peft_config["default"].rank_pattern = first.peft_config["default"].rank_pattern
    resumed.rankallocator.load_state_dict(state)
    run(range(6, 12), resumed)
    assert resumed.peft_config["default"].rank_pattern == whole.peft_config["default"].rank_pattern
    for (path, layer), (_, other) in zip(resumed.rankallocator.layers, whole.rankallocator.layers):
        np.testing.assert_array_equal(host(layer.lora_E["default"]), host(other.lora_E["default"]))
    with pytest.raises(ValueError, match="unexpected key"):
        resumed.rankallocator.load_state_dict({"exp_avg_ipt|nowhere.lora_A": np.zeros(1)})
