"""What skipping the layer's last product saves a checkpointed training step (models/checkpoint.py).

With gradient checkpointing the backward re-runs each decoder layer to rebuild its graph, then
throws the re-run's value away: down_proj's forward product (and a 4-bit down_proj's dequantize)
feeds nothing that the backward reads, so the recompute records down_proj with ``value=False``
(kernels.linear, quant.linear4bit). This bench loads SmolLM2-135M twice per method (LoRA r=8 on
q/v over the float32 base, and over the NF4 base: QLoRA), checkpointing on, and alternates training
steps (batch B x T random tokens, AdamW) between a copy that skips and one that does not (the bench
clears the ``value_optional`` flag the MLP reads, for that copy's steps only), so the paired ratio

    skipping step time / full-recompute step time      (median over the rounds)

is taken under the same machine state. Both copies must reach the same losses bit for bit.

Usage: python bench/bench_recompute.py [--methods lora,qlora] [--rounds 7] [--batch 4] [--seq 128]
                                       [--threads 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("lora", "qlora")


def parse_args(argv=None):
    from common import add_paired_arguments, check_positive
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    add_paired_arguments(p, "bench_recompute.json", rounds=7)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or any(m not in METHODS for m in args.methods):
        p.error(f"--methods: expected a non-empty subset of {METHODS}, got {args.methods}")
    check_positive(p, args, ("rounds", "batch", "seq", "threads"))
    return args


def skipping(flag: bool) -> None:
    """Let (or stop) a plain down_proj skip its product in the recompute: the flag the MLP reads."""
    from minilora.nn import Linear
    from minilora.quant import Linear4bit
    Linear.value_optional = Linear4bit.value_optional = flag


def measure(method: str, args) -> dict:
    from common import lora_training_copy, paired_steps
    quantized = method == "qlora"
    copies = {name: lora_training_copy(quantized, checkpointing=True) for name in ("skip", "full recompute")}
    try:
        run = paired_steps(copies, args.rounds, args.batch, args.seq, before_step=lambda name: skipping(name == "skip"))
    finally:
        skipping(True)
    run["median_step_s"] = {name: statistics.median(v) for name, v in run["seconds"].items()}
    return run


def main(argv=None) -> dict:
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    args = parse_args(argv)
    from common import machine, set_blas_threads_env, table, write_json
    set_blas_threads_env(args.threads)
    from minilora.runtime import tune_allocator
    tune_allocator()
    info = dict(machine(), load_average_start=os.getloadavg())
    results = {m: measure(m, args) for m in args.methods}
    rows = [dict(method=f"{m} + checkpointing", skip_s=r["median_step_s"]["skip"],
                 full_recompute_s=r["median_step_s"]["full recompute"], paired_ratio=r["paired_ratio"],
                 same_losses=r["same_losses"]) for m, r in results.items()]
    print(table(rows, ["method", "skip_s", "full_recompute_s", "paired_ratio", "same_losses"]))
    result = dict(benchmark="bench_recompute", machine=info, load_average_end=os.getloadavg(),
                  settings=dict(batch=args.batch, seq=args.seq, threads=args.threads, rounds=args.rounds),
                  methods=results)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
