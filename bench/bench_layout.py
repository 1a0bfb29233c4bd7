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

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    from common import add_paired_arguments, check_positive
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_paired_arguments(p, "bench_layout.json", rounds=9)
    args = p.parse_args(argv)
    check_positive(p, args, ("rounds", "batch", "seq", "threads"))
    return args


def decode_a_few_tokens(model) -> None:
    """Greedy-decode 4 tokens: the first generation lays the wide weights out input-major."""
    import numpy as np

    from minilora.models import generate
    model.eval()
    generate(model, np.arange(1, 17)[None, :], 4)


def main(argv=None) -> dict:
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    args = parse_args(argv)
    from common import lora_training_copy, machine, paired_steps, set_blas_threads_env, table, write_json
    set_blas_threads_env(args.threads)
    from minilora.runtime import tune_allocator
    tune_allocator()
    copies = {"decoded first": lora_training_copy(prepare=decode_a_few_tokens), "fresh": lora_training_copy()}
    info = dict(machine(), load_average_start=os.getloadavg())
    run = paired_steps(copies, args.rounds, args.batch, args.seq)
    result = dict(benchmark="bench_layout", machine=info, load_average_end=os.getloadavg(),
                  settings=dict(batch=args.batch, seq=args.seq, threads=args.threads, rounds=args.rounds), **run)
    rows = [dict(copy=name, median_step_s=statistics.median(run["seconds"][name]), last_loss=run["losses"][name][-1])
            for name in copies]
    print(table(rows, ["copy", "median_step_s", "last_loss"]))
    print(f"paired ratio decoded-first / fresh: {result['paired_ratio']:.3f}; "
          f"losses bit-identical: {result['same_losses']}")
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
