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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("lora", "qlora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--rounds", type=int, default=7, help="timed steps per copy after one warm-up (paired)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (set before NumPy loads)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_recompute.json"))
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or any(m not in METHODS for m in args.methods):
        p.error(f"--methods: expected a non-empty subset of {METHODS}, got {args.methods}")
    for name in ("rounds", "batch", "seq", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def training_copy(quantized: bool):
    """(LoRA model with checkpointing, AdamW) over a fresh SmolLM2-135M (NF4 base when quantized)."""
    from common import load_smollm2
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.optim import AdamW
    model, _ = load_smollm2(quantized)
    model.gradient_checkpointing = True
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    lora.train()
    return lora, AdamW(lora.trainable_parameters(), lr=1e-4)


def skipping(flag: bool) -> None:
    """Let (or stop) a plain down_proj skip its product in the recompute: the flag the MLP reads."""
    from minilora.nn import Linear
    from minilora.quant import Linear4bit
    Linear.value_optional = Linear4bit.value_optional = flag


def measure(method: str, args, ids, targets) -> dict:
    from minilora.models.transformer import lm_loss
    copies = {"skip": training_copy(method == "qlora"), "full recompute": training_copy(method == "qlora")}

    def step(name):
        lora, optimizer = copies[name]
        skipping(name == "skip")
        optimizer.zero_grad()
        t0 = time.perf_counter()
        loss = lm_loss(lora, ids, targets)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, float(loss.data)

    try:
        for name in copies:
            step(name)  # warm-up
        seconds = {name: [] for name in copies}
        losses = {name: [] for name in copies}
        for i in range(args.rounds):
            for name in (list(copies) if i % 2 == 0 else list(copies)[::-1]):
                dt, loss = step(name)
                seconds[name].append(dt)
                losses[name].append(loss)
    finally:
        skipping(True)
    ratios = [s / f for s, f in zip(seconds["skip"], seconds["full recompute"])]
    return dict(seconds=seconds, losses=losses, paired_ratio=statistics.median(ratios),
                same_losses=losses["skip"] == losses["full recompute"],
                median_step_s={name: statistics.median(v) for name, v in seconds.items()})


def main(argv=None) -> dict:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import numpy as np

    from common import machine, table, write_json
    from minilora.runtime import tune_allocator
    tune_allocator()
    tokens = np.random.default_rng(0).integers(0, 49152, (args.batch, args.seq + 1))
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    info = dict(machine(), load_average_start=os.getloadavg())
    results = {m: measure(m, args, ids, targets) for m in args.methods}
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
