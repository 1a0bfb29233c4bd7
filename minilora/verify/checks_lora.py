"""LoRA-family checks: the LoRA forward and gradients against NumPy float64 formulas, merged == unmerged,
rsLoRA scaling, several adapters summing, AdaLoRA masking, and LoRA+ at ratio 1 == plain AdamW.

The oracle reads the backend model's own weights back to the host (so both sides use the same
rounded values) and evaluates  y = x W^T + b + sum_a s_a (x A_a^T) B_a^T  in float64 (arXiv 2106.09685;
s = alpha / r, rsLoRA alpha / sqrt(r), arXiv 2312.03732).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .. import backend
from ..nn import Embedding, LayerNorm, Linear, Module
from ..tensor import Tensor, no_grad
from .cases import put
from .checks_core import TOL, Target, rounded
from .report import Tally, host64


class TwoLayer(Module):
    """y = v_proj(tanh(q_proj(x))): two adapted layers with a nonlinearity between them."""

    def __init__(self, d_in, d_hidden, d_out, xp, dtype, seed):
        rng = backend.Random(seed, xp)
        self.q_proj = Linear(d_in, d_hidden, bias=True, dtype=dtype, rng=rng)
        self.v_proj = Linear(d_hidden, d_out, bias=False, dtype=dtype, rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


def layer_oracle(layer, names, x):
    """x W^T + b + sum over ``names`` of s (x A^T) B^T, from the layer's weights, in float64."""
    y = x @ host64(layer.base_layer.weight).T
    if layer.base_layer.bias is not None:
        y = y + host64(layer.base_layer.bias)
    for name in names:
        a, b = (host64(f) for f in layer.factors(name))
        y = y + layer.scaling[name] * (x @ a.T) @ b.T
    return y


def model_oracle(model, names, x):
    layers = dict(_lora_layers(model))
    return layer_oracle(layers["v_proj"], names, np.tanh(layer_oracle(layers["q_proj"], names, x)))


def _lora_layers(model):
    from ..lora import lora_layers
    return lora_layers(model.model)


def _draw(t: Target, label: str, i: int):
    rng = t.rng("lora", label, i)
    d_in, d_hidden, d_out, r, n = (int(v) for v in rng.integers(1, 7, size=5))
    alpha = [1.0, 4.0, 16.0][int(rng.integers(3))]
    return rng, d_in, d_hidden, d_out, r, n, alpha


def check_lora(t: Target) -> list:
    from ..lora import LoraConfig, get_lora_model
    forward = Tally("lora forward vs oracle", TOL[t.dtype])
    grads = Tally("lora grads x, A, B vs oracle", TOL[t.dtype])
    merged = Tally("lora merged == unmerged", TOL[t.dtype])
    rslora = Tally("rslora scaling alpha/sqrt(r), forward", TOL[t.dtype])
    multi = Tally("multi-adapter sum, unmerged and merged", TOL[t.dtype])
    for i in range(t.examples):
        rng, d_in, d_hidden, d_out, r, n, alpha = _draw(t, "lora", i)
        x = rounded(rng.uniform(-2, 2, size=(n, d_in)), t.dtype)
        u = rounded(rng.standard_normal((n, d_out)), t.dtype)
        targets = ["q_proj", "v_proj"]
        for tally, run in ((forward, "plain"), (rslora, "rslora"), (multi, "multi")):
            try:
                with backend.use_backend(t.name) as xp:
                    base = TwoLayer(d_in, d_hidden, d_out, xp, getattr(xp, t.dtype), seed=i)
                    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                                        use_rslora=run == "rslora")
                    model = get_lora_model(base, config, seed=i)
                    names = ["default"]
                    if run == "multi":
                        model.add_adapter("second", LoraConfig(r=r + 1, lora_alpha=2 * alpha, target_modules=targets,
                                                               init_lora_weights=False))
                        names = ["default", "second"]
                        model.set_adapter(names)
                    xt = Tensor(put(x, xp, t.dtype), requires_grad=True)
                    y = model(xt)
                    tally.add(y, model_oracle(model, names, x))
                    if run == "rslora":
                        s = [layer.scaling["default"] for _, layer in _lora_layers(model)]
                        want = alpha / math.sqrt(r)
                        tally.record(max(abs(v - want) for v in s), max(abs(v - want) / want for v in s))
                    if run == "plain":
                        (y * Tensor(put(u, xp, t.dtype))).sum().backward()
                        grads.add(*_two_layer_grads(model, x, u, xt))
                    with no_grad():
                        plain = model.merge_and_unload()
                        y_merged = plain(Tensor(put(x, xp, t.dtype)))
                    (merged if run == "plain" else tally).add(y_merged, host64(y))
            except Exception as exc:
                tally.error(exc)
                if run == "plain":
                    grads.error(exc)
                    merged.error(exc)
    return [forward.row(), grads.row(), merged.row(), rslora.row(), multi.row()]


