"""Measure 4-bit quantization speed and a QLoRA training step against a float-base LoRA step.

1. quantize_4bit / dequantize_4bit on a 4096 x 4096 float32 weight (NF4, blocksize 64), with and
   without double quantization: elements per second and GB/s of float32 output (median of runs).
2. One training step (forward + loss + backward) of the SmolLM2-135M-shaped decoder (random
   weights, batch B x T) with LoRA r=8 on q_proj and v_proj, once on the float32 base and once on
   a base whose block Linear layers are NF4 with double quantization (QLoRA). Peak memory is the
   tracemalloc peak of NumPy allocations during the step (model creation excluded); the resident
   weight bytes come from model_memory_report.

Usage: python bench/bench_quant.py [--layers 30] [--runs 5] [--steps 3] [--skip-step] [--json PATH]
Numbers are written to bench/results/bench_quant.json (atomically) and printed as a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import machine, median, table, write_json  # noqa: E402
from minilora.quant import dequantize_4bit, model_memory_report, quantize_4bit, quantize_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096, help="the weight is size x size")
    p.add_argument("--runs", type=int, default=5, help="timed runs per quantize/dequantize case (median)")
    p.add_argument("--layers", type=int, default=30, help="decoder layers for the step (30 = SmolLM2-135M)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up (median)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--skip-step", action="store_true", help="only the quantize/dequantize throughput")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_quant.json"))
    args = p.parse_args(argv)
    for name in ("size", "runs", "layers", "steps", "batch", "seq"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def throughput(size: int, runs: int) -> list:
    w = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    rows = []
    for double_quant in (False, True):
        q_times, d_times = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", double_quant=double_quant)
            t1 = time.perf_counter()
            out = dequantize_4bit(packed, state)
            t2 = time.perf_counter()
            q_times.append(t1 - t0)
            d_times.append(t2 - t1)
        q, d = median(q_times), median(d_times)
        rows.append({"case": f"nf4 {size}x{size} double_quant={double_quant}", "quantize_s": q,
                     "quantize_Melem_per_s": w.size / q / 1e6, "dequantize_s": d,
                     "dequantize_Melem_per_s": w.size / d / 1e6, "dequantize_GB_per_s": out.nbytes / d / 1e9})
    return rows


def training_step(quantized: bool, args) -> dict:
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.models.config import SMOLLM2_135M, ModelConfig
    from minilora.models.transformer import Transformer

    config = ModelConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers})
    model = Transformer(config, seed=0)
    model.freeze()
    t0 = time.perf_counter()
    if quantized:
        quantize_model(model, skip=("lm_head",))
    quantize_s = time.perf_counter() - t0
    memory = model_memory_report(model)
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), seed=0)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.vocab_size, (args.batch, args.seq + 1))
    times = []
    tracemalloc.start()
    for step in range(args.steps + 1):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        t = time.perf_counter()
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        if step:
            times.append(time.perf_counter() - t)
        peak = tracemalloc.get_traced_memory()[1] - base
        lora.zero_grad()
    tracemalloc.stop()
    return {"case": "QLoRA (NF4 + double quant base)" if quantized else "LoRA (float32 base)",
            "step_s": median(times), "step_peak_MiB": peak / 2**20, "quantize_model_s": quantize_s,
            "weights_MiB": memory["total_bytes"] / 2**20, "loss": float(loss.item()),
            "trainable_params": lora.num_parameters(trainable_only=True)}


def main(argv=None):
    args = parse_args(argv)
    results = {"machine": machine(), "args": vars(args), "throughput": throughput(args.size, args.runs)}
    print(table(results["throughput"], ["case", "quantize_Melem_per_s", "dequantize_Melem_per_s",
                                        "dequantize_GB_per_s"]))
    if not args.skip_step:
        results["step"] = [training_step(False, args), training_step(True, args)]
        print()
        print(table(results["step"], ["case", "step_s", "step_peak_MiB", "weights_MiB", "quantize_model_s",
                                      "trainable_params"]))
    write_json(args.json, results)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
