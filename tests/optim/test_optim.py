"""Optimizers against hand computations, schedules, clipping, and saved state."""
import math

import numpy as np
import pytest

from minilora.nn import Parameter
from minilora.optim import SGD, AdamW, LRScheduler, clip_grad_norm, cosine_with_warmup


def _param(values):
    return Parameter(np.asarray(values, dtype=np.float64))


def test_adamw_matches_a_step_by_step_hand_computation():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.95, 1e-8, 0.1
    p = _param(p0.copy())
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    theta, m, v = p0.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, start=1):
        p.grad = g.copy()
        opt.step()
        theta = theta - lr * wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        theta = theta - lr * mhat / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(p.data, theta, rtol=1e-12, atol=1e-15)


def test_adamw_first_step_is_lr_times_sign():
    p = _param([0.0, 0.0, 0.0])
    opt = AdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = np.array([3.0, -0.5, 1e-3])
    opt.step()
    np.testing.assert_allclose(p.data, [-0.1, 0.1, -0.1], rtol=1e-4)


def test_sgd_momentum_matches_hand_computation():
    p = _param([1.0, -2.0])
    opt = SGD([p], lr=0.5, momentum=0.9)
    buf, theta = None, np.array([1.0, -2.0])
    for g in ([1.0, 1.0], [0.5, -1.0], [2.0, 0.0]):
        p.grad = np.array(g)
        opt.step()
        buf = np.array(g) if buf is None else 0.9 * buf + np.array(g)
        theta = theta - 0.5 * buf
        np.testing.assert_allclose(p.data, theta, rtol=1e-14)


def test_param_groups_inherit_defaults_and_keep_their_own_lr():
    a, b = _param([1.0]), _param([1.0])
    opt = AdamW([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["weight_decay"] == 0.01


def test_a_parameter_in_two_groups_is_rejected():
    a = _param([1.0])
    with pytest.raises(ValueError, match="more than one"):
        AdamW([{"params": [a]}, {"params": [a]}])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "0.1"])
def test_bad_learning_rate_is_rejected(bad):
    with pytest.raises(ValueError, match="lr"):
        AdamW([_param([1.0])], lr=bad)


def test_schedule_scales_every_group_by_the_same_factor():
    a, b = _param([1.0]), _param([1.0])
    opt = AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 16e-3}])
    sched = LRScheduler(opt, total_steps=100, warmup_steps=10)
    for step in (0, 5, 10, 37, 99):
        sched.set_step(step)
        assert opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"] == pytest.approx(16.0, rel=1e-12)


def test_cosine_with_warmup_shape():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    values = [cosine_with_warmup(s, 100, 10) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(values, values[1:]))


def test_clip_grad_norm_scales_to_max_norm_and_reports_the_old_norm():
    a, b = _param([0.0, 0.0]), _param([0.0])
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert norm == pytest.approx(5.0)
    total = math.sqrt(float(np.sum(a.grad ** 2) + np.sum(b.grad ** 2)))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_small_and_non_finite_gradients_alone():
    a = _param([0.0])
    a.grad = np.array([0.5])
    assert clip_grad_norm([a], 1.0) == pytest.approx(0.5) and a.grad[0] == 0.5
    a.grad = np.array([np.inf])
    assert not math.isfinite(clip_grad_norm([a], 1.0))


def test_optimizer_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(3) for _ in range(6)]
    p1 = _param([1.0, 2.0, 3.0])
    o1 = AdamW([p1], lr=0.05)
    for g in grads:
        p1.grad = g
        o1.step()
    p2 = _param([1.0, 2.0, 3.0])
    o2 = AdamW([p2], lr=0.05)
    for g in grads[:3]:
        p2.grad = g
        o2.step()
    saved = o2.state_dict()
    p3 = Parameter(p2.data.copy())
    o3 = AdamW([p3], lr=0.05)
    o3.load_state_dict(saved)
    for g in grads[3:]:
        p3.grad = g
        o3.step()
    np.testing.assert_array_equal(p3.data, p1.data)


def test_clip_grad_norm_uses_a_norm_the_caller_already_has():
    a = _param([0.0, 0.0])
    a.grad = np.array([3.0, 4.0])
    assert clip_grad_norm([a], max_norm=1.0, norm=5.0) == 5.0
    np.testing.assert_allclose(a.grad, [0.6, 0.8], rtol=1e-5)
