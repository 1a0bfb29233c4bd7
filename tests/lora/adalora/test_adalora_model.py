"""AdaLoraModel, its config, to_lora and the rank picture (its files: test_adalora_save_load.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minilora import backend, nn
from minilora.lora import LoraModel, config_from_dict, get_lora_model, load_adapter, save_adapter
from minilora.lora.adalora import AdaLoraConfig, AdaLoraModel, SVDLinear, plot_rank_pattern, to_lora
from minilora.lora.adalora.plot import rank_table

from adalora_toy import CFG, Net, out, trained


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
    with pytest.raises(ValueError, match="AdaLoraConfig.use_dora"):  # DoRA is a LoRA variant only (as in PEFT)
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, use_dora=True)
    with pytest.raises(ValueError, match="AdaLoraConfig.init_lora_weights"):
        AdaLoraConfig(target_modules=["q_proj"], total_step=10, init_lora_weights="pissa")
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
    positional = [n for n, p in lora.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]  # DoRA/LoftQ's are
    assert list(svd)[:len(positional)] == positional
    assert all(svd[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(svd)[len(positional):])
