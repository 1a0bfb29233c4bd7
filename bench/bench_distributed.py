"""Data-parallel on this machine, and what the all-reduce would cost at scale.

1. The demo (SmolLM2-135M-Instruct, LoRA r=8 on q_proj/v_proj, 'dates', global batch 8), training
   steps through minilora.train.train: one process with 2 BLAS threads against `mpiexec -n 2` with
   1 thread per rank (4 rows each), and one process with 1 thread for reference. They alternate
   (A B C A B C ...) so load drifts hit all; each run reports the median step time after a warm-up
   step; the ratios are of the medians of one invocation.
   Also measured: the time of the gradient all-reduce inside the 2-rank step, and the bytes it sums.
2. Bytes all-reduced per step: the adapters' gradients (measured) against every parameter's
   gradient (what full fine-tuning would all-reduce), float32.
3. Projection: ring all-reduce time per step = 2 (N-1)/N x bytes / bandwidth (each rank sends and
   receives that much; latency and overlap with backward ignored), for SmolLM2-135M and Llama-shaped
   7B and 70B, LoRA r=8 on q/v against full fine-tuning, float32 gradients, at 10 and 100 Gbit/s;
   beside a compute time per step scaled by parameter count from the faster of the two one-process
   configurations of step 1 (each rank computes a demo batch of 8 sequences per step; the same
   achieved FLOP/s as here; full fine-tuning x1.5 for the weight gradients: 6P against 4P FLOPs
   per token).

Usage: python bench/bench_distributed.py [--steps 5] [--rounds 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, median, table, write_json  # noqa: E402

SHAPES = {  # Llama-style shapes: (hidden, layers, heads, kv heads, intermediate, vocab, tied)
    "SmolLM2-135M": (576, 30, 9, 3, 1536, 49152, True),
    "Llama-7B": (4096, 32, 32, 32, 11008, 32000, False),
    "Llama-70B": (8192, 80, 64, 8, 28672, 32000, False),
}
GBIT = 1e9 / 8  # bytes per second in one Gbit/s
CONFIGURATIONS = ((1, 2), (2, 1), (1, 1))  # (ranks, BLAS threads per rank); 1 x 1 is a reference


def parameter_counts(hidden, layers, heads, kv_heads, intermediate, vocab, tied, r=8) -> tuple:
    """(all parameters, LoRA r on q_proj and v_proj) of a Llama-style model."""
    kv = hidden // heads * kv_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden
    total = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
    lora = layers * (r * hidden + hidden * r + r * hidden + kv * r)
    return total, lora


def ring_seconds(nbytes: float, ranks: int, gbit_per_s: float) -> float:
    return 2 * (ranks - 1) / ranks * nbytes / (gbit_per_s * GBIT)


def child(steps: int) -> dict:
    """Time `steps` training steps (after one warm-up) of the demo; data-parallel under mpiexec."""
    from bench_finetune import demo_setup
    from minilora.distributed import start_data_parallel
    from minilora.train import TrainConfig, train
    dp = start_data_parallel("auto", batch_size=8)  # the demo's global batch
    model, _, optimizer, batches = demo_setup("lora")
    starts = []

    def timed_batches(step):  # a step starts when it asks for its batch
        starts.append(time.perf_counter())
        return batches(step)
    source = dp.shard(timed_batches) if dp is not None else timed_batches
    if dp is not None:
        dp.check_identical(model, optimizer)
    train(model, optimizer, source, TrainConfig(steps=steps + 2, warmup_steps=0, progress=False),
          data_parallel=dp)
    step_s = [b - a for a, b in zip(starts[1:], starts[2:])]  # steps 1 .. steps (step 0 warms up)
    result = {"ranks": dp.size if dp else 1, "step_s": median(step_s), "steps_per_s": 1 / median(step_s),
              "trainable_params": sum(p.size for p in model.trainable_parameters()),
              "all_params": model.num_parameters()}
    if dp is not None:
        result.update(all_reduce_s=median(dp.reduce_seconds[1:]),
                      bytes_per_step=dp.bytes_reduced / len(dp.reduce_seconds))
        if not dp.is_main:
            return {}
    return result


def run_child(ranks: int, threads: int, steps: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--child", "--steps", str(steps)]
    if ranks > 1:
        command = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks)] + command
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=1800)
    return {"threads": threads, **json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])}


def projection(step_s_135m: float) -> list:
    rows = []
    p_135m = parameter_counts(*SHAPES["SmolLM2-135M"])[0]
    for name, shape in SHAPES.items():
        total, lora = parameter_counts(*shape)
        for method, params, flops in (("LoRA r=8 q,v", lora, 1.0), ("full", total, 1.5)):
            row = {"model": name, "method": method, "grad_MB": params * 4 / 1e6,
                   "compute_s": step_s_135m * total / p_135m * flops}
            for n in (2, 8):
                for gbit in (10, 100):
                    row[f"N={n} {gbit}G s"] = ring_seconds(params * 4, n, gbit)
            row["comm/compute N=8 10G"] = row["N=8 10G s"] / row["compute_s"]
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_distributed.json"))
    args = p.parse_args(argv)
    if args.child:
        result = child(args.steps)
        if result:
            print(json.dumps(result))
        return None
    load_before = os.getloadavg()
    runs = []
    for round_ in range(args.rounds):
        for ranks, threads in CONFIGURATIONS:
            runs.append({"round": round_, **run_child(ranks, threads, args.steps)})
            print(table([runs[-1]], ["round", "ranks", "threads", "step_s", "steps_per_s", "all_reduce_s"]),
                  flush=True)
    one = median([r["step_s"] for r in runs if (r["ranks"], r["threads"]) == (1, 2)])
    two = median([r["step_s"] for r in runs if r["ranks"] == 2])
    one_thread = median([r["step_s"] for r in runs if (r["ranks"], r["threads"]) == (1, 1)])
    data_parallel = next(r for r in runs if r["ranks"] == 2)
    full_bytes = (data_parallel["all_params"] - data_parallel["trainable_params"]) * 4  # the model's own weights
    summary = {"one_process_2_threads_step_s": one, "two_ranks_1_thread_step_s": two,
               "speedup_two_ranks": one / two, "one_process_1_thread_step_s": one_thread,
               "speedup_two_ranks_over_1_thread": one_thread / two, "all_reduce_s": median([r["all_reduce_s"] for r in runs
                                                                        if r["ranks"] == 2]),
               "bytes_per_step_lora": data_parallel["bytes_per_step"], "bytes_per_step_full": full_bytes,
               "full_over_lora": full_bytes / data_parallel["bytes_per_step"]}
    print(table([summary], list(summary)))
    summary["compute_reference_step_s"] = min(one, one_thread)  # the faster one-process configuration here
    rows = projection(summary["compute_reference_step_s"])
    print(table(rows, list(rows[0])))
    result = {"machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "steps": args.steps, "runs": runs, "summary": summary, "projection": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
