"""DoRA against Hugging Face PEFT (use_dora=True): files both ways, outputs, gradients, merges.

The toy network of test_ref_lora.py in float64. A DoRA adapter moved away from its init (B != 0,
m != ||W0||_c) must give PEFT's outputs to rtol 1e-10 in both directions, the tensors of PEFT's file
bit for bit (key ``<path>.lora_magnitude_vector``), PEFT's gradients of A, B and m (the norm
detached in both), and PEFT's merged weights. QDoRA: the same adapter over bitsandbytes'
Linear4bit in PEFT and minilora's Linear4bit (whose bytes equal bitsandbytes') gives the same output.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.numpy import load_file
from test_ref_lora import IDS, TorchToyLM, ToyLM, torch_out

from minilora import backend, nn
from minilora.tensor import Tensor
from minilora.lora import LoraConfig, adapter_parameters, adapter_state_dict, get_lora_model, load_adapter, save_adapter

CASES = {
    "q_v": dict(target_modules=["q_proj", "v_proj"]),
    "rslora_patterns": dict(target_modules=["q_proj", "v_proj"], use_rslora=True, lora_alpha=5,
                            rank_pattern={"layers.1.v_proj": 3}),
    "with_lm_head_bias_all": dict(target_modules=["q_proj", "lm_head"], bias="all"),
}


def perturb_minilora(model):
    with backend.use_backend("numpy"):
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.data = p.data + 0.05 * np.cos(np.arange(p.size).reshape(p.shape))


def peft_saved_key(name: str) -> str:
    """PEFT's parameter name -> the key its file uses (adapter name out, the magnitude's .weight out)."""
    key = name.replace(".default", "")
    return key[:-len(".weight")] if key.endswith("lora_magnitude_vector.weight") else key


@pytest.mark.parametrize("case", sorted(CASES))
def test_minilora_dora_adapter_loads_in_peft(case, tmp_path):
    model = get_lora_model(ToyLM(), LoraConfig(r=2, use_dora=True, init_lora_weights=False, task_type=None,
                                               **CASES[case]), seed=4)
    perturb_minilora(model)
    expected = model(IDS).numpy()
    save_adapter(model, tmp_path)
    peft_model = PeftModel.from_pretrained(TorchToyLM(ToyLM()), tmp_path)
    np.testing.assert_allclose(torch_out(peft_model), expected, rtol=1e-10, atol=1e-12)
    merged = peft_model.merge_and_unload()
    plain = model.merge_and_unload()
    for name, p in plain.named_parameters():
        np.testing.assert_allclose(merged.state_dict()[name].numpy(), p.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_dora_adapter_loads_in_minilora(case, tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(TorchToyLM(ToyLM()), PeftLoraConfig(r=2, use_dora=True, init_lora_weights=False,
                                                                     **CASES[case]))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.cos(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))
    peft_model.save_pretrained(tmp_path)
    model = load_adapter(ToyLM(), tmp_path)
    np.testing.assert_allclose(model(IDS).numpy(), torch_out(peft_model), rtol=1e-10, atol=1e-12)
    theirs, ours = load_file(tmp_path / "adapter_model.safetensors"), adapter_state_dict(model)
    assert sorted(theirs) == sorted(ours)
    assert any(k.endswith(".lora_magnitude_vector") for k in theirs)
    for key in theirs:
        assert np.array_equal(theirs[key], ours[key]), key


def test_gradients_of_a_b_and_m_match_peft(tmp_path):
    model = get_lora_model(ToyLM(), LoraConfig(r=2, use_dora=True, init_lora_weights=False, task_type=None,
                                               target_modules=["q_proj", "v_proj"]), seed=2)
    perturb_minilora(model)
    save_adapter(model, tmp_path)
    peft_model = PeftModel.from_pretrained(TorchToyLM(ToyLM()), tmp_path, is_trainable=True)
    weights = np.sin(np.arange(np.prod(model(IDS).shape))).reshape(model(IDS).shape)
    model.train()
    (model(IDS) * weights).sum().backward()
    (peft_model(torch.from_numpy(IDS)) * torch.from_numpy(weights)).sum().backward()
    ours = adapter_parameters(model)
    theirs = {peft_saved_key(n): p.grad.numpy() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert sorted(theirs) == sorted(ours) and len(ours) == 12  # A, B, m on 4 layers
    for key, p in ours.items():
        np.testing.assert_allclose(backend.to_numpy(p.grad), theirs[key], rtol=1e-9, atol=1e-12, err_msg=key)


class Pair(nn.Module):
    """Two float32 projections wide enough for bitsandbytes' CPU 4-bit kernel (both sides multiples of 64)."""

    def __init__(self):
        rng = backend.Random(0)
        self.q_proj = nn.Linear(64, 64, dtype="float32", rng=rng)
        self.v_proj = nn.Linear(64, 64, bias=False, dtype="float32", rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


class TorchPair(torch.nn.Module):
    def __init__(self, source: Pair):
        super().__init__()
        self.q_proj, self.v_proj = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64, bias=False)
        self.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in source.state_dict().items()})

    def forward(self, x):
        return self.v_proj(torch.tanh(self.q_proj(x)))


def bnb_4bit(lin):
    """bitsandbytes' Linear4bit (NF4, blocks of 64, no double quantization) holding ``lin``'s weight."""
    import bitsandbytes as bnb
    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                          compute_dtype=torch.float32, compress_statistics=False, quant_type="nf4")
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, compress_statistics=False,
                                 quant_type="nf4", blocksize=64)
    if lin.bias is not None:
        q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return q.to("cpu")


def test_qdora_over_4bit_matches_peft_over_bitsandbytes(tmp_path):
    """PEFT's DoRA forward reads dequantize(base) and base(x) as minilora's does. The 4-bit bases go in
    after PEFT loaded the adapter on the float model: loading over bitsandbytes layers on CPU turns
    their quant_state dtype into bfloat16 (peft 0.21.2, bitsandbytes 0.50.2), another computation."""
    from minilora.quant.convert import quantize_model
    float_model = get_lora_model(Pair(), LoraConfig(r=4, use_dora=True, init_lora_weights=False, task_type=None,
                                                    target_modules=["q_proj", "v_proj"]), seed=3)
    perturb_minilora(float_model)
    save_adapter(float_model, tmp_path)
    base = Pair()
    quantize_model(base, target_modules=["q_proj", "v_proj"], double_quant=False)
    ours = load_adapter(base, tmp_path)
    theirs = PeftModel.from_pretrained(TorchPair(Pair()), tmp_path)
    for name in ("q_proj", "v_proj"):
        layer = getattr(theirs.base_model.model, name)
        layer.base_layer = bnb_4bit(layer.base_layer)
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    float_out = float_model(Tensor(x.astype(np.float64))).numpy()
    assert not np.allclose(expected, float_out, atol=1e-3)  # the 4-bit base shows in the output
    np.testing.assert_allclose(ours(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
