"""LoraModel: injection, freezing, counting, merge/unload, several adapters, weighted adapters."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import backend, nn
from minilora.lora import LoraConfig, LoRAEmbedding, LoRALinear, LoraModel, ModulesToSaveWrapper, get_lora_model


class Block(nn.Module):
    def __init__(self, d, rng, dtype):
        self.q_proj = nn.Linear(d, d, dtype=dtype, rng=rng)
        self.v_proj = nn.Linear(d, d, bias=False, dtype=dtype, rng=rng)


class ToyLM(nn.Module):
    """embed_tokens -> layers.{i}.(q_proj, v_proj) -> lm_head: names like a transformer's."""

    def __init__(self, xp, vocab=11, d=6, n_layers=2, dtype=None, seed=0, d_out=None):
        rng = backend.Random(seed, xp)
        dtype = xp.float64 if dtype is None else dtype
        self.embed_tokens = nn.Embedding(vocab, d, dtype=dtype, rng=rng)
        self.layers = nn.ModuleList([Block(d, rng, dtype) for _ in range(n_layers)])
        self.lm_head = nn.Linear(d, d_out or vocab, dtype=dtype, rng=rng)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for block in self.layers:
            h = h + block.v_proj(block.q_proj(h).tanh())
        return self.lm_head(h)


def ids_for(xp, shape=(2, 5), vocab=11, seed=1):
    return backend.Random(seed, xp).integers(0, vocab, shape)


def out(model, ids):
    return backend.to_numpy(model(ids).data).copy()


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def wrapped(xp, **cfg):
    base = ToyLM(xp)
    before = out(base, ids_for(xp))
    cfg.setdefault("target_modules", ["q_proj", "v_proj"])
    cfg.setdefault("init_lora_weights", False)
    return get_lora_model(base, LoraConfig(**cfg)), before


def test_injection_names_freezing_and_count(xp):
    model, _ = wrapped(xp, r=2)
    names = dict(model.model.named_parameters())
    assert "layers.0.q_proj.lora_A.default.weight" in names
    assert "layers.1.v_proj.lora_B.default.weight" in names
    assert "layers.0.q_proj.base_layer.weight" in names
    trainable = {n for n, p in names.items() if p.requires_grad}
    assert trainable == {n for n in names if ".lora_" in n}
    trainable_count, total = model.get_nb_trainable_parameters()
    assert trainable_count == 4 * 2 * (6 + 6)  # sum over targets of r * (d_in + d_out)
    assert total == sum(p.size for p in names.values())
    assert f"trainable params: {trainable_count:,d}" in model.trainable_parameters_summary()
    assert model.lm_head is model.model.lm_head  # attribute access reaches the wrapped model


@settings(max_examples=10)
@given(d_in=st.integers(1, 8), d_out=st.integers(1, 8), r_pick=st.integers(0, 7), n_layers=st.integers(1, 3))
def test_trainable_count_is_sum_of_r_times_dims(xp, d_in, d_out, r_pick, n_layers):
    r = 1 + r_pick % min(d_in, d_out)
    base = ToyLM(xp, d=d_in, n_layers=n_layers)
    for block in base.layers:
        block.v_proj = nn.Linear(d_in, d_out, dtype=xp.float64, rng=backend.Random(1, xp))
    model = get_lora_model(base, LoraConfig(r=r, target_modules=["v_proj"]))
    assert model.get_nb_trainable_parameters()[0] == n_layers * r * (d_in + d_out)


def test_disable_adapter_is_the_base_and_nests(xp):
    model, before = wrapped(xp)
    ids = ids_for(xp)
    adapted = out(model, ids)
    assert not np.allclose(adapted, before)
    with model.disable_adapter():
        close(out(model, ids), before)
        with model.disable_adapter():
            close(out(model, ids), before)
        close(out(model, ids), before)  # the inner exit restored "disabled"
    close(out(model, ids), adapted)
    model.merge_adapter()
    with model.disable_adapter():
        close(out(model, ids), before)
    close(out(model, ids), adapted)
    assert all(layer.merged_adapters == ["default"] for layer in _layers(model))


def _layers(model):
    return [m for _, m in model.model.named_modules() if isinstance(m, LoRALinear)]


