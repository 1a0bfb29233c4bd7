"""Transformer models: names, init, causality, KV cache, GQA, checkpointing, backends, gradients."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilora import backend, ops
from minilora.models import (KVCache, ModelConfig, Transformer, checkpoint, generate, lm_loss,
                             stream_generate)
from minilora.nn import Module
from minilora.tensor import Tensor, no_grad
from minilora.testing import gradcheck

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=8)


def tiny(style="llama", **kw):
    base = dict(style=style, vocab_size=37, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2 if style == "llama" else 4,
                max_position_embeddings=64, rope_theta=500.0)
    base.update(kw)
    return ModelConfig(**base)


def ids_of(seed, b, t, vocab=37):
    return np.random.default_rng(seed).integers(0, vocab, (b, t))


def logits_np(model, ids, cache=None):
    with no_grad():
        return backend.to_numpy(model(ids, cache=cache).data)


# ------------------------------------------------------------------ structure

def test_llama_names_follow_hugging_face():
    model = Transformer(tiny(tie_word_embeddings=False))
    names = [n for n, _ in model.named_parameters()]
    layer = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
             "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
             "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    expected = (["model.embed_tokens.weight"] + [f"model.layers.{i}.{n}" for i in range(2) for n in layer]
                + ["model.norm.weight", "lm_head.weight"])
    assert names == expected
    shapes = dict((n, p.shape) for n, p in model.named_parameters())
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (24, 24)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (12, 24)  # nkv * hs = 2 * 6
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (24, 40)
    assert shapes["lm_head.weight"] == (37, 24)


def test_tied_embeddings_share_one_parameter():
    model = Transformer(tiny())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    loss = model.loss(ids_of(0, 2, 5), ids_of(1, 2, 5))
    loss.backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad is not None and np.abs(grad).sum() > 0  # input and output uses both accumulate


def test_gpt2_names_biases_and_positions():
    model = Transformer(tiny("gpt2", attention_bias=True, mlp_bias=True))
    names = {n for n, _ in model.named_parameters()}
    assert "model.embed_positions.weight" in names
    assert "model.layers.0.mlp.up_proj.bias" in names and "model.layers.0.self_attn.o_proj.bias" in names
    assert "model.layers.0.input_layernorm.bias" in names  # LayerNorm
    assert not any("gate_proj" in n for n in names)
    assert model.get_submodule("model.embed_positions").weight.shape == (64, 24)


def test_init_statistics():
    cfg = tiny(hidden_size=64, intermediate_size=128, vocab_size=200, attention_bias=True)
    model = Transformer(cfg, seed=3)
    q = model.model.layers[0].self_attn.q_proj
    assert abs(float(np.std(q.weight.data)) - 0.02) < 0.002
    assert float(np.abs(q.bias.data).max()) == 0.0
    assert abs(float(np.std(model.model.embed_tokens.weight.data)) - 0.02) < 0.002
    assert np.all(model.model.norm.weight.data == 1.0)
    again = Transformer(cfg, seed=3)
    np.testing.assert_array_equal(again.model.layers[1].mlp.up_proj.weight.data,
                                  model.model.layers[1].mlp.up_proj.weight.data)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_float32_stays_float32(style):
    model = Transformer(tiny(style))
    loss = model.loss(ids_of(0, 2, 6), ids_of(1, 2, 6))
    assert model(ids_of(0, 2, 6)).dtype == np.float32 and loss.dtype == np.float32
    loss.backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters() if p.grad is not None)


def test_projections_are_called_as_submodules():
    """LoRA replaces q_proj by a wrapper: the model must go through the submodule."""
    model = Transformer(tiny())
    ids = ids_of(0, 1, 4)
    before = logits_np(model, ids)

    class Doubler(Module):
        calls = 0

        def __init__(self, base):
            self.base = base

        def forward(self, x):
            Doubler.calls += 1
            return self.base(x) * 2.0

    for i in range(2):
        path = f"model.layers.{i}.self_attn.v_proj"
        model.set_submodule(path, Doubler(model.get_submodule(path)))
    after = logits_np(model, ids)
    assert Doubler.calls == 2 and not np.allclose(before, after)


def test_bad_inputs_raise_value_error():
    model = Transformer(tiny())
    with pytest.raises(ValueError, match="2-D"):
        model(np.arange(5))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.zeros((1, 65), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        model(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="targets"):
        lm_loss(model, ids_of(0, 2, 4), ids_of(0, 2, 3))
    with pytest.raises(ValueError, match="config"):
        Transformer({"style": "llama"})


# ------------------------------------------------------------------ causality and cache

@FIXTURE_OK
@given(style=st.sampled_from(["llama", "gpt2"]), t=st.integers(2, 9), pos=st.integers(0, 8),
       seed=st.integers(0, 1000))
def test_causality(xp, style, t, pos, seed):
    """Changing token pos+1 leaves the logits at positions <= pos unchanged."""
    pos = pos % (t - 1)
    model = Transformer(tiny(style), dtype="float64", seed=seed)
    ids = ids_of(seed, 2, t)
    changed = ids.copy()
    changed[:, pos + 1] = (changed[:, pos + 1] + 1) % 37
    a, b = logits_np(model, ids), logits_np(model, changed)
    np.testing.assert_allclose(a[:, :pos + 1], b[:, :pos + 1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[:, pos + 1], b[:, pos + 1])


@FIXTURE_OK
@given(style=st.sampled_from(["llama", "gpt2"]), t0=st.integers(1, 6), chunks=st.lists(st.integers(1, 4), max_size=3),
       interleaved=st.booleans(), seed=st.integers(0, 1000))
def test_cached_logits_equal_full_forward(xp, style, t0, chunks, interleaved, seed):
    """Feeding a sequence in pieces through a KV cache gives the logits of one full forward."""
    model = Transformer(tiny(style, rope_interleaved=interleaved), dtype="float64", seed=seed)
    total = t0 + sum(chunks)
    ids = ids_of(seed, 2, total)
    full = logits_np(model, ids)
    cache, start, pieces = KVCache(2), 0, []
    for size in [t0] + chunks:
        pieces.append(logits_np(model, ids[:, start:start + size], cache=cache))
        start += size
        assert cache.length == start
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_cached_generation_equals_uncached(xp, style):
    model = Transformer(tiny(style), seed=1)
    prompt = ids_of(2, 2, 5)
    cached = generate(model, prompt, 12)
    uncached = generate(model, prompt, 12, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (2, 17)
    np.testing.assert_array_equal(cached[:, :5], prompt)
    # sampling: same seed, same tokens with and without the cache
    a = generate(model, prompt, 8, temperature=0.8, top_k=5, rng=backend.Random(7, xp))
    b = generate(model, prompt, 8, temperature=0.8, top_k=5, rng=backend.Random(7, xp), use_cache=False)
    np.testing.assert_array_equal(a, b)


def test_greedy_picks_argmax_and_top_k_one_is_greedy():
    model = Transformer(tiny(), seed=4)
    prompt = ids_of(5, 1, 4)[0]
    out = generate(model, prompt, 1)
    assert out.shape == (5,) and out[-1] == int(np.argmax(logits_np(model, prompt[None])[0, -1]))
    greedy = generate(model, prompt, 6)
    sampled = generate(model, prompt, 6, temperature=1.5, top_k=1, rng=backend.Random(0))
    np.testing.assert_array_equal(greedy, sampled)
    hot = [generate(model, prompt, 6, temperature=5.0, rng=backend.Random(s)) for s in range(4)]
    assert len({tuple(h) for h in hot}) > 1  # sampling actually samples


def test_top_k_restricts_support():
    from minilora.models import next_token
    logits = np.array([[0.0, 5.0, 4.9, -1.0, 4.8]] * 200, dtype=np.float32)
    picks = backend.to_numpy(next_token(logits, temperature=10.0, top_k=2, rng=backend.Random(0)))
    assert set(picks.tolist()) == {1, 2}


def test_eos_stops_generation_and_stream_callback():
    model = Transformer(tiny(), seed=6)
    prompt = ids_of(1, 1, 3)
    first = int(generate(model, prompt, 1)[0, -1])
    seen = []
    out = generate(model, prompt, 10, eos_token_id=first, callback=lambda step, tok: seen.append((step, int(tok[0]))))
    assert out.shape == (1, 4) and seen == [(0, first)]
    assert len(list(stream_generate(model, prompt, 4))) == 4
    np.testing.assert_array_equal(generate(model, Tensor(prompt[0]), 3), generate(model, list(prompt[0]), 3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt, -1)


def test_generation_restores_training_mode():
    model = Transformer(tiny()).train()
    generate(model, ids_of(0, 1, 3), 2)
    assert model.training and model.model.layers[0].training


# ------------------------------------------------------------------ equivalences

def test_gqa_equals_mha_with_repeated_kv_heads(xp):
    gqa = Transformer(tiny(num_key_value_heads=2), dtype="float64", seed=2)
    mha = Transformer(tiny(num_key_value_heads=4), dtype="float64", seed=9)
    state = dict(gqa.state_dict())
    hs, groups = 6, 2
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            key = f"model.layers.{i}.self_attn.{name}.weight"
            w = backend.to_numpy(state[key]).reshape(2, hs, 24)  # (nkv, hs, C)
            state[key] = backend.from_numpy(np.repeat(w, groups, axis=0).reshape(4 * hs, 24), xp)
    mha.load_state_dict(state)
    ids = ids_of(3, 2, 7)
    np.testing.assert_allclose(logits_np(mha, ids), logits_np(gqa, ids), rtol=1e-12, atol=1e-13)


def test_interleaved_rope_equals_half_rope_with_permuted_rows():
    """llama.cpp's pair layout is Hugging Face's with q/k rows permuted per head (what a GGUF loader undoes)."""
    half = Transformer(tiny(rope_interleaved=False), dtype="float64", seed=5)
    inter = Transformer(tiny(rope_interleaved=True), dtype="float64", seed=8)
    hs = 6
    perm = np.stack([np.arange(hs // 2), np.arange(hs // 2) + hs // 2], axis=1).reshape(-1)  # 0,3,1,4,2,5
    state = dict(half.state_dict())
    for i in range(2):
        for name, heads in (("q_proj", 4), ("k_proj", 2)):
            key = f"model.layers.{i}.self_attn.{name}.weight"
            state[key] = state[key].reshape(heads, hs, 24)[:, perm, :].reshape(heads * hs, 24)
    inter.load_state_dict(state)
    ids = ids_of(4, 2, 9)
    np.testing.assert_allclose(logits_np(inter, ids), logits_np(half, ids), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_state_dict_round_trip(style):
    a, b = Transformer(tiny(style), seed=0), Transformer(tiny(style), seed=1)
    ids = ids_of(0, 1, 6)
    assert not np.allclose(logits_np(a, ids), logits_np(b, ids))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(logits_np(a, ids), logits_np(b, ids))


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_gradient_checkpointing_gives_identical_gradients(style, dropout):
    ids, targets = ids_of(0, 2, 6), ids_of(1, 2, 6)
    grads = []
    for flag in (False, True):
        model = Transformer(tiny(style, dropout=dropout), dtype="float64", seed=3).train()
        model.gradient_checkpointing = flag
        loss = model.loss(ids, targets)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("four_bit", [False, True])
def test_the_recompute_skips_each_layers_last_product(monkeypatch, four_bit):
    """The recompute's value is thrown away, so down_proj's forward product runs once per layer per
    step (in the no-grad pass), not again in the recompute; the gradients stay those of the
    unskipped recompute. Counted: products whose right operand is a down weight (C, F) transposed."""
    from minilora.quant import quantize_model
    cfg = tiny()
    f, c = cfg.intermediate_size, cfg.hidden_size
    real, counts = np.matmul, []

    def spy(a, b, *args, **kwargs):
        counts[-1] += getattr(b, "ndim", 0) == 2 and tuple(b.shape) == (f, c) and b.flags.f_contiguous
        return real(a, b, *args, **kwargs)
    grads = []
    for skip in (True, False):
        model = Transformer(cfg, seed=3).train()
        if four_bit:
            quantize_model(model)
        model.freeze()
        for layer in model.model.layers:  # something inside each layer trains: its recompute runs
            layer.post_attention_layernorm.weight.requires_grad = True
        model.gradient_checkpointing = True
        if not skip:
            monkeypatch.setattr(type(model.model.layers[0].mlp.down_proj), "value_optional", False)
        counts.append(0)
        monkeypatch.setattr(np, "matmul", spy)
        model.loss(ids_of(0, 2, 6), ids_of(1, 2, 6)).backward()
        monkeypatch.undo()
        grads.append({n: p.grad.tobytes() for n, p in model.named_parameters() if p.grad is not None})
    assert counts == [cfg.num_hidden_layers, 2 * cfg.num_hidden_layers]
    assert grads[0] == grads[1] and grads[0]


def test_checkpoint_with_frozen_input_still_reaches_parameters():
    """The first block's input (frozen embeddings) needs no grad, yet the block's weights do."""
    w = Tensor(np.random.default_rng(0).standard_normal((3, 3)), requires_grad=True)
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3)))
    y = checkpoint(lambda a: ops.tanh(a @ w), x)
    y.sum().backward()
    expected = x.data.T @ (1 - np.tanh(x.data @ w.data) ** 2)
    np.testing.assert_allclose(w.grad, expected, rtol=1e-12)
    with no_grad():
        assert not checkpoint(lambda a: a * 2.0, x).requires_grad


def test_frozen_base_with_trainable_qv_only():
    model = Transformer(tiny())
    model.freeze()
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad = True
        layer.self_attn.v_proj.weight.requires_grad = True
    model.loss(ids_of(0, 2, 5), ids_of(1, 2, 5)).backward()
    for name, p in model.named_parameters():
        trained = name.endswith(("q_proj.weight", "v_proj.weight"))
        assert (p.grad is not None) == trained, name


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_gradcheck_tiny_model_loss(style):
    model = Transformer(tiny(style, num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                             num_key_value_heads=1 if style == "llama" else 2, intermediate_size=12,
                             vocab_size=11), dtype="float64", seed=0)
    ids, targets = ids_of(0, 2, 4, vocab=11), ids_of(1, 2, 4, vocab=11)
    targets[0, 1] = -100
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight",
             "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "model.embed_tokens.weight"]
    params = [dict(model.named_parameters())[n] for n in names]

    def loss_of(*ws):
        return _loss_with(model, params, ws, ids, targets)

    gradcheck(loss_of, *[Tensor(p.data.copy(), requires_grad=True) for p in params])


def _loss_with(model, params, ws, ids, targets):
    """The loss with each parameter replaced (in every module that holds it) by the tensor gradcheck perturbs."""
    owners = []
    for p, w in zip(params, ws):
        for _, module in model.named_modules():
            for attr, value in list(vars(module).items()):
                if value is p:
                    owners.append((module, attr, p))
                    setattr(module, attr, w)
    try:
        return lm_loss(model, ids, targets)
    finally:
        for module, attr, p in owners:
            setattr(module, attr, p)


# ------------------------------------------------------------------ backends

@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-12, 1e-14), ("float32", 1e-5, 1e-6)])
@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_numpy_and_array_api_strict_agree(style, dtype, rtol, atol):
    pytest.importorskip("array_api_strict")
    ids = ids_of(0, 2, 7)
    ref = Transformer(tiny(style, attention_bias=True), dtype=dtype, seed=11)
    expected = logits_np(ref, ids)
    with backend.use_backend("array_api_strict") as xps:
        other = Transformer(tiny(style, attention_bias=True), dtype=dtype, seed=12)
        other.load_state_dict({k: backend.from_numpy(v, xps) for k, v in ref.state_dict().items()})
        got = logits_np(other, ids)
        assert str(other(ids).dtype).endswith(dtype)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
