"""Claim: NF4 is the better 4-bit data type, and double quantization saves ~0.37 bits per parameter
(QLoRA, arXiv 2305.14314, Table 2 and section 3). No training: the base model is quantized and scored.

For each data type in (NF4, FP4, Int4) and double quantization off / on, every Linear of the
transformer blocks (q, k, v, o, gate, up, down in all layers; lm_head, tied to the embedding, and
the embedding stay float32) is quantized with blocksize 64 (quant.quantize_model):
    held-out perplexity on Shakespeare;
    weight error over those weights: mean |W - W_hat|, RMS error and ||W - W_hat||_F / ||W||_F;
    bits per parameter of the 4-bit weights (packed codes + absmax [+ nested absmax]) measured from
    the stored arrays (quant.model_memory_report); the scale overhead is bits - 4.
The float32 base model is the first row.
"""
from __future__ import annotations

import math

import numpy as np

from minilora import backend
from minilora.nn import Linear
from minilora.quant import dequantize_4bit, model_memory_report, quantize_4bit, quantize_model

from .measure import perplexity
from .report import Output, parse_args, pyplot, save_figure, say
from .setup import Setup

NAME = "qlora_dtypes"
TYPES = ("nf4", "fp4", "int4")


def block_linears(model) -> list:
    """(path, Linear) of every Linear that quantize_model quantizes by default (all but lm_head)."""
    return [(p, m) for p, m in model.named_modules() if type(m) is Linear and p and not p.endswith("lm_head")]


def weight_error(model, quant_type: str, double_quant: bool) -> dict:
    abs_sum = sq_sum = norm_sq = 0.0
    count = 0
    for _, layer in block_linears(model):
        w = layer.weight.data
        packed, state = quantize_4bit(w, blocksize=64, quant_type=quant_type, double_quant=double_quant)
        diff = backend.to_numpy(dequantize_4bit(packed, state)).astype(np.float64) - backend.to_numpy(w)
        abs_sum += float(np.abs(diff).sum())
        sq_sum += float((diff ** 2).sum())
        norm_sq += float((backend.to_numpy(w).astype(np.float64) ** 2).sum())
        count += diff.size
    return {"mean_abs_error": abs_sum / count, "rms_error": math.sqrt(sq_sum / count),
            "relative_frobenius_error": math.sqrt(sq_sum / norm_sq), "params": count}


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    setup, out = Setup(quick=args.quick), Output(args)
    base = setup.base()
    rows = [{"dtype": "float32", "double_quant": None, **perplexity(base, setup.eval_windows),
             "bits_per_param": 32.0, "mean_abs_error": 0.0, "rms_error": 0.0, "relative_frobenius_error": 0.0}]
    say(f"base: ppl {rows[0]['ppl']:.3f}")
    for quant_type in TYPES:
        for double_quant in (False, True):
            row = {"dtype": quant_type, "double_quant": double_quant,
                   **weight_error(base, quant_type, double_quant)}
            model = setup.base()
            quantize_model(model, quant_type=quant_type, blocksize=64, double_quant=double_quant)
            report = model_memory_report(model)["quantized"]
            row.update(perplexity(model, setup.eval_windows), bits_per_param=report["bits_per_param"],
                       scale_overhead_bits=report["bits_per_param"] - 4.0, quantized_params=report["params"])
            rows.append(row)
            say(f"{quant_type} dq={double_quant}: ppl {row['ppl']:.3f}  mean|dW| {row['mean_abs_error']:.3e}  "
                f"bits/param {row['bits_per_param']:.4f}")
            del model
    out.write(NAME, setup, {"blocksize": 64, "rows": rows})
    plot(rows, out.figure_path(NAME))


def plot(rows, path):
    plt = pyplot()
    quant = [r for r in rows if r["dtype"] != "float32"]
    labels = [f"{r['dtype']}{' +DQ' if r['double_quant'] else ''}" for r in quant]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(labels, [r["ppl"] for r in quant], color="tab:blue")
    axes[0].axhline(rows[0]["ppl"], color="k", ls="--", label="float32")
    axes[0].set_ylim(min(r["ppl"] for r in rows) * 0.95, max(r["ppl"] for r in rows) * 1.02)
    axes[0].set_title("held-out perplexity")
    axes[0].legend()
    axes[1].bar(labels, [r["mean_abs_error"] for r in quant], color="tab:orange")
    axes[1].set_title("mean |W - W_hat|")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
