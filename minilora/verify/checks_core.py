"""Core checks: every primitive (value, VJP, central differences), every fused kernel against its
composite, and a small transformer's forward and backward against the NumPy float64 oracle.

Each check function takes a ``Target`` (backend name, namespace, dtype name, examples, seed) and
returns Rows. Oracles, strongest first: plain NumPy float64 formulas (cases.py), central
differences in float64 (minilora.testing.gradcheck), the float64 NumPy backend.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np

from .. import backend, functional as F, ops
from ..tensor import PRIMITIVES, Tensor, apply
from ..testing import gradcheck
from .cases import CASES, put
from .report import FAIL, Row, Tally, host64

TOL = {"float64": 1e-10, "float32": 1e-5}          # normwise relative, short sums
TOL_LONG = {"float64": 1e-9, "float32": 1e-4}      # a whole model: long sums, many layers
TOL_CENTRAL = 1e-5                                 # central differences (eps 1e-6, float64)


@dataclass
class Target:
    name: str        # backend name
    xp: object       # its namespace
    dtype: str       # "float32" | "float64"
    examples: int
    seed: int = 0

    def rng(self, *salt) -> np.random.Generator:
        words = [zlib.crc32(str(s).encode()) for s in salt]
        return np.random.default_rng([self.seed, *words])


def rounded(a, dtype: str):
    """Host float64 values exactly representable in ``dtype`` (so the oracle sees the same inputs)."""
    return np.asarray(a, dtype=np.float64).astype(dtype).astype(np.float64)


def run_vjp(fn, inputs, xp, dtype: str, u_seed: int):
    """Apply fn to leaves made from ``inputs`` (in xp, dtype), backpropagate a seeded random cotangent.

    Returns (output, [input gradients]) on the host in float64 (zeros for an input with no gradient).
    """
    leaves = [Tensor(put(a, xp, dtype), requires_grad=True) for a in inputs]
    out = fn(*leaves)
    u = rounded(np.random.default_rng(u_seed).standard_normal(out.shape), dtype)
    out.backward(put(u, xp, dtype))
    grads = [np.zeros(a.shape) if t.grad is None else host64(t.grad) for a, t in zip(inputs, leaves)]
    return host64(out.data), grads


def flat(arrays):
    """Several gradients as one vector: the gradient is judged normwise as a whole (a component that
    is zero in exact arithmetic, such as a key bias under softmax, is then judged on the same scale)."""
    return np.concatenate([np.reshape(a, (-1,)) for a in arrays] + [np.zeros(0)])


def primitive_op(name: str):
    return functools.partial(apply, PRIMITIVES[name])


def check_primitives(t: Target) -> list:
    """Per primitive: value vs NumPy, VJP vs the float64 NumPy backend, VJP vs central differences."""
    rows = []
    for name in sorted(PRIMITIVES):
        if name not in CASES:
            rows.append(Row(f"{name} (primitive)", None, None, None, FAIL,
                            "no verify case: add one to minilora/verify/cases.py"))
            continue
        value, grad = Tally(f"{name} value", TOL[t.dtype], 1.0), Tally(f"{name} vjp", TOL[t.dtype], 1.0)
        central = Tally(f"{name} vjp central-diff f64", TOL_CENTRAL)
        op = primitive_op(name)
        for i in range(t.examples):
            case = CASES[name](t.rng("primitive", name, i), t.dtype)
            inputs = [rounded(a, t.dtype) for a in case.inputs]
            try:
                with backend.use_backend(t.name):
                    out, grads = run_vjp(case.call(op, t.xp, t.dtype), inputs, t.xp, t.dtype, i)
                value.add(out, case.reference(*inputs))
                with backend.use_backend("numpy"):
                    _, grads64 = run_vjp(case.call(op, np, "float64"), inputs, np, "float64", i)
                grad.add(flat(grads), flat(grads64))
            except Exception as exc:  # a backend that raises fails the row, the report goes on
                value.error(exc)
                grad.error(exc)
            try:
                with backend.use_backend(t.name):
                    leaves = [Tensor(put(a, t.xp, "float64"), requires_grad=True) for a in inputs]
                    worst = gradcheck(case.call(op, t.xp, "float64"), *leaves, seed=i, raise_on_fail=False)
                central.record(None, worst)
            except Exception as exc:
                central.error(exc)
        rows += [value.row(), grad.row(), central.row()]
    return rows


def fused_names() -> list:
    return sorted(n for n, p in PRIMITIVES.items() if p.fused and hasattr(F, "composite_" + n) and n in CASES)


def check_fused(t: Target) -> list:
    """Each fused kernel equals its composite of basic primitives, value and gradient, on the backend."""
    rows = []
    for name in fused_names():
        value = Tally(f"fused {name} == composite, value", TOL[t.dtype], 1.0)
        grad = Tally(f"fused {name} == composite, grad", TOL[t.dtype], 1.0)
        for i in range(t.examples):
            case = CASES[name](t.rng("fused", name, i), t.dtype)
            inputs = [rounded(a, t.dtype) for a in case.inputs]
            try:
                with backend.use_backend(t.name):
                    y1, g1 = run_vjp(case.call(primitive_op(name), t.xp, t.dtype), inputs, t.xp, t.dtype, i)
                    y2, g2 = run_vjp(case.call(getattr(F, "composite_" + name), t.xp, t.dtype), inputs, t.xp,
                                     t.dtype, i)
                value.add(y1, y2)
                grad.add(flat(g1), flat(g2))
            except Exception as exc:
                value.error(exc)
                grad.error(exc)
        rows += [value.row(), grad.row()]
    return rows


# ------------------------------------------------------------------ a whole model
def model_configs():
    from ..models.config import ModelConfig
    small = dict(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2, max_position_embeddings=16)
    return {
        "llama": ModelConfig(style="llama", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                             rope_theta=100.0, **small),
        "gpt2": ModelConfig(style="gpt2", num_attention_heads=2, tie_word_embeddings=False, attention_bias=True,
                            mlp_bias=True, **small),
    }


def random_weights(model, rng, dtype: str) -> dict:
    """Host weights of O(1) effect (the init's 0.02 would leave logits nearly flat), rounded to dtype."""
    out = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if len(shape) == 2:
            w = rng.standard_normal(shape) / np.sqrt(shape[-1])
        elif name.endswith("bias"):
            w = 0.1 * rng.standard_normal(shape)
        else:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        out[name] = rounded(w, dtype)
    return out


def transformer_run(config, weights, ids, targets, name: str, dtype: str):
    """logits, loss and every parameter gradient (host float64) of a Transformer on backend ``name``."""
    from ..models.transformer import Transformer
    with backend.use_backend(name) as xp:
        model = Transformer(config, dtype=dtype)
        model.load_state_dict({k: put(v, xp, dtype) for k, v in weights.items()})
        logits = model(put(ids, xp))  # (B, T, V)
        b, t, v = logits.shape
        loss = F.cross_entropy(ops.reshape(logits, shape=(b * t, v)), put(targets.reshape(-1), xp))
        loss.backward()
        grads = {n: host64(p.grad) for n, p in model.named_parameters() if p.grad is not None}
        return host64(logits.data), host64(loss.data), grads


def transformer_central_diff(config, weights, ids, targets, name: str, rng, eps: float = 1e-6) -> float:
    """Relative gap between <grad L, d> and (L(w + eps d) - L(w - eps d)) / (2 eps) for a random
    direction d over every parameter at once, in float64 on backend ``name``."""
    from ..models.transformer import Transformer
    from ..tensor import no_grad
    direction = {k: rng.standard_normal(v.shape) for k, v in weights.items()}
    _, _, grads = transformer_run(config, weights, ids, targets, name, "float64")
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in grads)
    losses = []
    with backend.use_backend(name) as xp, no_grad():
        model = Transformer(config, dtype="float64")
        for sign in (1.0, -1.0):
            model.load_state_dict({k: put(v + sign * eps * direction[k], xp, "float64") for k, v in weights.items()})
            logits = model(put(ids, xp))
            b, n, v = logits.shape
            losses.append(float(host64(F.cross_entropy(ops.reshape(logits, shape=(b * n, v)),
                                                       put(targets.reshape(-1), xp)))))
    numeric = (losses[0] - losses[1]) / (2 * eps)
    return abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)


