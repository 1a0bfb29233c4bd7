"""4-bit checks: NF4 golden bytes, NF4/FP4 round-trip bounds and error bands, double quantization,
and the QLoRA forward and gradients against x dequant(W)^T + b + scaling (x A^T) B^T in NumPy float64.

Quantization computes in float32 whatever the input dtype (as bitsandbytes does), so the byte and
bound checks are the same for both --dtype values; the QLoRA layer computes in the requested dtype.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor
from .cases import put
from .checks_core import TOL, Target, rounded
from .report import Tally, host64

NF4_GOLDEN_HEX = "0123456789abcdef"  # the 16 NF4 values in order pack to codes 0..15, high nibble first
# Mean |x - dq(q(x))| (and mean relative error) of N(0, 1) at blocksize 64: bitsandbytes' test numbers
# (0.0728 / 0.203 NF4, 0.0965 FP4 on 1024 x 1024), widened for the 256 x 256 sample used here.
BANDS = {"nf4": ((0.0715, 0.0740), (0.198, 0.208)), "fp4": ((0.0945, 0.0980), (0.252, 0.267))}
DOUBLE_QUANT_ABSMAX_TOL = 1e-2   # 8-bit dynamic code: relative error of each dequantized absmax


def check_golden(t: Target) -> list:
    from ..quant import dequantize_4bit, nf4_code, quantize_4bit
    tally = Tally("nf4 golden bytes (the NF4 table)", 0.0)
    table = np.array(nf4_code(), np.float32)
    try:
        with backend.use_backend(t.name):
            packed, state = quantize_4bit(put(table, t.xp), blocksize=64, quant_type="nf4", double_quant=False)
            got_hex = backend.to_numpy(packed).tobytes().hex()
            back = host64(dequantize_4bit(packed, state))
        wrong_bytes = sum(a != b for a, b in zip(got_hex, NF4_GOLDEN_HEX)) + abs(len(got_hex) - len(NF4_GOLDEN_HEX))
        tally.record(float(np.max(np.abs(back - table))), None, ok=got_hex == NF4_GOLDEN_HEX and wrong_bytes == 0
                     and np.array_equal(back, table.astype(np.float64)))
        tally.note = f"bytes {got_hex}"
    except Exception as exc:
        tally.error(exc)
    return [tally.row()]


def _max_half_gap(quant_type: str) -> float:
    from ..quant import get_code
    code = np.sort(np.array(get_code(quant_type), np.float64))
    return float(np.max(np.diff(code)) / 2)


def check_round_trip(t: Target) -> list:
    """|x - dq(q(x))| <= absmax_block * (largest half gap of the code) + |absmax - used absmax|, bytes
    equal to the NumPy backend's, and dq(q(dq(q(x)))) == dq(q(x)); drawn shapes, block sizes, double quant."""
    from ..quant import dequantize_4bit, dequantized_absmax, quantize_4bit
    rows = []
    for quant_type in ("nf4", "fp4"):
        bound = Tally(f"{quant_type} round trip within bound (err/bound)", 1.0)
        same = Tally(f"{quant_type} bytes == numpy backend, dq idempotent", 0.0)
        for i in range(t.examples):
            rng = t.rng("round-trip", quant_type, i)
            shape = tuple(int(s) for s in rng.integers(1, 71, size=int(rng.integers(1, 3))))
            blocksize = [32, 64, 128][int(rng.integers(3))]
            double_quant = bool(rng.random() < 0.5)
            x = rounded(rng.standard_normal(shape) * 3, t.dtype)
            try:
                with backend.use_backend(t.name):
                    packed, state = quantize_4bit(put(x, t.xp, t.dtype), blocksize, quant_type, double_quant)
                    dq = host64(dequantize_4bit(packed, state))
                    used = host64(dequantized_absmax(state))
                    again, state2 = quantize_4bit(put(dq, t.xp, t.dtype), blocksize, quant_type, False)
                    dq2 = host64(dequantize_4bit(again, state2))
                    got_bytes = backend.to_numpy(packed).tobytes()
                ref_packed, _ = quantize_4bit(x.astype(t.dtype), blocksize, quant_type, double_quant)
                n = x.size
                flat = np.concatenate([x.astype(np.float32).reshape(-1), np.zeros(-n % blocksize, np.float32)])
                true_absmax = np.abs(flat.reshape(-1, blocksize)).max(axis=1).astype(np.float64)
                per_block = true_absmax * _max_half_gap(quant_type) + np.abs(true_absmax - used)
                limit = np.repeat(per_block, blocksize)[:n].reshape(shape) * (1 + 1e-6) + 1e-30
                err = np.abs(x.astype(np.float32).astype(np.float64) - dq)
                bound.record(float(err.max()), float((err / limit).max()))
                same.record(float(np.max(np.abs(dq2 - dq))), None,
                            ok=got_bytes == ref_packed.tobytes() and np.array_equal(dq2, dq))
            except Exception as exc:
                bound.error(exc)
                same.error(exc)
        rows += [bound.row(), same.row()]
    return rows


