"""The decoding path: in-place KV cache, fused projections, thread choice, top-k by partition."""
from __future__ import annotations

import numpy as np
import pytest

from minilora import backend
from minilora.models import KVCache, ModelConfig, Transformer, generate, next_token
from minilora.models import blas_threads
from minilora.models.decode import Decoder
from minilora.models.fused import _STACKS
from minilora.tensor import Tensor, no_grad


def tiny(style="llama"):
    return ModelConfig(style=style, vocab_size=37, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2 if style == "llama" else 4,
                       max_position_embeddings=64, rope_theta=500.0)


def ids_of(seed, b, t):
    return np.random.default_rng(seed).integers(0, 37, (b, t))


def logits(model, ids, grad: bool):
    """The model's logits with gradients recorded (projections one by one) or not (fused)."""
    if grad:
        return backend.to_numpy(model(ids).data)
    with no_grad():
        return backend.to_numpy(model(ids).data)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_fused_projections_equal_separate_ones(style):
    model = Transformer(tiny(style), dtype="float64", seed=3)
    ids = ids_of(0, 2, 6)
    np.testing.assert_allclose(logits(model, ids, grad=False), logits(model, ids, grad=True), rtol=1e-12, atol=1e-12)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj in _STACKS  # the stack exists; the weights are its row blocks
    stacked = attn.q_proj.weight.data.base
    assert stacked is not None and attn.v_proj.weight.data.base is stacked


def test_fused_stack_follows_in_place_updates_and_rebinding():
    model = Transformer(tiny(), dtype="float64", seed=4)
    ids = ids_of(1, 1, 5)
    logits(model, ids, grad=False)  # builds the stacks
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    attn.k_proj.weight.data[...] += 0.5  # in place: the stack sees it
    mlp.up_proj.weight.data = mlp.up_proj.weight.data * 2.0  # rebound: the stack is rebuilt
    np.testing.assert_allclose(logits(model, ids, grad=False), logits(model, ids, grad=True), rtol=1e-12, atol=1e-12)


def test_wide_stacks_are_stored_input_major_and_narrow_ones_as_they_are():
    """A stack at least as wide as its input keeps W^T (C, sum d_i) contiguous, each weight a transposed
    view of it (OpenBLAS streams x W^T fastest so); a narrower one (down_proj) keeps W's rows. The
    decoder lays out o_proj, down_proj and lm_head too; logits stay those of the module path."""
    config = tiny()
    config.tie_word_embeddings = True
    model = Transformer(config, dtype="float32", seed=6).eval()
    ids = ids_of(2, 1, 5)
    before = logits(model, ids, grad=True)
    down_array = model.model.layers[0].mlp.down_proj.weight.data
    with no_grad():
        decoder = Decoder.for_model(model)
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    for wide in (attn.q_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, model.lm_head):
        w = wide.weight.data
        assert not w.flags.c_contiguous and w.base is not None and w.base.flags.c_contiguous
        assert w.base.shape[0] == w.shape[1]  # (C, sum d_i)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, one Parameter
    assert mlp.down_proj.weight.data.flags.c_contiguous  # (576, 1536)-like: d_out < d_in
    assert np.shares_memory(mlp.down_proj.weight.data, down_array)  # left where it was, not copied
    assert np.shares_memory(decoder.head, model.lm_head.weight.data)  # the decoder reads the same buffer
    np.testing.assert_allclose(logits(model, ids, grad=True), before, rtol=1e-5, atol=1e-6)


def test_row_gathers_read_an_input_major_weight_in_place():
    """The embedding lookup and lm_loss's gather of target rows on an input-major (tied) weight read
    only the rows they need: NumPy's take used to copy the whole weight first, per call (170 ms for
    SmolLM2's embedding)."""
    import tracemalloc
    from minilora import ops
    from minilora.lm_head_loss import linear_cross_entropy
    rng = np.random.default_rng(0)
    weight = np.ascontiguousarray(rng.standard_normal((4096, 64)).astype(np.float32).T).T  # (V, C) view
    ids = rng.integers(0, 4096, 16)
    h = Tensor(rng.standard_normal((16, 64)).astype(np.float32), requires_grad=True)
    tracemalloc.start()
    try:
        rows = ops.embedding(Tensor(weight), ids)
        _, peak_lookup = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loss = linear_cross_entropy(h, Tensor(weight), ids, chunk_rows=4)
        _, peak_loss = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(rows.data, np.ascontiguousarray(weight)[ids])
    assert peak_lookup < weight.nbytes / 8, f"the lookup allocated {peak_lookup} bytes"
    assert peak_loss < weight.nbytes / 2, f"the loss allocated {peak_loss} bytes"  # a (4, 4096) chunk, no copy
    loss.backward()
    assert h.grad is not None