def check_transformer(t: Target) -> list:
    """Llama-style (RMSNorm, RoPE, GQA, SwiGLU, tied head) and GPT-2-style decoders: forward and
    backward on the backend against the same model and weights on NumPy float64."""
    rows = []
    for style, config in model_configs().items():
        fwd = Tally(f"transformer {style} logits+loss", TOL_LONG[t.dtype])
        bwd = Tally(f"transformer {style} grads", TOL_LONG[t.dtype])
        central = Tally(f"transformer {style} grads central-diff f64", TOL_CENTRAL)
        for i in range(t.examples):
            rng = t.rng("transformer", style, i)
            with backend.use_backend("numpy"):
                from ..models.transformer import Transformer
                weights = random_weights(Transformer(config, dtype="float64"), rng, t.dtype)
            b, n = int(rng.integers(1, 3)), int(rng.integers(2, 7))
            ids = rng.integers(0, config.vocab_size, (b, n))
            targets = rng.integers(0, config.vocab_size, (b, n))
            targets[rng.uniform(size=(b, n)) < 0.2] = -100
            try:
                got = transformer_run(config, weights, ids, targets, t.name, t.dtype)
                want = transformer_run(config, weights, ids, targets, "numpy", "float64")
                fwd.add(got[0], want[0])
                fwd.add(got[1], want[1])
                if set(got[2]) != set(want[2]):
                    raise ValueError(f"gradients differ in names: {sorted(set(got[2]) ^ set(want[2]))}")
                bwd.add(flat(got[2][k] for k in sorted(want[2])), flat(want[2][k] for k in sorted(want[2])))
            except Exception as exc:
                fwd.error(exc)
                bwd.error(exc)
            try:
                central.record(None, transformer_central_diff(config, weights, ids, targets, t.name, rng))
            except Exception as exc:
                central.error(exc)
        rows += [fwd.row(), bwd.row(), central.row()]
    return rows
