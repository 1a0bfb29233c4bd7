"""load_pretrained(..., quantize=QuantSpec()): 4-bit straight from the file, the same bytes as quantize_model."""
from __future__ import annotations

import numpy as np
import pytest

from gguf_fixtures import write_tiny_llama_gguf
from minilora.io import load_pretrained, save_hf_checkpoint
from minilora.io.gguf import open_gguf
from minilora.models import ModelConfig, Transformer
from minilora.quant import Linear4bit, QuantSpec, load_weights_quantized, quantize_model
from minilora.tensor import no_grad


def _quantized_bytes(model) -> dict:
    out = {}
    for path, module in model.named_modules():
        if isinstance(module, Linear4bit):
            out.update({k: np.asarray(v) for k, v in module.quantized_state_dict(path + ".").items()})
    return out


def _float_params(model) -> dict:
    return {k: np.asarray(p.data) for k, p in model.named_parameters()}


@pytest.mark.parametrize("spec", [QuantSpec(), QuantSpec(quant_type="fp4", blocksize=128, double_quant=False),
                                  QuantSpec(target_modules=["q_proj", "down_proj"])], ids=["nf4", "fp4", "some"])
def test_gguf_loaded_into_4bit_equals_quantize_model_on_the_float_model(tmp_path, spec):
    write_tiny_llama_gguf(tmp_path / "m.gguf", tie=False, seed=2, qtype="Q8_0")
    expected, tokenizer = load_pretrained(tmp_path / "m.gguf")
    paths = quantize_model(expected, spec.target_modules, spec.quant_type, spec.blocksize, spec.double_quant)
    model, tokenizer2 = load_pretrained(tmp_path / "m.gguf", quantize=spec)
    assert sorted(p for p, m in model.named_modules() if isinstance(m, Linear4bit)) == sorted(paths)
    assert "lm_head" not in paths and not model.training
    ours, theirs = _quantized_bytes(model), _quantized_bytes(expected)
    assert ours.keys() == theirs.keys() and ours
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    ours, theirs = _float_params(model), _float_params(expected)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    ids = np.asarray([tokenizer.encode("hello there")])
    with no_grad():
        np.testing.assert_array_equal(model(ids).numpy(), expected(ids).numpy())
    assert tokenizer2.encode("hello there") == tokenizer.encode("hello there")
    assert model.num_parameters() == expected.num_parameters()


def test_a_hugging_face_folder_loads_into_4bit_too(tmp_path):
    config, model = write_tiny_llama_gguf(tmp_path / "m.gguf", seed=3)
    save_hf_checkpoint(tmp_path / "hf", model)
    expected = load_pretrained(tmp_path / "hf")[0]
    quantize_model(expected)
    loaded = load_pretrained(tmp_path / "hf", quantize=QuantSpec())[0]
    ours, theirs = _quantized_bytes(loaded), _quantized_bytes(expected)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_tensors_are_decoded_one_at_a_time(tmp_path):
    write_tiny_llama_gguf(tmp_path / "m.gguf")
    _, _, tensors = open_gguf(tmp_path / "m.gguf")
    first = next(tensors)
    assert isinstance(first[0], str) and first[1].dtype == np.float32  # a lazy iterator, not a dict
    assert len(list(tensors)) > 1


def test_a_bias_after_its_weight_and_missing_or_unknown_weights(tmp_path):
    config = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    source = Transformer(config, seed=1)
    state = source.state_dict()
    order = sorted(state, key=lambda k: k.endswith(".bias"))  # every bias after every weight
    model = Transformer(config, init=False)
    load_weights_quantized(model, ((k, state[k].copy()) for k in order), QuantSpec())
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q, Linear4bit)
    np.testing.assert_array_equal(q.bias.data, state["model.layers.0.self_attn.q_proj.bias"])
    with pytest.raises(ValueError, match="never arrived, e.g. \\['model.layers.0.mlp.up_proj.weight'\\]"):
        load_weights_quantized(Transformer(config, init=False),
                               ((k, v) for k, v in state.items() if k != "model.layers.0.mlp.up_proj.weight"),
                               QuantSpec())
    with pytest.raises(ValueError, match="unexpected weight 'mystery.weight'"):
        load_weights_quantized(Transformer(config, init=False), iter([("mystery.weight", np.zeros(3))]), QuantSpec())
    write_tiny_llama_gguf(tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="quantize must be a QuantSpec"):
        load_pretrained(tmp_path / "m.gguf", quantize="nf4")


def test_finetune_qlora_loads_the_gguf_straight_into_4bit(tmp_path, monkeypatch):
    import minilora.io.pretrained as pretrained
    from minilora.finetune import run_finetune
    from minilora.finetune_config import FinetuneConfig

    write_tiny_llama_gguf(tmp_path / "m.gguf")

    def whole_float_model(*args, **kwargs):
        raise AssertionError("QLoRA built the whole float model")
    monkeypatch.setattr(pretrained, "model_from_state_dict", whole_float_model)
    lines = []
    summary = run_finetune(FinetuneConfig(model=str(tmp_path / "m.gguf"), data="sort", method="qlora", steps=1,
                                          eval_examples=1, n_train=4, progress=False, out=str(tmp_path / "run")),
                           log=lines.append)
    assert summary["total"] > summary["trainable"] > 0
    assert any("4-bit layers at" in line for line in lines), lines