def test_merge_and_unload_and_unload(xp):
    model, before = wrapped(xp)
    ids = ids_for(xp)
    adapted = out(model, ids)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, (LoRALinear, LoRAEmbedding)) for m in plain.modules())
    assert isinstance(plain.layers[0].q_proj, nn.Linear)
    close(out(plain, ids), adapted)
    model2, before2 = wrapped(xp)
    model2.merge_adapter()
    base = model2.unload()
    assert isinstance(base.layers[1].v_proj, nn.Linear)
    close(out(base, ids), before2)


def test_safe_merge_and_unload_with_nan_leaves_every_weight(xp):
    model, _ = wrapped(xp)
    weights = {n: backend.to_numpy(p.data).copy() for n, p in model.named_parameters()}
    layer = model.model.layers[1].v_proj
    b = backend.to_numpy(layer.lora_B["default"].weight.data).copy()
    b[0, 0] = np.inf
    layer.lora_B["default"].weight.data = backend.from_numpy(b, xp)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.merge_and_unload(safe_merge=True)
    for n, p in model.named_parameters():
        if "lora_B" not in n:
            assert np.array_equal(backend.to_numpy(p.data), weights[n]), n
    assert all(lay.merged_adapters == [] for lay in _layers(model))


def test_merge_twice_warns_and_changes_nothing(xp):
    model, _ = wrapped(xp)
    model.merge_adapter()
    w = backend.to_numpy(model.model.layers[0].q_proj.base_layer.weight.data).copy()
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter()
    assert np.array_equal(backend.to_numpy(model.model.layers[0].q_proj.base_layer.weight.data), w)