def _two_layer_grads(model, x, u, xt):
    """(got, want): gradients of sum(u * y) in x and every A, B, backpropagated by hand in float64."""
    layers = dict(_lora_layers(model))
    q, v = layers["q_proj"], layers["v_proj"]
    h = np.tanh(layer_oracle(q, ["default"], x))  # (n, d_hidden)
    want, got = [], [host64(xt.grad)]

    def back(layer, inp, g):
        """Gradients of a LoRA linear at input ``inp`` for output cotangent g: (g_in, gA, gB)."""
        a, b = (host64(f) for f in layer.factors("default"))
        s = layer.scaling["default"]
        w = host64(layer.base_layer.weight)
        return g @ w + s * (g @ b) @ a, s * (g @ b).T @ inp, s * g.T @ (inp @ a.T)

    g_h, ga_v, gb_v = back(v, h, u)
    g_x, ga_q, gb_q = back(q, x, g_h * (1 - h * h))
    want += [g_x, ga_q, gb_q, ga_v, gb_v]
    for layer in (q, v):
        got += [host64(layer.lora_A["default"].weight.grad), host64(layer.lora_B["default"].weight.grad)]
    return np.concatenate([g.ravel() for g in got]), np.concatenate([g.ravel() for g in want])


# ------------------------------------------------------------------ AdaLoRA
def check_adalora(t: Target) -> list:
    """Masking keeps exactly the triplets with the top ``budget`` scores (scores recomputed in float64
    from PEFT's formulas), zeroes E of the rest, and the masked layer equals the oracle and the layer
    with the pruned rows and columns deleted."""
    from ..lora import get_lora_model
    from ..lora.adalora import AdaLoraConfig
    scores_t = Tally("adalora scores vs oracle", TOL[t.dtype])
    mask_t = Tally("adalora mask == top-budget triplets", 0.0)
    fwd_t = Tally("adalora masked forward vs oracle, resized", TOL[t.dtype])
    for i in range(t.examples):
        rng, d_in, d_hidden, d_out, _, n, alpha = _draw(t, "adalora", i)
        init_r = int(rng.integers(1, 5))
        x = rounded(rng.uniform(-2, 2, size=(n, d_in)), t.dtype)
        try:
            with backend.use_backend(t.name) as xp:
                config = AdaLoraConfig(init_r=init_r, target_r=1, total_step=10, lora_alpha=alpha,
                                       target_modules=["q_proj", "v_proj"], init_lora_weights=False)
                model = get_lora_model(TwoLayer(d_in, d_hidden, d_out, xp, getattr(xp, t.dtype), i), config, seed=i)
                alloc = model.rankallocator
                triplets = {}
                for path, layer in alloc.layers:
                    for attr in ("lora_A", "lora_E", "lora_B"):
                        p = getattr(layer, attr)["default"]
                        p.grad = put(rounded(rng.standard_normal(p.shape), t.dtype), xp, t.dtype)
                    triplets[path] = [host64(v) for v in layer.triplet("default")] + \
                        [host64(getattr(layer, a)["default"].grad) for a in ("lora_A", "lora_E", "lora_B")]
                alloc.update_ipt()
                got_scores = {p: host64(s) for p, s in alloc.triplet_scores().items()}
                want_scores = {p: _adalora_scores(v, config.beta1, config.beta2) for p, v in triplets.items()}
                budget = int(rng.integers(0, alloc.init_bgt + 1))
                with no_grad():
                    pattern = alloc.mask_to_budget(budget)
                    e_after = {p: host64(layer.lora_E["default"]) for p, layer in alloc.layers}
                    y_masked = model(Tensor(put(x, xp, t.dtype)))
                    want_y = _adalora_forward(model, x)
                    for path, layer in alloc.layers:
                        layer.resize("default", pattern[f"{path}.lora_E"])
                    y_resized = model(Tensor(put(x, xp, t.dtype)))
            order = sorted(want_scores)
            scores_t.add(np.concatenate([got_scores[p] for p in order]), np.concatenate([want_scores[p] for p in order]))
            flat = np.concatenate([got_scores[p] for p in order])
            kept = np.concatenate([np.array(pattern[f"{p}.lora_E"], bool) for p in order])
            top = set(np.argsort(flat, kind="stable")[len(flat) - budget:]) if budget else set()
            ties = len(np.unique(flat)) < len(flat)
            ok = kept.sum() <= budget if ties else set(np.flatnonzero(kept)) == top
            e_ok = True  # pruned E_i are exactly 0, kept E_i unchanged
            for p in order:
                keep = np.array(pattern[f"{p}.lora_E"], bool)
                e_ok &= bool(np.all(e_after[p][~keep] == 0) and np.array_equal(e_after[p][keep], triplets[p][1][keep]))
            mask_t.record(float(abs(int(kept.sum()) - budget)) if not ties else 0.0, None, ok=bool(ok and e_ok))
            fwd_t.add(y_masked, want_y)
            fwd_t.add(y_resized, want_y)
        except Exception as exc:
            for tally in (scores_t, mask_t, fwd_t):
                tally.error(exc)
    return [scores_t.row(), mask_t.row(), fwd_t.row()]


