"""What decoding's input-major weights cost a later training step (models/fused.py).

The first generation lays every wide weight out input-major (W^T stored, each weight a transposed
view) and the model keeps that layout. This bench loads SmolLM2-135M twice, lets one copy decode a
few tokens first, puts a LoRA (r=8, q/v) on each, and alternates training steps between the two
(batch B x T random tokens, AdamW), so the paired ratio

    decoded-first step time / fresh step time      (median over the rounds)

is taken under the same machine state. Both copies must reach the same losses bit for bit: at
these sizes OpenBLAS packs both operands whatever their layout (tests/models/test_decode.py).

Usage: python bench/bench_layout.py [--rounds 9] [--batch 4] [--seq 128] [--threads 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="timed steps per copy after one warm-up (paired)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (set before NumPy loads)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_layout.json"))
    args = p.parse_args(argv)
    for name in ("rounds", "batch", "seq", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def training_copy(decode_first: bool):
    """(LoRA model, AdamW) over a fresh SmolLM2-135M; decode_first: greedy-decode 4 tokens before."""
    import numpy as np

    from common import load_smollm2
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.models import generate
    from minilora.optim import AdamW
    model, _ = load_smollm2(False)
    if decode_first:
        model.eval()
        generate(model, np.arange(1, 17)[None, :], 4)
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    lora.train()
    return lora, AdamW(lora.trainable_parameters(), lr=1e-4)


def main(argv=None) -> dict:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import numpy as np

    from common import machine, table, write_json
    from minilora.models.transformer import lm_loss
    from minilora.runtime import tune_allocator
    tune_allocator()
    copies = {"fresh": training_copy(False), "decoded first": training_copy(True)}
    tokens = np.random.default_rng(0).integers(0, 49152, (args.batch, args.seq + 1))
    ids, targets = tokens[:, :-1], tokens[:, 1:]

    def step(lora, optimizer):
        optimizer.zero_grad()
        t0 = time.perf_counter()
        loss = lm_loss(lora, ids, targets)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, float(loss.data)

    info = dict(machine(), load_average_start=os.getloadavg())
    for pair in copies.values():
        step(*pair)  # warm-up
    seconds = {name: [] for name in copies}
    losses = {name: [] for name in copies}
    for i in range(args.rounds):
        for name in (list(copies) if i % 2 == 0 else list(copies)[::-1]):
            dt, loss = step(*copies[name])
            seconds[name].append(dt)
            losses[name].append(loss)
    ratios = [d / f for d, f in zip(seconds["decoded first"], seconds["fresh"])]
    result = dict(benchmark="bench_layout", machine=info, load_average_end=os.getloadavg(),
                  settings=dict(batch=args.batch, seq=args.seq, threads=args.threads, rounds=args.rounds),
                  seconds=seconds, losses=losses, paired_ratio=statistics.median(ratios),
                  same_losses=losses["fresh"] == losses["decoded first"])
    rows = [dict(copy=name, median_step_s=statistics.median(seconds[name]), last_loss=losses[name][-1])
            for name in copies]
    print(table(rows, ["copy", "median_step_s", "last_loss"]))
    print(f"paired ratio decoded-first / fresh: {result['paired_ratio']:.3f}; "
          f"losses bit-identical: {result['same_losses']}")
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
