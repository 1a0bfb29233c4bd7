"""AdaLoraModel, its config, PEFT-format files with rank patterns, to_lora and the rank picture."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from minilora import backend, nn
from minilora.lora import (AdapterLoadError, LoraModel, config_from_dict, get_lora_model, load_adapter,
                           save_adapter)
from minilora.lora.adalora import (AdaLoraConfig, AdaLoraModel, SVDLinear, load_adalora_adapter,
                                   plot_rank_pattern, save_adalora_adapter, to_lora)
from minilora.lora.adalora.plot import rank_table
from minilora.tensor import Tensor, no_grad


class Net(nn.Module):
    def __init__(self, seed=0, d=6):
        rng = backend.Random(seed, np)
        self.blocks = nn.ModuleList(_Block(d, rng) for _ in range(2))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class _Block(nn.Module):
    def __init__(self, d, rng):
        self.q_proj = nn.Linear(d, d, dtype=np.float64, rng=rng)
        self.v_proj = nn.Linear(d, d + 1, dtype=np.float64, rng=rng)
        self.out = nn.Linear(d + 1, d, dtype=np.float64, rng=rng)

    def forward(self, x):
        return self.out(self.v_proj(self.q_proj(x).tanh()).tanh())


CFG = dict(init_r=4, target_r=2, total_step=20, lora_alpha=6, target_modules=["q_proj", "v_proj"])
X = Tensor(np.random.default_rng(0).normal(size=(5, 6)))


def trained(seed=0, **kw):
    """An AdaLoraModel with random triplets and a rank pattern where blocks.1.q_proj keeps nothing."""
    model = get_lora_model(Net(seed), AdaLoraConfig(**{**CFG, **kw}))
    rng = np.random.default_rng(seed + 1)
    for p in model.trainable_parameters():
        p.data = rng.normal(size=p.shape)
    pattern = {"blocks.0.q_proj.lora_E": [True, False, True, False], "blocks.0.v_proj.lora_E": [True] * 4,
               "blocks.1.q_proj.lora_E": [False] * 4, "blocks.1.v_proj.lora_E": [False, False, False, True]}
    model.peft_config["default"].rank_pattern = pattern
    model.rankallocator.mask_using_rank_pattern(pattern)
    return model


def out(model):
    with no_grad():
        return model(X).numpy()


def test_get_lora_model_dispatches_on_the_config_type():
    model = get_lora_model(Net(), AdaLoraConfig(**CFG))
    assert isinstance(model, AdaLoraModel) and isinstance(model.blocks[0].q_proj, SVDLinear)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.blocks.0.q_proj.lora_E.default" in names and "model.blocks.0.q_proj.lora_A.default" in names
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 2 * (4 * (6 + 6) + 4 + 4 * (6 + 7) + 4)  # r (d_in + d_out) + r per layer
    np.testing.assert_array_equal(out(model), out(Net()))  # E = 0: starts as the base model
    assert model.rankallocator.init_bgt == 16 and model.rankallocator.target_bgt == 8


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="total_step"):
        AdaLoraConfig(target_modules=["q_proj"])
    with pytest.raises(ValueError, match="total_step"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=0)
    with pytest.raises(ValueError, match="tinit"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, tinit=6, tfinal=4)
    with pytest.raises(ValueError, match="orth_reg_weight"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, orth_reg_weight=-0.1)
    with pytest.raises(ValueError, match="target_r"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, init_r=2, target_r=3)
    with pytest.raises(ValueError, match="beta1"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, beta1=1.0)
    with pytest.warns(UserWarning, match="init_r"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, r=4)
    config = AdaLoraConfig(target_modules=["q_proj"], total_step=10)
    assert (config.init_r, config.target_r, config.tinit, config.tfinal, config.deltaT, config.beta1, config.beta2,
            config.orth_reg_weight, config.rank_pattern) == (12, 8, 0, 0, 1, 0.85, 0.85, 0.5, None)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["peft_type"] == "ADALORA"
    with pytest.warns(UserWarning, match="unknown"):
        again = config_from_dict({**data, "some_future_key": 1})
    assert isinstance(again, AdaLoraConfig) and again == config


def test_save_writes_peft_keys_sliced_to_the_pattern_and_loads_rank_zero(tmp_path):
    model = trained()
    expected = out(model)
    folder = save_adalora_adapter(model, tmp_path)
    from safetensors.numpy import load_file
    tensors = load_file(os.path.join(folder, "adapter_model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == {
        "base_model.model.blocks.0.q_proj.lora_A": (2, 6), "base_model.model.blocks.0.q_proj.lora_E": (2, 1),
        "base_model.model.blocks.0.q_proj.lora_B": (6, 2), "base_model.model.blocks.0.v_proj.lora_A": (4, 6),
        "base_model.model.blocks.0.v_proj.lora_E": (4, 1), "base_model.model.blocks.0.v_proj.lora_B": (7, 4),
        "base_model.model.blocks.1.q_proj.lora_A": (0, 6), "base_model.model.blocks.1.q_proj.lora_E": (0, 1),
        "base_model.model.blocks.1.q_proj.lora_B": (6, 0), "base_model.model.blocks.1.v_proj.lora_A": (1, 6),
        "base_model.model.blocks.1.v_proj.lora_E": (1, 1), "base_model.model.blocks.1.v_proj.lora_B": (7, 1)}
    config = json.load(open(os.path.join(folder, "adapter_config.json")))
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"] == model.peft_config["default"].rank_pattern
    loaded = load_adalora_adapter(Net(), tmp_path)
    layers = dict(loaded.svd_layers())
    assert {p: m.r["default"] for p, m in layers.items()} == {
        "blocks.0.q_proj": 2, "blocks.0.v_proj": 4, "blocks.1.q_proj": 0, "blocks.1.v_proj": 1}
    assert all(m.ranknum["default"] == 4 for m in layers.values())  # the scale is unchanged
    np.testing.assert_allclose(out(loaded), expected, rtol=1e-13, atol=1e-14)
    assert not any(p.requires_grad for p in loaded.parameters())
    again = save_adalora_adapter(loaded, tmp_path / "again")  # a resized model saves the same tensors
    for key, value in load_file(os.path.join(again, "adapter_model.safetensors")).items():
        np.testing.assert_array_equal(value, tensors[key])


def test_load_into_the_wrong_model_lists_every_problem_and_changes_nothing(tmp_path):
    save_adalora_adapter(trained(), tmp_path)
    base = Net(d=5)
    with pytest.raises(AdapterLoadError) as info:
        load_adalora_adapter(base, tmp_path)
    assert str(info.value).count("expected shape") == 8 and "lora_E" not in str(info.value) and "blocks.1.q_proj.lora_B" in str(info.value)
    assert not any(isinstance(m, SVDLinear) for _, m in base.named_modules())


def test_to_lora_gives_identical_outputs_and_plain_peft_lora_files(tmp_path):
    model = trained()
    expected = out(model)
    lora = to_lora(model)
    assert type(lora) is LoraModel
    ranks = {p: m.r["default"] for p, m in lora.named_modules() if hasattr(m, "lora_A") and "default" in m.r}
    assert ranks == {"model.blocks.0.q_proj": 2, "model.blocks.0.v_proj": 4, "model.blocks.1.v_proj": 1}
    np.testing.assert_allclose(out(lora), expected, rtol=1e-12, atol=1e-14)
    save_adapter(lora, tmp_path)
    reloaded = load_adapter(Net(), tmp_path)
    np.testing.assert_allclose(out(reloaded), expected, rtol=1e-12, atol=1e-14)


def test_merge_disable_and_unload_behave_like_lora():
    model = trained()
    expected, base = out(model), out(Net())
    model.merge_adapter()
    np.testing.assert_allclose(out(model), expected, rtol=1e-12)
    model.unmerge_adapter()
    with model.disable_adapter():
        np.testing.assert_allclose(out(model), base, rtol=1e-12)
    np.testing.assert_allclose(out(model), expected, rtol=1e-12)
    plain = trained().merge_and_unload()
    assert isinstance(plain.blocks[0].q_proj, nn.Linear)
    np.testing.assert_allclose(out(plain), expected, rtol=1e-12)


def test_one_trainable_adapter_and_no_weighted_adapters():
    model = trained()
    with pytest.raises(ValueError, match="one adapter at a time"):
        model.add_adapter("other", AdaLoraConfig(**CFG))
    model.add_adapter("frozen", AdaLoraConfig(**CFG, inference_mode=True))
    assert model.trainable_adapter_name == "default"
    with pytest.raises(TypeError, match="to_lora"):
        model.add_weighted_adapter(["default"], [1.0], "mix")
    with pytest.raises(ValueError, match="Linear-like"):
        get_lora_model(_Emb(), AdaLoraConfig(**{**CFG, "target_modules": ["emb"]}))


class _Emb(nn.Module):
    def __init__(self):
        self.emb = nn.Embedding(5, 3, rng=backend.Random(0, np))


def test_rank_pattern_heatmap(tmp_path):
    pattern = {f"model.layers.{i}.self_attn.{m}.lora_E": [j < i + k for j in range(4)]
               for i in range(3) for k, m in enumerate(["q_proj", "v_proj"])}
    kinds, layers, cells = rank_table(pattern)
    assert kinds == ["q_proj", "v_proj"] and layers == [0, 1, 2]
    assert cells[("v_proj", 2)] == 3 and cells[("q_proj", 0)] == 0
    pytest.importorskip("matplotlib")
    fig = plot_rank_pattern(pattern, tmp_path / "ranks.png")
    assert (tmp_path / "ranks.png").stat().st_size > 1000
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 3) and image[1, 2] == 3
    fig = plot_rank_pattern(trained())  # from a model: its trainable adapter's pattern
    assert fig.axes[0].images[0].get_array().shape == (2, 2)
    with pytest.raises(ValueError, match="rank_pattern"):
        plot_rank_pattern({})


def test_a_lora_adapter_on_an_adalora_layer_is_refused_before_anything_changes():
    from minilora.errors import MiniloraError
    from minilora.lora import LoraConfig, inject_adapter
    model = trained()
    before = out(model)
    plain = LoraConfig(r=2, target_modules=["q_proj", "out"])  # q_proj holds SVD triplets, out is a plain Linear
    with pytest.raises(MiniloraError, match=r"blocks\.0\.q_proj.*SVDLinear.*to_lora"):
        get_lora_model(model.model, plain, adapter_name="plain")
    with pytest.raises(MiniloraError, match="SVDLinear"):
        inject_adapter(model.model, plain, "plain")
    assert all(isinstance(m, nn.Linear) for p, m in model.model.named_modules() if p.endswith(".out"))
    assert all("plain" not in m.r for _, m in model.svd_layers())
    np.testing.assert_array_equal(out(model), before)


def test_svd_update_layer_takes_the_lora_signature_with_keyword_only_extras():
    import inspect
    from minilora.lora import LoRALinear
    lora, svd = (inspect.signature(c.update_layer).parameters for c in (LoRALinear, SVDLinear))
    assert list(svd)[:len(lora)] == list(lora)
    assert all(svd[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(svd)[len(lora):])
