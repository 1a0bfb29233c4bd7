"""LoRA against Hugging Face PEFT: adapter files move both ways and give the same outputs and merges.

The same toy network is built in both frameworks (embed_tokens -> layers.{i}.{q,v}_proj ->
lm_head, torch weights copied from minilora's). In float64, outputs must agree to rtol 1e-10:
    minilora save_adapter -> PEFT PeftModel.from_pretrained,
    PEFT save_pretrained  -> minilora load_adapter (tensors bit-identical to PEFT's file),
    merged weights, and weighted combinations (minilora "linear" == PEFT "cat"; "svd" == "svd").
task_type is None because the toy torch module is not a transformers model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.numpy import load_file

from minilora import backend, nn
from minilora.lora import LoraConfig, adapter_state_dict, get_lora_model, load_adapter, save_adapter

V, D = 11, 6


class Block(nn.Module):
    def __init__(self, rng):
        self.q_proj = nn.Linear(D, D, dtype="float64", rng=rng)
        self.v_proj = nn.Linear(D, D, bias=False, dtype="float64", rng=rng)


class ToyLM(nn.Module):
    def __init__(self, seed=0):
        rng = backend.Random(seed)
        self.embed_tokens = nn.Embedding(V, D, dtype="float64", rng=rng)
        self.layers = nn.ModuleList([Block(rng), Block(rng)])
        self.lm_head = nn.Linear(D, V, dtype="float64", rng=rng)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for block in self.layers:
            h = h + block.v_proj(block.q_proj(h).tanh())
        return self.lm_head(h)


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj = torch.nn.Linear(D, D), torch.nn.Linear(D, D, bias=False)


class TorchToyLM(torch.nn.Module):
    def __init__(self, source: ToyLM):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(V, D)
        self.layers = torch.nn.ModuleList([TorchBlock(), TorchBlock()])
        self.lm_head = torch.nn.Linear(D, V)
        self.double()
        self.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in source.state_dict().items()})

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for block in self.layers:
            h = h + block.v_proj(torch.tanh(block.q_proj(h)))
        return self.lm_head(h)


IDS = np.random.default_rng(1).integers(0, V, (2, 5))
CASES = {
    "q_v": dict(target_modules=["q_proj", "v_proj"]),
    "embedding_rslora": dict(target_modules=["embed_tokens", "q_proj"], use_rslora=True, lora_alpha=7),
    "regex_patterns": dict(target_modules=r".*\.v_proj", rank_pattern={"layers.1.v_proj": 3}, alpha_pattern={"v_proj": 5}),
    "save_head_bias_all": dict(target_modules=["q_proj"], modules_to_save=["lm_head"], bias="all"),
}


def torch_out(model):
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_minilora_adapter_loads_in_peft(case, tmp_path):
    model = get_lora_model(ToyLM(), LoraConfig(r=2, init_lora_weights=False, task_type=None, **CASES[case]), seed=4)
    with backend.use_backend("numpy"):
        for name, p in model.named_parameters():
            if p.requires_grad:  # move biases and saved copies away from their base values too
                p.data = p.data + 0.01 * np.cos(np.arange(p.size).reshape(p.shape))
    expected = model(IDS).numpy()
    save_adapter(model, tmp_path)
    peft_model = PeftModel.from_pretrained(TorchToyLM(ToyLM()), tmp_path)
    np.testing.assert_allclose(torch_out(peft_model), expected, rtol=1e-10, atol=1e-12)
    merged = peft_model.merge_and_unload()
    plain = model.merge_and_unload()
    for name, p in plain.named_parameters():
        np.testing.assert_allclose(merged.state_dict()[name].numpy(), p.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_loads_in_minilora(case, tmp_path):
    torch.manual_seed(0)
    options = dict(CASES[case])
    peft_model = get_peft_model(TorchToyLM(ToyLM()), PeftLoraConfig(r=2, init_lora_weights=False, **options))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.cos(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))
    peft_model.save_pretrained(tmp_path)
    model = load_adapter(ToyLM(), tmp_path)
    np.testing.assert_allclose(model(IDS).numpy(), torch_out(peft_model), rtol=1e-10, atol=1e-12)
    theirs, ours = load_file(tmp_path / "adapter_model.safetensors"), adapter_state_dict(model)
    assert sorted(theirs) == sorted(ours)
    for key in theirs:
        assert np.array_equal(theirs[key], ours[key]), key


@pytest.mark.parametrize("ours,theirs", [("linear", "cat"), ("svd", "svd")])
def test_weighted_adapters_match_peft(ours, theirs, tmp_path):
    config = dict(target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type=None)
    model = get_lora_model(ToyLM(), LoraConfig(r=2, **config), seed=1)
    model.add_adapter("b", LoraConfig(r=2, lora_alpha=3, **config))
    save_adapter(model, tmp_path)
    peft_model = PeftModel.from_pretrained(TorchToyLM(ToyLM()), tmp_path)
    peft_model.load_adapter(tmp_path / "b", adapter_name="b")
    # weights exact in float32: PEFT's svd path holds them in a float32 tensor
    model.add_weighted_adapter(["default", "b"], [0.5, 1.75], "mix", combination_type=ours)
    peft_model.add_weighted_adapter(["default", "b"], [0.5, 1.75], "mix", combination_type=theirs)
    model.set_adapter("mix")
    peft_model.set_adapter("mix")
    np.testing.assert_allclose(model(IDS).numpy(), torch_out(peft_model), rtol=1e-10, atol=1e-12)