def check_error_bands(t: Target) -> list:
    """Mean absolute and relative error of N(0, 1) data in bitsandbytes' bands; double quantization
    adds less than 1e-3 to the mean error and keeps each absmax within 1% (8-bit dynamic code)."""
    from ..quant import dequantize_4bit, dequantized_absmax, quantize_4bit
    rows = []
    dq_extra = Tally("nf4 double quant: extra mean error, absmax rel err", DOUBLE_QUANT_ABSMAX_TOL)
    for quant_type, ((lo, hi), (rlo, rhi)) in BANDS.items():
        band = Tally(f"{quant_type} error band: mean abs, mean rel", 0.0)
        means = []
        for i in range(min(t.examples, 3)):  # 65536 values each: the band needs no more
            x = np.random.default_rng([t.seed, 1024, i]).standard_normal((256, 256)).astype(np.float32)
            try:
                with backend.use_backend(t.name):
                    plain = quantize_4bit(put(x, t.xp), 64, quant_type, False)
                    err = np.abs(x - host64(dequantize_4bit(*plain)))
                    if quant_type == "nf4":
                        nested = quantize_4bit(put(x, t.xp), 64, quant_type, True)
                        extra = float(np.abs(x - host64(dequantize_4bit(*nested))).mean() - err.mean())
                        true_absmax = host64(plain[1].absmax)
                        rel = float(np.max(np.abs(host64(dequantized_absmax(nested[1])) - true_absmax) / true_absmax))
                        dq_extra.record(extra, rel, ok=0.0 <= extra < 1e-3 and rel <= DOUBLE_QUANT_ABSMAX_TOL)
                mean_abs, mean_rel = float(err.mean()), float((err / (np.abs(x) + 1e-8)).mean())
                means.append(f"{mean_abs:.4f}")
                band.record(mean_abs, mean_rel, ok=lo <= mean_abs <= hi and rlo <= mean_rel <= rhi)
            except Exception as exc:
                band.error(exc)
        row = band.row()
        row.tol, row.note = None, row.note or f"band [{lo}, {hi}], [{rlo}, {rhi}]; means {' '.join(means)}"
        rows.append(row)
    rows.append(dq_extra.row())
    return rows


def check_qlora(t: Target) -> list:
    """LoRALinear(Linear4bit): y == x dequant(W)^T + b + s (x A^T) B^T and its gradients in x, A, B."""
    from ..lora import LoraConfig, get_lora_model, lora_layers
    from ..nn import Linear, Module
    from ..quant import Linear4bit
    value, grad = Tally("qlora forward == x dq(W)^T + b + lora(x)", TOL[t.dtype]), \
        Tally("qlora grads x, A, B vs oracle", TOL[t.dtype])
    for i in range(t.examples):
        rng = t.rng("qlora", i)
        d_in, d_out, r, n = (int(v) for v in rng.integers(1, 9, size=4))
        quant_type, double_quant = ["nf4", "fp4"][i % 2], bool(i % 3)
        alpha = [1.0, 4.0, 16.0][int(rng.integers(3))]
        try:
            with backend.use_backend(t.name) as xp:
                class One(Module):
                    def __init__(self):
                        linear = Linear(d_in, d_out, bias=True, dtype=getattr(xp, t.dtype),
                                        rng=backend.Random(int(rng.integers(2**31)), xp))
                        self.proj = Linear4bit.from_linear(linear, quant_type, 64, double_quant)

                    def forward(self, x):
                        return self.proj(x)
                model = get_lora_model(One(), LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"],
                                                         init_lora_weights=False), seed=i)
                (_, layer), = lora_layers(model.model)
                w = host64(layer.base_layer.dequantize())  # (d_out, d_in)
                b = host64(layer.base_layer.bias)
                a_, b_ = (host64(f) for f in layer.factors("default"))
                s = layer.scaling["default"]
                x = rounded(rng.uniform(-2, 2, size=(n, d_in)), t.dtype)
                u = rounded(rng.standard_normal((n, d_out)), t.dtype)
                xt = Tensor(put(x, xp, t.dtype), requires_grad=True)
                y = model(xt)
                (y * Tensor(put(u, xp, t.dtype))).sum().backward()
                grads = [host64(xt.grad), host64(layer.lora_A["default"].weight.grad),
                         host64(layer.lora_B["default"].weight.grad)]
            value.add(y, x @ w.T + b + s * (x @ a_.T) @ b_.T)
            want = [u @ w + s * (u @ b_) @ a_, s * (u @ b_).T @ x, s * u.T @ (x @ a_.T)]
            grad.add(np.concatenate([g.ravel() for g in grads]), np.concatenate([g.ravel() for g in want]))
        except Exception as exc:
            value.error(exc)
            grad.error(exc)
    return [value.row(), grad.row()]


CHECKS = (check_golden, check_round_trip, check_error_bands, check_qlora)