def test_several_adapters_set_delete_and_sum(xp):
    model, before = wrapped(xp)
    ids = ids_for(xp)
    a_out = out(model, ids)
    model.add_adapter("other", LoraConfig(r=3, target_modules=["q_proj"], init_lora_weights=False))
    close(out(model, ids), a_out)  # a new adapter starts inactive
    other_params = [p for n, p in model.named_parameters() if ".other." in n]
    assert other_params and not any(p.requires_grad for p in other_params)
    model.set_adapter("other")
    assert all(p.requires_grad for p in other_params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    b_out = out(model, ids)
    model.set_adapter(["default", "other"])
    both = out(model, ids)
    # linear layers: the deltas add, checked on the merged weights
    q = model.model.layers[0].q_proj
    w0 = backend.to_numpy(q.base_layer.weight.data).copy()
    expected = w0 + backend.to_numpy(q.delta_weight("default")) + backend.to_numpy(q.delta_weight("other"))
    model.merge_adapter()
    close(backend.to_numpy(q.base_layer.weight.data), expected)
    close(out(model, ids), both)
    with pytest.raises(ValueError, match="unmerge"):
        model.delete_adapter("other")
    model.unmerge_adapter()
    model.delete_adapter("other")
    assert model.active_adapters == ["default"] and "other" not in model.peft_config
    assert not any(".other." in n for n, _ in model.named_parameters())
    close(out(model, ids), a_out)
    assert not np.allclose(b_out, a_out)
    with pytest.raises(ValueError, match="unknown adapter"):
        model.set_adapter("missing")


def test_add_weighted_adapter_linear_is_exact_and_svd_has_rank_r(xp):
    model, _ = wrapped(xp, r=2)
    model.add_adapter("b", LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.add_weighted_adapter(["default", "b"], [0.7, -1.3], "mix", combination_type="linear")
    model.add_weighted_adapter(["default", "b"], [0.7, -1.3], "mix_svd", combination_type="svd", svd_rank=2)
    for layer in _layers(model):
        want = 0.7 * backend.to_numpy(layer.delta_weight("default")) - 1.3 * backend.to_numpy(layer.delta_weight("b"))
        close(backend.to_numpy(layer.delta_weight("mix")), want)
        svd_delta = backend.to_numpy(layer.delta_weight("mix_svd"))
        assert np.linalg.matrix_rank(svd_delta, tol=1e-9) <= 2
        u, s, vh = np.linalg.svd(want)
        close(svd_delta, (u[:, :2] * s[:2]) @ vh[:2], rtol=1e-8, atol=1e-10)
    ids = ids_for(xp)
    model.set_adapter("mix")
    mixed = out(model, ids)
    model.set_adapter(["default", "b"])
    assert not np.allclose(out(model, ids), mixed)  # weights 0.7, -1.3 differ from 1, 1
    with pytest.raises(ValueError, match="combination_type"):
        model.add_weighted_adapter(["default"], [1.0], "x", combination_type="ties")


def test_embedding_target_and_modules_to_save_and_bias(xp):
    base = ToyLM(xp)
    ids = ids_for(xp)
    before = out(base, ids)
    config = LoraConfig(target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"], bias="lora_only")
    model = get_lora_model(base, config)
    assert isinstance(model.model.embed_tokens, LoRAEmbedding)
    assert isinstance(model.model.lm_head, ModulesToSaveWrapper)
    close(out(model, ids), before)  # default init: a no-op, copies equal the original
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.lm_head.modules_to_save.default.weight" in trainable
    assert "model.lm_head.original_module.weight" not in trainable
    assert "model.layers.0.q_proj.base_layer.bias" in trainable
    assert "model.lm_head.modules_to_save.default.bias" in trainable
    copy = model.model.lm_head.modules_to_save["default"]
    copy.weight.data = copy.weight.data * 2.0
    changed = out(model, ids)
    assert not np.allclose(changed, before)
    with model.disable_adapter():
        close(out(model, ids), before)
    plain = model.merge_and_unload()
    assert plain.lm_head is copy
    close(out(plain, ids), changed)


def test_bias_all_trains_every_bias(xp):
    model, _ = wrapped(xp, bias="all")
    for n, p in model.named_parameters():
        assert p.requires_grad == (".lora_" in n or n.endswith(".bias")), n


def test_training_moves_only_adapters(xp):
    model, _ = wrapped(xp)
    frozen = {n: backend.to_numpy(p.data).copy() for n, p in model.named_parameters() if not p.requires_grad}
    logits = model(ids_for(xp))
    (logits * logits).mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        if p.requires_grad:
            p.data = p.data - 0.1 * p.grad
    for n, p in model.named_parameters():
        if n in frozen:
            assert np.array_equal(backend.to_numpy(p.data), frozen[n])


def test_all_linear_skips_lm_head_and_errors_list_modules(xp):
    model = get_lora_model(ToyLM(xp), LoraConfig(target_modules="all-linear"))
    assert isinstance(model.model.layers[0].v_proj, LoRALinear)
    assert isinstance(model.model.lm_head, nn.Linear)
    assert isinstance(model.model.embed_tokens, nn.Embedding)
    with pytest.raises(ValueError, match=r"matches no module.*layers\.0\.q_proj"):
        get_lora_model(ToyLM(xp), LoraConfig(target_modules=["k_proj"]))
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("default", LoraConfig(target_modules=["q_proj"]))


def test_regex_exclude_layers_and_patterns(xp):
    base = ToyLM(xp, n_layers=3)
    config = LoraConfig(target_modules=r"layers\.\d+\.(q|v)_proj", exclude_modules=["layers.2.v_proj"],
                        layers_to_transform=[0, 2], rank_pattern={"q_proj": 4}, alpha_pattern={r"layers\.2\..*": 32})
    model = get_lora_model(base, config)
    kinds = {p: type(m).__name__ for p, m in model.model.named_modules() if p.count(".") == 2}
    assert kinds["layers.0.q_proj"] == kinds["layers.0.v_proj"] == kinds["layers.2.q_proj"] == "LoRALinear"
    assert kinds["layers.1.q_proj"] == kinds["layers.2.v_proj"] == "Linear"
    assert model.model.layers[0].q_proj.r["default"] == 4 and model.model.layers[0].v_proj.r["default"] == 8
    assert model.model.layers[2].q_proj.scaling["default"] == 32 / 4


def test_get_lora_model_dispatches_on_config_type(xp):
    from minilora.lora import MODEL_CLASSES, register_model_class

    class MyConfig(LoraConfig):
        pass

    class MyModel(LoraModel):
        pass
    register_model_class(MyConfig, MyModel)
    try:
        assert type(get_lora_model(ToyLM(xp), MyConfig(target_modules=["q_proj"]))) is MyModel
        assert type(get_lora_model(ToyLM(xp), LoraConfig(target_modules=["q_proj"]))) is LoraModel
    finally:
        del MODEL_CLASSES[MyConfig]
    with pytest.raises(ValueError, match="no model class"):
        get_lora_model(ToyLM(xp), object())


def test_transformer_q_v_injection(xp):
    from minilora.models.config import ModelConfig
    from minilora.models.transformer import Transformer
    cfg = ModelConfig(style="llama", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    base = Transformer(cfg, dtype=xp.float64)
    ids = ids_for(xp, (1, 6), vocab=32)
    before = out(base, ids)
    model = get_lora_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    paths = sorted(p for p, m in model.model.named_modules() if isinstance(m, LoRALinear))
    assert paths == [f"model.layers.{i}.self_attn.{n}_proj" for i in range(2) for n in ("q", "v")]
    adapted = out(model, ids)
    assert not np.allclose(adapted, before)
    with model.disable_adapter():
        close(out(model, ids), before, rtol=1e-9)
    close(out(model.merge_and_unload(), ids), adapted, rtol=1e-9, atol=1e-11)


def test_dropout_is_seeded(xp):
    def run(seed):
        model = get_lora_model(ToyLM(xp), LoraConfig(target_modules=["q_proj"], lora_dropout=0.3,
                                                     init_lora_weights=False), seed=seed)
        return out(model, ids_for(xp))
    close(run(1), run(1), rtol=0, atol=0)
    assert not np.allclose(run(1), run(2))


def test_bad_inputs(xp):
    with pytest.raises(ValueError, match="model must be"):
        get_lora_model(object(), LoraConfig(target_modules=["q_proj"]))
    for bad in ("a/b", "..", "x.y", "", "training", "keys"):
        with pytest.raises(ValueError, match="adapter_name"):
            get_lora_model(ToyLM(xp), LoraConfig(target_modules=["q_proj"]), adapter_name=bad)


@settings(max_examples=10)
@given(d_in=st.integers(1, 7), d_out=st.integers(1, 7), r_pick=st.integers(0, 6), alpha=st.sampled_from([1.0, 8.0, 3.5]),
       rslora=st.booleans(), dtype=st.sampled_from(["float64", "float32"]))
def test_model_level_merge_disable_unload_properties(xp, d_in, d_out, r_pick, alpha, rslora, dtype):
    r = 1 + r_pick % min(d_in, d_out)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)

    def fresh():
        base = ToyLM(xp, d=d_in, n_layers=2, dtype=getattr(xp, dtype), d_out=d_out)
        return base, get_lora_model(base, LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora,
                                                     target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    ids = ids_for(xp)
    base, model = fresh()
    with model.disable_adapter():
        base_out = out(model, ids)
    adapted = out(model, ids)
    assert not np.allclose(adapted, base_out, rtol=1e-7, atol=1e-9)
    close(out(model.merge_and_unload(), ids), adapted, **tol)  # merge_and_unload == unmerged model
    _, model = fresh()
    model.merge_adapter()
    close(out(model, ids), adapted, **tol)
    close(out(model.unload(), ids), base_out, **tol)  # unload == base model


@pytest.mark.parametrize("four_bit", [False, True])
@pytest.mark.parametrize("targets,dora,saved", [(["q_proj", "v_proj"], False, None),
                                                (["q_proj", "v_proj", "down_proj"], False, None),
                                                (["down_proj"], True, None), (["q_proj"], False, ["down_proj"])])
def test_checkpointing_gives_the_adapters_the_same_gradients(four_bit, targets, dora, saved):
    """Checkpointed layers (whose recompute skips a plain down_proj's product, also through a
    modules_to_save copy, and keeps a LoRA or DoRA down_proj whole) give every adapter the gradients
    of the unchecked model, bit for bit."""
    from minilora.models.config import ModelConfig
    from minilora.models.transformer import Transformer, lm_loss
    from minilora.quant import quantize_model
    cfg = ModelConfig(style="llama", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    ids = np.random.default_rng(0).integers(0, 32, (2, 7))
    grads = []
    for flag in (False, True):
        base = Transformer(cfg, seed=1)
        if four_bit:
            quantize_model(base, blocksize=32)
        base.gradient_checkpointing = flag
        lora = get_lora_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=targets, use_dora=dora,
                                               modules_to_save=saved))
        rng = np.random.default_rng(2)
        for _, p in lora.named_parameters():
            if p.requires_grad:  # B != 0, so that every adapter matrix gets a gradient
                p.data = p.data + rng.standard_normal(p.shape).astype(p.dtype) * 0.1
        lora.train()
        lm_loss(lora, ids[:, :-1], ids[:, 1:]).backward()
        grads.append({n: p.grad.tobytes() for n, p in lora.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(np.any(np.frombuffer(g, dtype=np.float32)) for g in grads[0].values())
    assert grads[0] == grads[1]
