"""Measure 4-bit quantization speed and a QLoRA training step against a float-base LoRA step.

1. quantize_4bit / dequantize_4bit on a 4096 x 4096 float32 weight (NF4, blocksize 64), with and
   without double quantization, into a fresh array and into a reused buffer (as Linear4bit does);
   FP4 too; and bitsandbytes' CPU functions on the same weight when it is installed (run it with
   .venv-ref/bin/python for the same-run comparison): elements per second and GB/s of float32
   output, per wall second and per CPU second (median of runs).
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


def _timed(fn, runs: int):
    """(median wall seconds, median CPU seconds, last result) of fn() over ``runs`` calls after one warm-up."""
    out = fn()
    walls, cpus = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return median(walls), median(cpus), out


def _bitsandbytes_rows(w, runs: int) -> list:
    """bitsandbytes' CPU quantize/dequantize on the same weight, when it is installed (.venv-ref)."""
    try:
        import bitsandbytes.functional as bnbf
        import torch
    except ImportError:
        return []
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    wt = torch.from_numpy(w)
    rows = []
    for double_quant in (False, True):
        def quant():
            return bnbf.quantize_4bit(wt, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        q, _, (packed, state) = _timed(quant, runs)
        d, d_cpu, out = _timed(lambda: bnbf.dequantize_4bit(packed, state), runs)
        rows.append(_row(f"bitsandbytes nf4 {w.shape[0]}x{w.shape[1]} double_quant={double_quant}", w.size, q, d,
                         d_cpu, out.numel() * out.element_size()))
    return rows


def _row(case, n, q, d, d_cpu, out_bytes):
    return {"case": case, "quantize_s": q, "quantize_Melem_per_s": n / q / 1e6, "dequantize_s": d,
            "dequantize_Melem_per_s": n / d / 1e6, "dequantize_GB_per_s": out_bytes / d / 1e9,
            "dequantize_GB_per_cpu_s": out_bytes / d_cpu / 1e9}


def throughput(size: int, runs: int) -> list:
    """minilora (fresh output and into a reused buffer) and, when installed, bitsandbytes, same weight."""
    w = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    rows = []
    buffer = np.empty(w.size, np.float32)
    for double_quant in (False, True):
        q, _, (packed, state) = _timed(lambda: quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                              double_quant=double_quant), runs)
        d, d_cpu, out = _timed(lambda: dequantize_4bit(packed, state), runs)
        rows.append(_row(f"minilora nf4 {size}x{size} double_quant={double_quant}", w.size, q, d, d_cpu, out.nbytes))
        d, d_cpu, out = _timed(lambda: dequantize_4bit(packed, state, out=buffer), runs)
        rows.append(_row(f"minilora nf4 {size}x{size} double_quant={double_quant}, into a reused buffer", w.size,
                         q, d, d_cpu, out.nbytes))
    packed, state = quantize_4bit(w, blocksize=64, quant_type="fp4", double_quant=True)
    d, d_cpu, out = _timed(lambda: dequantize_4bit(packed, state, out=buffer), runs)
    rows.append(_row(f"minilora fp4 {size}x{size} double_quant=True, into a reused buffer", w.size, float("nan"),
                     d, d_cpu, out.nbytes))
    return rows + _bitsandbytes_rows(w, runs)


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
    results = {"machine": dict(machine(), load_average_start=os.getloadavg()), "args": vars(args),
               "throughput": throughput(args.size, args.runs)}
    print(f"load average {os.getloadavg()}")
    print(table(results["throughput"], ["case", "quantize_Melem_per_s", "dequantize_Melem_per_s",
                                        "dequantize_GB_per_s", "dequantize_GB_per_cpu_s"]))
    if not args.skip_step:
        results["step"] = [training_step(False, args), training_step(True, args)]
        print()
        print(table(results["step"], ["case", "step_s", "step_peak_MiB", "weights_MiB", "quantize_model_s",
                                      "trainable_params"]))
    results["load_average_end"] = os.getloadavg()
    write_json(args.json, results)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
