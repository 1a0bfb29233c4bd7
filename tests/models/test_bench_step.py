"""The training step bench/bench_step.py times: its FLOP count and GEMM shapes are those of the matmuls
the step runs, and a float32 step stays float32."""
from __future__ import annotations

import numpy as np
import pytest

from minilora.models import ModelConfig, Transformer, lm_loss


def tiny(**kw):
    base = dict(style="llama", vocab_size=37, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0)
    return ModelConfig(**{**base, **kw})


def ids_of(seed, b, t, vocab=37):
    return np.random.default_rng(seed).integers(0, vocab, (b, t))


def _load_bench():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_step.py"
    spec = importlib.util.spec_from_file_location("bench_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _qv_only(model):
    model.freeze()
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad = True
        layer.self_attn.v_proj.weight.requires_grad = True
    return model


def test_bench_flop_count_matches_the_gemms_actually_run(monkeypatch):
    """bench_step's analytic count equals the FLOPs of every matmul the q/v-trainable step executes."""
    bench = _load_bench()
    cfg = tiny(num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, hidden_size=24)
    model = _qv_only(Transformer(cfg))
    executed = []
    real = np.matmul

    def counting(a, b, *args, **kw):
        out = real(a, b, *args, **kw)
        executed.append(2.0 * out.size * a.shape[-1])
        return out
    monkeypatch.setattr(np, "matmul", counting)
    lm_loss(model, ids_of(0, 2, 5), ids_of(1, 2, 5)).backward()
    monkeypatch.setattr(np, "matmul", real)
    expected = sum(r["gflop"] for r in bench.step_gemms(cfg, 2, 5)) * 1e9
    assert sum(executed) == pytest.approx(expected, rel=1e-12)


def test_bench_gemm_shapes_are_the_gemms_actually_run(monkeypatch):
    """bench_step's peak times the step's own shapes: every (M, K, N, batch) as often as the step runs it,
    the lm_head included as the tiled loss runs it (a vocabulary wider than one tile of classes)."""
    import collections
    bench = _load_bench()
    cfg = tiny(num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, hidden_size=24, vocab_size=5000)
    model = _qv_only(Transformer(cfg))
    executed = collections.Counter()
    real = np.matmul

    def recording(a, b, *args, **kw):
        out = real(a, b, *args, **kw)
        executed[(a.shape[-2], a.shape[-1], out.shape[-1], int(np.prod(out.shape[:-2], dtype=np.int64)))] += 1
        return out
    monkeypatch.setattr(np, "matmul", recording)
    lm_loss(model, ids_of(0, 2, 5, vocab=5000), ids_of(1, 2, 5, vocab=5000)).backward()
    monkeypatch.setattr(np, "matmul", real)
    counted = collections.Counter()
    for r in bench.step_gemms(cfg, 2, 5):
        counted[(r["M"], r["K"], r["N"], r["batch"])] += r["count"]
    assert counted == executed


def test_float32_step_never_upcasts(monkeypatch):
    """Every primitive output of a float32 training step is float32 (rope tables, scalars included)."""
    import minilora.tensor as tensor_module
    seen = set()
    real_apply = tensor_module.apply

    def recording(prim, *inputs, **options):
        out = real_apply(prim, *inputs, **options)
        if np.issubdtype(out.dtype, np.floating):
            seen.add((prim.name, str(out.dtype)))
        return out
    monkeypatch.setattr(tensor_module, "apply", recording)
    model = _qv_only(Transformer(tiny(num_hidden_layers=1)))
    model.loss(ids_of(0, 2, 5), ids_of(1, 2, 5)).backward()
    monkeypatch.setattr(tensor_module, "apply", real_apply)
    assert seen and {dtype for _, dtype in seen} == {"float32"}, sorted(seen)
    grad = model.model.layers[0].self_attn.v_proj.weight.grad
    assert grad.dtype == np.float32