def test_matrix_products_give_the_same_bits_in_either_layout():
    """At training sizes (512 rows) OpenBLAS packs both operands, so an input-major weight changes no
    bit of a training step's products (forward and input gradient), and exact resume holds whichever
    layout the weights were in."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1536, 576)).astype(np.float32)
    w_view = np.ascontiguousarray(w.T).T  # the input-major layout, same values
    x = rng.standard_normal((512, 576)).astype(np.float32)
    g = rng.standard_normal((512, 1536)).astype(np.float32)
    assert np.array_equal(x @ w.T, x @ w_view.T)
    assert np.array_equal(g @ w, g @ w_view)


def test_kv_cache_grows_past_its_capacity_and_checks_shapes():
    model = Transformer(tiny(), dtype="float64", seed=5)
    ids = ids_of(2, 2, 9)
    cache, pieces = KVCache(2, capacity=2), []
    with no_grad():
        for a, b in ((0, 3), (3, 4), (4, 9)):
            pieces.append(backend.to_numpy(model(ids[:, a:b], cache=cache).data))
    assert cache.length == 9 and cache.keys[0].shape[2] >= 9
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), logits(model, ids, grad=True), rtol=1e-10, atol=1e-12)
    with no_grad(), pytest.raises(ValueError, match="do not fit"):
        model(ids[:1, :1], cache=cache)  # another batch size
    with pytest.raises(ValueError, match="capacity"):
        KVCache(2, capacity=0)


def test_kv_cache_keeps_gradients_to_new_positions():
    cache = KVCache(1)
    k0 = Tensor(np.ones((1, 1, 2, 3)))
    cache.update(0, k0, k0)
    k1 = Tensor(np.full((1, 1, 1, 3), 2.0), requires_grad=True)
    keys, _ = cache.update(0, k1, Tensor(np.zeros((1, 1, 1, 3))))
    (keys * keys).sum().backward()
    np.testing.assert_array_equal(k1.grad, np.full((1, 1, 1, 3), 4.0))
    np.testing.assert_array_equal(keys.data[0, 0, :, 0], [1.0, 1.0, 2.0])


def test_top_k_by_partition_equals_top_k_by_sort():
    import array_api_strict as strict  # no partition: the full sort
    z = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    for k in (1, 5, 49):
        kth = np.sort(z, axis=-1)[:, 50 - k:51 - k]
        mask = z >= kth
        picks = [backend.to_numpy(next_token(z, 1.0, k, backend.Random(s))) for s in range(30)]
        assert all(mask[np.arange(3), p].all() for p in picks)
        strict_picks = next_token(strict.asarray(z), 1.0, k, backend.Random(0, strict))
        assert mask[np.arange(3), np.asarray(backend.to_numpy(strict_picks))].all()


def test_thread_chooser_keeps_the_faster_count_and_restores(monkeypatch):
    state = {"threads": 2}
    monkeypatch.setattr(blas_threads, "blas_threads", lambda: state["threads"])
    monkeypatch.setattr(blas_threads, "set_blas_threads", lambda n: state.update(threads=n))
    monkeypatch.setattr(blas_threads, "machine_is_crowded", lambda cores: False)
    monkeypatch.setattr(blas_threads, "_LAST_CHOICE", {})
    clock = {"t": 100.0}
    monkeypatch.setattr(blas_threads.time, "perf_counter", lambda: clock["t"])

    def run(steps):
        chooser = blas_threads.ThreadChooser(np, period=10, rounds=2)
        chooser.cores = chooser.candidates[0] = 2
        used = []
        for _ in range(steps):
            chooser.begin()
            used.append(state["threads"])
            clock["t"] += 1.0 if state["threads"] == 2 else 0.25  # one thread is faster here
            chooser.end()
        chooser.restore()
        assert state["threads"] == 2
        return used
    assert run(6) == [2, 1, 2, 1, 1, 1]
    assert run(3) == [1, 1, 1]  # a call soon after takes the recent winner without probing
    clock["t"] += blas_threads.REUSE_SECONDS
    assert run(4) == [2, 1, 2, 1]  # an old winner is probed again


def test_generation_leaves_the_blas_thread_count_as_it_was():
    before = blas_threads.blas_threads()
    generate(Transformer(tiny(), seed=1), ids_of(3, 1, 4), 5)
    assert blas_threads.blas_threads() == before


def test_kernel_namespace_cache_still_refuses_mixed_backends():
    import array_api_strict as strict
    from minilora import kernels
    a = np.ones((2, 3), dtype=np.float32)
    assert kernels._xp(a, a) is np and kernels._xp(a, None, 2.0) is np  # cached after the first call
    with pytest.raises(backend.BackendError):
        kernels._xp(a, strict.asarray(a))
    with pytest.raises(backend.BackendError):
        kernels.rms_norm(a, strict.ones((3,), dtype=strict.float32))


@pytest.mark.parametrize("interleaved", [False, True])
def test_array_decoder_equals_the_module_path_bit_for_bit(xp, interleaved):
    """Prefill then single-token steps, batch 2: the same logits and cache as model(ids, cache)."""
    config = tiny()
    config.rope_interleaved = interleaved
    model = Transformer(config, seed=6)
    model.eval()
    ids = xp.asarray(ids_of(4, 2, 9))
    with no_grad():
        decoder = Decoder.for_model(model)
        assert decoder is not None
        caches = KVCache(2, capacity=9), KVCache(2, capacity=9)
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 9)):
            ours = decoder.last_logits(ids[:, a:b], caches[0])
            theirs = model(ids[:, a:b], cache=caches[1]).data[:, -1, :]
            np.testing.assert_array_equal(backend.to_numpy(ours), backend.to_numpy(theirs))
        for layer in range(2):
            np.testing.assert_array_equal(backend.to_numpy(caches[0].keys[layer]), backend.to_numpy(caches[1].keys[layer]))


def test_generation_through_the_array_decoder_equals_recomputing_the_prefix():
    model = Transformer(tiny(), seed=7)
    prompt = ids_of(5, 2, 4)
    np.testing.assert_array_equal(generate(model, prompt, 6), generate(model, prompt, 6, use_cache=False))


def test_array_decoder_declines_what_it_does_not_implement():
    from minilora.lora import LoraConfig, get_lora_model
    model = Transformer(tiny(), seed=8)
    with no_grad():
        assert Decoder.for_model(model) is None  # training mode: dropout may be on
        model.eval()
        assert Decoder.for_model(model) is not None
        assert Decoder.for_model(Transformer(tiny("gpt2"), seed=8).eval()) is None
        lora = get_lora_model(Transformer(tiny(), seed=8), LoraConfig(r=2, target_modules=["v_proj"]), seed=0)
        lora.eval()
        assert Decoder.for_model(lora) is None and Decoder.for_model(lora.get_base_model()) is None  # unmerged
        embedded = get_lora_model(Transformer(tiny(), seed=8), LoraConfig(r=2, target_modules=["embed_tokens"]),
                                  seed=0)
        embedded.merge_adapter()
        assert Decoder.for_model(embedded.eval()) is None  # only plain embeddings
    assert Decoder.for_model(model) is None  # gradients enabled


def test_a_merged_or_disabled_lora_model_decodes_on_arrays_like_the_base():
    from minilora.lora import LoraConfig, get_lora_model
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    lora = get_lora_model(Transformer(tiny(), dtype="float64", seed=9), config, seed=0)
    prompt = ids_of(6, 1, 5)
    unmerged = generate(lora, prompt, 6)  # the module path, adapter unmerged
    lora.merge_adapter()
    with no_grad():
        assert Decoder.for_model(lora.eval()) is not None
    np.testing.assert_array_equal(generate(lora, prompt, 6), unmerged)  # float64: merging changes no token
    lora.unmerge_adapter()
    with lora.disable_adapter(), no_grad():
        assert Decoder.for_model(lora) is not None
        plain = Transformer(tiny(), dtype="float64", seed=9)  # the same base weights, no adapter
        np.testing.assert_array_equal(generate(lora, prompt, 6), generate(plain, prompt, 6))


def test_one_causal_query_needs_no_mask():
    from minilora import kernels
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 4, 1, 8)), rng.standard_normal((1, 2, 5, 8))
    np.testing.assert_array_equal(kernels.attention(q, k, k, causal=True).data,
                                  kernels.attention(q, k, k, causal=False).data)
