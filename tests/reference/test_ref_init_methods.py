"""PiSSA, randomized PiSSA and OLoRA against PEFT's own initialization of the same float32 weight.

PEFT's LoRA Linear is built over a torch Linear holding W; its init_lora_weights rewrites lora_A,
lora_B and the base weight. minilora's pure functions (minilora/lora/init_methods.py) must give the
same factors (singular vectors up to a sign per component, which SVD leaves free), the same s B A
and the same residual base weight, to float32 rounding. The randomized variant draws different
random sketches in each framework, so it is compared through the subspace both converge to.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from test_ref_lora import IDS, TorchToyLM, ToyLM, torch_out

from minilora import backend
from minilora.lora import LoraConfig, get_lora_model, load_adapter, save_adapter
from minilora.lora import init_methods as im

D_OUT, D_IN, R, ALPHA = 24, 16, 4, 8  # scaling 2.0
TOL = 1e-5 * 8  # float32 rounding on entries up to ~8 (the weights below)


class One(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.proj = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.from_numpy(w))

    def forward(self, x):
        return self.proj(x)


def peft_init(w, init):
    model = get_peft_model(One(w), PeftLoraConfig(r=R, lora_alpha=ALPHA, target_modules=["proj"],
                                                  init_lora_weights=init))
    layer = model.base_model.model.proj
    return (layer.lora_A["default"].weight.detach().numpy(), layer.lora_B["default"].weight.detach().numpy(),
            layer.base_layer.weight.detach().numpy())


def structured_weight(seed=0):
    rng = np.random.default_rng(seed)
    w = 0.05 * rng.standard_normal((D_OUT, D_IN)) + rng.standard_normal((D_OUT, R)) @ rng.standard_normal((R, D_IN))
    return w.astype(np.float32)


def aligned(ours_a, ours_b, their_a):
    """Flip each of our rank-1 components to the sign PEFT's SVD chose."""
    signs = np.sign(np.sum(ours_a * their_a, axis=1))
    return ours_a * signs[:, None], ours_b * signs[None, :]


def test_pissa_matches_peft():
    w = structured_weight()
    a, b, res = im.pissa(np, w, R, ALPHA / R)
    ta, tb, tres = peft_init(w, "pissa")
    a, b = aligned(a, b, ta)
    np.testing.assert_allclose(a, ta, atol=TOL)
    np.testing.assert_allclose(b, tb, atol=TOL)
    np.testing.assert_allclose(res, tres, atol=TOL)


def test_olora_matches_peft():
    w = structured_weight(1)
    a, b, res = im.olora(np, w, R, ALPHA / R)
    ta, tb, tres = peft_init(w, "olora")
    np.testing.assert_allclose(a, ta, atol=TOL)  # Householder QR: the same signs in both LAPACK calls
    np.testing.assert_allclose(b, tb, atol=TOL)
    np.testing.assert_allclose(res, tres, atol=TOL)


def test_randomized_pissa_reaches_the_subspace_peft_reaches():
    w = structured_weight(2)
    a, b, res = im.pissa_lowrank(np, w, R, ALPHA / R, 8, backend.Random(0))
    torch.manual_seed(0)
    ta, tb, tres = peft_init(w, "pissa_niter_8")
    np.testing.assert_allclose(b @ a, tb @ ta, atol=5e-4)
    np.testing.assert_allclose(res, tres, atol=1e-3)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_both_keep_base_plus_adapter_equal_to_the_weight(init):
    w = structured_weight(3)
    ta, tb, tres = peft_init(w, init)
    np.testing.assert_allclose(tres + (ALPHA / R) * tb @ ta, w, atol=1e-5)


# ---------------------------------------------------------------- models, and the conversion both ways
def nudge(shape):
    return 0.05 * np.cos(np.arange(int(np.prod(shape))).reshape(tuple(shape)))


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_minilora_converted_adapter_loads_in_peft_on_the_untouched_base(init, tmp_path):
    model = get_lora_model(ToyLM(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=init, task_type=None), seed=1)
    save_adapter(model, tmp_path / "initial")
    for p in (p for _, p in model.named_parameters() if p.requires_grad):
        p.data = p.data + nudge(p.shape)
    save_adapter(model, tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "initial")
    peft_model = PeftModel.from_pretrained(TorchToyLM(ToyLM()), tmp_path / "lora")
    np.testing.assert_allclose(torch_out(peft_model), model(IDS).numpy(), atol=1e-6)


def toy32():
    """The toy in float32: PEFT refuses PiSSA on float64 weights."""
    model = ToyLM()
    for _, p in model.named_parameters():
        p.data = p.data.astype(np.float32)
    return model


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_peft_adapters_load_in_minilora_as_saved_and_converted(init, tmp_path):
    peft_model = get_peft_model(TorchToyLM(ToyLM()).float(), PeftLoraConfig(r=2, lora_alpha=4, init_lora_weights=init,
                                                                     target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].init_lora_weights = True  # PEFT's recipe for the initial folder
    peft_model.save_pretrained(tmp_path / "initial")
    peft_model.peft_config["default"].init_lora_weights = init
    with torch.no_grad():
        for p in (p for p in peft_model.parameters() if p.requires_grad):
            p.add_(torch.from_numpy(nudge(p.shape)).to(p.dtype))
    expected = torch_out(peft_model)
    peft_model.save_pretrained(tmp_path / "as_saved")  # minilora re-runs the init on its fresh base
    np.testing.assert_allclose(load_adapter(toy32(), tmp_path / "as_saved")(IDS).numpy(), expected, atol=1e-5)
    peft_model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    loaded = load_adapter(toy32(), tmp_path / "lora")
    assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].init_lora_weights is True
    np.testing.assert_allclose(loaded(IDS).numpy(), expected, atol=1e-5)


def peft_loftq_on_cpu():
    """PEFT's loftq_init runs on "cuda" (or "xpu") only; the same source with the device set to "cpu"."""
    import inspect
    import peft.utils.loftq_utils as loftq_utils
    source = inspect.getsource(loftq_utils.loftq_init).replace('"xpu" if is_xpu_available() else "cuda"', '"cpu"')
    assert '"cpu"' in source
    namespace = dict(vars(loftq_utils))
    exec(compile(source.replace("@torch.no_grad()\n", ""), "peft_loftq_cpu", "exec"), namespace)
    return namespace["loftq_init"]


@pytest.mark.parametrize("iters", [1, 3])
def test_loftq_matches_pefts_algorithm(iters):
    """Same NF4 bytes (minilora's quantizer equals bitsandbytes'), same SVD: the same Q and s B A (s = 1)."""
    from minilora.quant.quantize import dequantize_4bit, quantize_4bit
    rng = np.random.default_rng(iters)
    w = (0.02 * rng.standard_normal((64, 128)) + 0.05 * rng.standard_normal((64, 4)) @ rng.standard_normal((4, 128)))
    w = w.astype(np.float32)
    their_q, their_a, their_b = peft_loftq_on_cpu()(torch.from_numpy(w), num_bits=4, reduced_rank=4, num_iter=iters)

    def quantize(x):
        packed, state = quantize_4bit(x, blocksize=64, double_quant=False)
        return dequantize_4bit(packed, state), None
    _, q, a, b = im.loftq(np, w, 4, 1.0, iters, quantize)
    np.testing.assert_allclose(q, their_q.numpy(), atol=1e-6)
    np.testing.assert_allclose(b @ a, (their_b @ their_a).numpy(), atol=1e-5)