def _adalora_scores(values, beta1, beta2):
    """S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki), s = Ibar * Ubar after one EMA step from zero."""
    a, e, b, ga, ge, gb = values

    def s(p, g):
        ipt = np.abs(p * g)
        ibar = (1 - beta1) * ipt
        return ibar * ((1 - beta2) * np.abs(ipt - ibar))
    return s(e, ge).reshape(-1) + s(a, ga).mean(axis=1) + s(b, gb).mean(axis=0)


def _adalora_forward(model, x):
    def layer(l, inp):
        a, e, b = (host64(v) for v in l.triplet("default"))
        y = inp @ host64(l.base_layer.weight).T
        if l.base_layer.bias is not None:
            y = y + host64(l.base_layer.bias)
        return y + l.scale("default") * (inp @ (a * e).T) @ b.T
    layers = dict(_lora_layers(model))
    return layer(layers["v_proj"], np.tanh(layer(layers["q_proj"], x)))


# ------------------------------------------------------------------ LoRA+
class WithEmbedding(Module):
    def __init__(self, xp, dtype, seed):
        rng = backend.Random(seed, xp)
        self.embed = Embedding(11, 6, dtype=dtype, rng=rng)
        self.q_proj = Linear(6, 6, bias=True, dtype=dtype, rng=rng)
        self.v_proj = Linear(6, 4, bias=False, dtype=dtype, rng=rng)
        self.norm = LayerNorm(4, dtype=dtype, xp=xp)

    def forward(self, ids):
        return self.norm(self.v_proj(self.q_proj(self.embed(ids))))


def check_loraplus(t: Target) -> list:
    """create_loraplus_optimizer(ratio 1, embedding lr = lr) takes bit-identical AdamW steps."""
    from ..lora import LoraConfig, get_lora_model
    from ..optim import AdamW, create_loraplus_optimizer
    tally = Tally("lora+ ratio 1 == plain AdamW (bitwise)", 0.0)
    for i in range(t.examples):
        rng = t.rng("loraplus", i)
        lr, steps = [1e-3, 3e-2][i % 2], int(rng.integers(1, 5))
        ids = rng.integers(0, 11, (2, 4))
        try:
            with backend.use_backend(t.name) as xp:
                def make():
                    config = LoraConfig(r=2, lora_alpha=4, target_modules=["embed", "q_proj", "v_proj"], bias="all",
                                        init_lora_weights=False)
                    return get_lora_model(WithEmbedding(xp, getattr(xp, t.dtype), i), config, seed=i)
                a, b = make(), make()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    plus = create_loraplus_optimizer(a, AdamW, lr=lr, loraplus_lr_ratio=1, loraplus_lr_embedding=lr,
                                                     weight_decay=0.0)
                plain = AdamW([p for p in b.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
                for model, opt in ((a, plus), (b, plain)):
                    for _ in range(steps):
                        out = model(put(ids, xp))
                        (out * out).sum().backward()
                        opt.step()
                        opt.zero_grad()
                got = {n: host64(p) for n, p in a.named_parameters() if p.requires_grad}
                want = {n: host64(p) for n, p in b.named_parameters() if p.requires_grad}
            same = got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
            worst = max((float(np.max(np.abs(got[k] - want[k]))) for k in want if k in got), default=0.0)
            tally.record(worst, None, ok=same)
        except Exception as exc:
            tally.error(exc)
    return [tally.row()]


CHECKS = (check_lora, check_adalora, check_loraplus)
