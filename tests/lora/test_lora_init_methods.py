"""PiSSA, randomized PiSSA, OLoRA and LoftQ as pure array functions, on every backend (issue 15.2)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import backend
from minilora.errors import ConfigError
from minilora.lora import init_methods as im
from minilora.quant.quantize import dequantize_4bit, quantize_4bit


def host(a):
    return backend.to_numpy(a).astype(np.float64)


def weight(xp, d_out, d_in, seed=0, structured=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_out, d_in))
    if structured:  # a dominant low-rank part, as trained weights have
        w = 0.02 * w + 0.05 * rng.standard_normal((d_out, 4)) @ rng.standard_normal((4, d_in))
    return backend.from_numpy(w.astype(np.float32), xp)


dims = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda s: st.tuples(st.just(s[0]), st.just(s[1]), st.integers(1, min(s))))


@settings(max_examples=15)
@given(dims=dims, scaling=st.sampled_from([0.5, 1.0, 2.0, 16.0]), kind=st.sampled_from(["pissa", "olora", "niter"]))
def test_residual_plus_adapter_is_the_weight(xp, dims, scaling, kind):
    d_out, d_in, r = dims
    w = weight(xp, d_out, d_in)
    if kind == "pissa":
        a, b, res = im.pissa(xp, w, r, scaling)
    elif kind == "olora":
        a, b, res = im.olora(xp, w, r, scaling)
    else:
        a, b, res = im.pissa_lowrank(xp, w, r, scaling, 2, backend.Random(0, xp=xp))
    assert tuple(a.shape) == (r, d_in) and tuple(b.shape) == (d_out, r) and tuple(res.shape) == (d_out, d_in)
    rebuilt = host(res) + scaling * host(b) @ host(a)
    np.testing.assert_allclose(rebuilt, host(w), atol=5e-6 * max(1.0, np.abs(host(w)).max()) * (1 + scaling))


def test_pissa_takes_the_principal_singular_directions(xp):
    w = weight(xp, 10, 7, seed=1)
    a, b, res = im.pissa(xp, w, 3, 2.0)
    u, s, vh = np.linalg.svd(host(w), full_matrices=False)
    np.testing.assert_allclose(2.0 * host(b) @ host(a), (u[:, :3] * s[:3]) @ vh[:3], atol=1e-5)
    # the residual holds exactly the minor directions: its singular values are s[3:]
    np.testing.assert_allclose(np.linalg.svd(host(res), compute_uv=False)[:4], s[3:7], atol=1e-5)
    # A and B carry sqrt(S / s) each: B^T B = A A^T = diag(S_r / s)
    np.testing.assert_allclose(host(b).T @ host(b), np.diag(s[:3] / 2.0), atol=1e-5)
    np.testing.assert_allclose(host(a) @ host(a).T, np.diag(s[:3] / 2.0), atol=1e-5)


def test_randomized_svd_error_falls_with_subspace_iterations(xp):
    w = weight(xp, 40, 30, seed=2, structured=True)
    exact = np.linalg.svd(host(w), compute_uv=False)
    best = np.sqrt(np.sum(exact[4:] ** 2))  # Eckart-Young: the optimum rank-4 error
    errors = []
    for niter in (0, 1, 4):
        u, s, vh = im.randomized_svd(xp, w, 4, niter, backend.Random(5, xp=xp))
        errors.append(np.linalg.norm(host(w) - (host(u) * host(s)) @ host(vh)))
    assert best <= errors[-1] <= errors[0]
    assert errors[-1] < best * 1.01


def test_olora_b_is_orthonormal_and_a_upper_triangular(xp):
    w = weight(xp, 9, 6, seed=3)
    a, b, _ = im.olora(xp, w, 4, 1.0)
    np.testing.assert_allclose(host(b).T @ host(b), np.eye(4), atol=1e-5)
    assert np.allclose(np.tril(host(a)[:, :4], -1), 0.0)


def nf4_roundtrip(w):
    packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", double_quant=False)
    return dequantize_4bit(packed, state), (packed, state)


def loftq_error(xp, w, r, scaling, iters):
    _, deq, a, b = im.loftq(xp, w, r, scaling, iters, nf4_roundtrip)
    return np.linalg.norm(host(w) - (host(deq) + scaling * host(b) @ host(a)))


@pytest.mark.parametrize("seed", [0, 1])
def test_loftq_beats_plain_quantization_and_improves_with_iterations(seed):
    xp = backend.namespace_named("numpy")
    w = weight(xp, 64, 96, seed=seed, structured=True)
    plain = np.linalg.norm(host(w) - host(nf4_roundtrip(w)[0]))
    one, five = loftq_error(xp, w, 8, 2.0, 1), loftq_error(xp, w, 8, 2.0, 5)
    assert one < plain and five < one


def test_loftq_payload_dequantizes_to_the_returned_base(xp):
    w = weight(xp, 16, 64, seed=4, structured=True)
    (packed, state), deq, a, b = im.loftq(xp, w, 2, 1.0, 2, nf4_roundtrip)
    np.testing.assert_array_equal(host(dequantize_4bit(packed, state)), host(deq))


def test_loftq_with_scaling_puts_the_same_product_in_place():
    """s B A is the same rank-r correction whatever s is (PEFT's factors are recovered at s = 1)."""
    xp = backend.namespace_named("numpy")
    w = weight(xp, 16, 64, seed=6, structured=True)
    _, _, a1, b1 = im.loftq(xp, w, 3, 1.0, 1, nf4_roundtrip)
    _, _, a4, b4 = im.loftq(xp, w, 3, 4.0, 1, nf4_roundtrip)
    np.testing.assert_allclose(4.0 * b4 @ a4, b1 @ a1, atol=1e-6)


@pytest.mark.parametrize("value,expected", [(True, (True, None)), ("gaussian", ("gaussian", None)),
                                            ("pissa", ("pissa", None)), ("pissa_niter_16", ("pissa", 16)),
                                            ("olora", ("olora", None)), ("loftq", ("loftq", None))])
def test_parse_init(value, expected):
    assert im.parse_init(value) == expected


@pytest.mark.parametrize("value", ["pissa_niter_", "pissa_niter_-1", "PISSA", "corda", 1, None, "olora "])
def test_parse_init_refuses_unknown_names(value):
    with pytest.raises(ConfigError, match="init_lora_weights"):
        im.parse_init(value)


@pytest.mark.parametrize("config,match", [({"loftq_bits": 8}, "4 bits"), ({"loftq_iter": 0}, ">= 1"),
                                          ({"bits": 4}, "keys"), ([], "dict")])
def test_loftq_config_is_checked(config, match):
    with pytest.raises(ConfigError, match=match):
        im.check_loftq_config(config)
    assert im.check_loftq_config({"loftq_iter": 3}) == {"loftq_bits": 4, "loftq_iter": 3}


def test_rank_above_the_weight_is_refused():
    xp = backend.namespace_named("numpy")
    with pytest.raises(ConfigError, match="r <= min"):
        im.pissa(xp, weight(xp, 4, 3), 4, 1.0)
