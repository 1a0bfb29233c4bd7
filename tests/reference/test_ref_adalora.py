"""AdaLoRA against Hugging Face PEFT: same forward, same regularizer, same rank patterns, files both ways.

The same toy network is built in both frameworks (layers.{i}.{q,v}_proj, torch weights copied from
minilora's), the adapter tensors are set to the same random values, and, step by step, both
allocators get the same parameters and gradients: the rank patterns and the masked E must be equal.
Files: minilora save_adalora_adapter -> PEFT PeftModel.from_pretrained and PEFT save_pretrained ->
minilora load_adalora_adapter, with one layer pruned to rank 0 (float64, outputs to 1e-12).
"""
from __future__ import annotations

import types

import numpy as np
import torch
from peft import AdaLoraConfig as PeftAdaLoraConfig
from peft import PeftModel, get_peft_model

from minilora import backend, nn
from minilora.lora import get_lora_model
from minilora.lora.adalora import AdaLoraConfig, load_adalora_adapter, save_adalora_adapter
from minilora.tensor import Tensor, no_grad

D = 6
SETTINGS = dict(task_type=None, init_r=4, target_r=2, total_step=12, tinit=2, tfinal=3, lora_alpha=6, beta1=0.8,
                beta2=0.7, orth_reg_weight=0.3, target_modules=["q_proj", "v_proj"])


class Block(nn.Module):
    def __init__(self, rng):
        self.q_proj = nn.Linear(D, D, dtype="float64", rng=rng)
        self.v_proj = nn.Linear(D, D, dtype="float64", rng=rng)


class Toy(nn.Module):
    def __init__(self, seed=0):
        rng = backend.Random(seed)
        self.layers = nn.ModuleList([Block(rng), Block(rng)])

    def forward(self, x):
        for b in self.layers:
            x = x + b.v_proj(b.q_proj(x).tanh())
        return x


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj = torch.nn.Linear(D, D), torch.nn.Linear(D, D)


class TorchToy(torch.nn.Module):
    def __init__(self, source: Toy):
        super().__init__()
        self.layers = torch.nn.ModuleList([TorchBlock(), TorchBlock()])
        self.double()
        self.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in source.state_dict().items()})

    def forward(self, x, with_loss=False):
        for b in self.layers:
            x = x + b.v_proj(b.q_proj(x).tanh())
        return types.SimpleNamespace(logits=x, loss=(x * x).mean()) if with_loss else x


def pair(seed=0):
    """(minilora AdaLoraModel, PEFT model) with equal random adapter tensors (E != 0)."""
    ours = get_lora_model(Toy(), AdaLoraConfig(**SETTINGS))
    theirs = get_peft_model(TorchToy(Toy()), PeftAdaLoraConfig(**SETTINGS))
    rng = np.random.default_rng(seed)
    torch_params = dict(theirs.base_model.model.named_parameters())
    for name, p in ours.model.named_parameters():
        if "lora_" in name:
            p.data = rng.normal(size=p.shape)
            torch_params[name].data = torch.from_numpy(np.array(p.data))
    return ours, theirs, torch_params


def outputs(ours, theirs, x):
    with no_grad():
        mine = ours(Tensor(x)).numpy()
    with torch.no_grad():
        return mine, theirs(torch.from_numpy(x)).numpy()


def test_forward_and_orthogonal_regularizer_match_peft():
    ours, theirs, _ = pair()
    x = np.random.default_rng(1).normal(size=(3, D))
    mine, reference = outputs(ours, theirs, x)
    np.testing.assert_allclose(mine, reference, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        out = theirs.base_model(torch.from_numpy(x), with_loss=True)  # PEFT adds the penalty to outputs.loss
    penalty = out.loss.item() - float((reference ** 2).mean())
    np.testing.assert_allclose(ours.regularization_loss().item(), penalty, rtol=1e-10)


def test_rank_allocator_masks_like_peft_step_by_step():
    ours, theirs, torch_params = pair()
    rng = np.random.default_rng(2)
    for step in range(SETTINGS["total_step"] + 2):
        for name, p in ours.model.named_parameters():
            if "lora_" in name:  # the same gradient and the same "optimizer" move on both sides
                grad, move = rng.normal(size=p.shape), 0.1 * rng.normal(size=p.shape)
                p.grad, p.data = grad, p.data + move
                torch_params[name].grad = torch.from_numpy(grad.copy())
                torch_params[name].data = torch_params[name].data + torch.from_numpy(move)
        ours.update_and_allocate(step)
        theirs.base_model.update_and_allocate(step)
        assert ours.rankallocator.budget_schedule(step) == theirs.base_model.rankallocator.budget_schedule(step)
        reference = theirs.peft_config["default"].rank_pattern
        reference = None if reference is None else {k.replace(".default", ""): [bool(v) for v in mask]
                                                    for k, mask in reference.items()}
        assert ours.peft_config["default"].rank_pattern == reference, step
        for name, p in ours.model.named_parameters():
            if "lora_E" in name:
                np.testing.assert_array_equal(p.data, torch_params[name].detach().numpy())
    assert sum(map(sum, ours.peft_config["default"].rank_pattern.values())) == 8


def test_files_move_both_ways_with_a_layer_at_rank_zero(tmp_path):
    ours, _, _ = pair()
    pattern = {"layers.0.q_proj.lora_E": [True, False, True, True], "layers.0.v_proj.lora_E": [False, True] * 2,
               "layers.1.q_proj.lora_E": [False] * 4, "layers.1.v_proj.lora_E": [False, False, False, True]}
    ours.peft_config["default"].rank_pattern = pattern
    ours.rankallocator.mask_using_rank_pattern(pattern)
    x = np.random.default_rng(3).normal(size=(4, D))
    with no_grad():
        expected = ours(Tensor(x)).numpy()
    save_adalora_adapter(ours, tmp_path / "ours")
    peft_loaded = PeftModel.from_pretrained(TorchToy(Toy()), tmp_path / "ours")
    with torch.no_grad():
        np.testing.assert_allclose(peft_loaded(torch.from_numpy(x)).numpy(), expected, rtol=1e-12, atol=1e-13)
    assert peft_loaded.base_model.model.layers[1].q_proj.lora_A["default"].shape == (0, D)
    peft_loaded.save_pretrained(tmp_path / "theirs")
    back = load_adalora_adapter(Toy(), tmp_path / "theirs")
    with no_grad():
        np.testing.assert_allclose(back(Tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-13)
    assert back.model.layers[1].q_proj.r["default"] == 0
