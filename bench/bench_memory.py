"""Where a LoRA / QLoRA training step's memory goes, measured: weights, adapters + optimizer state,
saved activations, logits, backward's transients, and the rest of the process.

Each configuration runs in its own process (SmolLM2-135M from the GGUF, batch B x T random token
ids, LoRA r=8 alpha 16 on q_proj and v_proj, AdamW, allocator tuned as the ``minilora`` command
does). NumPy reports its allocations to tracemalloc, so every part below is a difference of
tracemalloc's counters around one phase of a step (after one warm-up step):

    weights        arrays alive after loading (bench/common.py load_smollm2: 4-bit while reading the
                   GGUF where load_pretrained offers it, else float32 + quantize_model)
    adapters+opt   arrays alive after adding LoRA, one optimizer step and zero_grad (A, B, AdamW m, v)
    activations    arrays the forward through the decoder leaves alive for backward (the graph)
    logits         the peak that lm_head + cross entropy adds on top (whole (N, V) logits, softmax and
                   gradient, or one chunk of them), including what it keeps for backward
    backward       the peak that backward adds above what the forward left alive
    rest           the step's peak RSS (VmHWM, reset after the warm-up step and a malloc_trim) minus
                   the parts above: interpreter, libraries, allocator slack, small arrays
The lifetime peak (loading included) is reported beside it.

It also times the step with the 4-bit layers' keep-for-backward modes alternated in one process
(quant.linear4bit.set_keep_dequantized), and sweeps lm_loss's tile size on the (N, C) x (V, C)
head: time and traced peak of the fused loss and gradient at each tile size (rows x classes) and unchunked.

Usage: python bench/bench_memory.py [--configs lora,qlora_ckpt,...] [--steps 3] [--json PATH]
Writes bench/results/bench_memory.json and prints tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
CONFIGS = {  # name: (4-bit base, gradient checkpointing, tiled loss (else whole logits), 4-bit keep mode; None: default)
    "lora": (False, False, True, None), "lora_ckpt": (False, True, True, None),
    "qlora": (True, False, True, None), "qlora_ckpt": (True, True, True, None),
    "qlora_ckpt_keep_never": (True, True, True, "never"),
    "qlora_ckpt_keep_recompute": (True, True, True, "recompute"),
    "qlora_ckpt_whole_logits": (True, True, False, None), "lora_whole_logits": (False, False, False, None),
}
MiB = 2 ** 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="lora,lora_whole_logits,lora_ckpt,qlora,qlora_ckpt,qlora_ckpt_whole_logits", help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps per keep mode (alternated; median)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-sweep", action="store_true", help="no chunk-size sweep")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_memory.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad:
        p.error(f"--configs: unknown {bad}; expected a subset of {list(CONFIGS)}")
    for name in ("steps", "batch", "seq", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def _traced_phase(fn):
    """(result, bytes alive after minus before, peak above before) of fn()."""
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = fn()
    now, peak = tracemalloc.get_traced_memory()
    return out, now - before, peak - before


def one_config(name: str, args) -> dict:
    """Runs in a fresh process: the breakdown of one configuration, then the keep-mode timing."""
    import numpy as np

    from minilora.lm_head_loss import linear_cross_entropy
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.models.transformer import _language_model, lm_loss
    from minilora.optim import AdamW
    from minilora.quant import linear4bit
    from minilora.runtime import tune_allocator
    from minilora import functional as F, ops
    from minilora.lm_head_loss import DEFAULT_CHUNK_CLASSES, DEFAULT_CHUNK_ROWS
    from common import load_smollm2, proc_status_bytes, release_free_heap, reset_peak_rss

    tune_allocator()
    quantized, checkpointing, tiled, keep = CONFIGS[name]
    chunk = DEFAULT_CHUNK_ROWS if tiled else None  # lm_loss's chunk_rows
    if keep is not None:
        linear4bit.set_keep_dequantized(keep)
    keep = linear4bit.get_keep_dequantized()
    tracemalloc.start()
    (model, how), weights, load_peak = _traced_phase(lambda: load_smollm2(quantized))
    model.gradient_checkpointing = checkpointing
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    lora.train()
    optimizer = AdamW(lora.trainable_parameters(), lr=1e-4)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (args.batch, args.seq + 1))
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    lm = _language_model(lora)

    def step():
        optimizer.zero_grad()
        loss = lm_loss(lora, ids, targets, chunk_rows=chunk)
        loss.backward()
        optimizer.step()
        return loss

    before_adapters = tracemalloc.get_traced_memory()[0]
    step()  # warm-up: AdamW state exists from here on
    optimizer.zero_grad()
    adapters = tracemalloc.get_traced_memory()[0] - before_adapters
    lifetime_rss = proc_status_bytes("VmHWM")
    release_free_heap()
    reset_peak_rss()

    # one instrumented step: the phases of lm_loss, separately
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    hidden, activations, act_peak = _traced_phase(lambda: lm.model(ids))
    b, t, c = hidden.shape
    flat_t = targets.reshape(-1)
    if chunk is None:
        loss, logits_kept, logits_peak = _traced_phase(lambda: F.cross_entropy(
            ops.reshape(lm.lm_head(hidden), shape=(b * t, -1)), flat_t))
    else:
        loss, logits_kept, logits_peak = _traced_phase(lambda: linear_cross_entropy(
            ops.reshape(hidden, shape=(b * t, c)), lm.lm_head.weight, flat_t, chunk_rows=chunk))
    del hidden
    _, _, backward_peak = _traced_phase(loss.backward)
    optimizer.step()
    optimizer.zero_grad()
    traced_peak = base + max(act_peak, activations + logits_peak, activations + logits_kept + backward_peak)
    rss_peak = proc_status_bytes("VmHWM")
    parts = {"weights": weights, "adapters_and_optimizer": adapters, "activations": activations,
             "logits": logits_peak, "backward_transient": max(0, traced_peak - base - activations - logits_peak)}
    parts["rest"] = rss_peak - sum(parts.values())  # interpreter, libraries, allocator slack, small arrays
    result = {"config": name, "load": how, "keep_dequantized": keep, "quantized": quantized, "checkpointing": checkpointing, "chunk_rows": chunk,
              "chunk_classes": DEFAULT_CHUNK_CLASSES if tiled else None,  # the loss's tiles: chunk_rows x chunk_classes
              "parts_MiB": {k: v / MiB for k, v in parts.items()}, "traced_peak_MiB": traced_peak / MiB,
              "rss_peak_MiB": rss_peak / MiB, "load_traced_peak_MiB": load_peak / MiB,
              "lifetime_rss_peak_MiB": lifetime_rss / MiB,
              "loss": float(loss.item())}
    tracemalloc.stop()
    modes = linear4bit.KEEP_MODES if quantized else ("never",)
    times = {m: [] for m in modes}
    for i in range(args.steps):
        for m in (modes if i % 2 == 0 else modes[::-1]):
            linear4bit.set_keep_dequantized(m)
            t0 = time.perf_counter()
            step()
            times[m].append(time.perf_counter() - t0)
    result["step_s"] = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
    result["step_s_runs"] = times
    return result


TILES = ((128, None), (256, None), (128, 4096), (256, 4096), (512, 2048), (512, 4096), (512, 8192), None)


def chunk_sweep(args, tiles=TILES, repeats: int = 3) -> list:
    """Fused head + loss + gradient (w.r.t. h) on SmolLM2's head shape at each tile size."""
    return sweep_tiles(args.batch * args.seq, 576, 49152, tiles, repeats)


def sweep_tiles(n: int, c: int, v: int, tiles, repeats: int) -> list:
    """[{chunk_rows, chunk_classes, seconds (median), traced_peak_MiB}] of the fused loss and gh on random
    h (n, c), W (v, c) for each (rows, classes) tile (classes None: the whole vocabulary), and unchunked
    (``None``: kernels.linear then kernels.cross_entropy, the (n, v) logits whole)."""
    import numpy as np

    from minilora import kernels
    from minilora.lm_head_loss import LINEAR_CROSS_ENTROPY
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, c)).astype(np.float32)
    w = (rng.standard_normal((v, c)) * 0.05).astype(np.float32)
    t = rng.integers(0, v, n)

    def run(tile):
        if tile is None:
            z, vjp_z = kernels.linear.primitive.forward(h, w)
            _, vjp_l = kernels.cross_entropy.primitive.forward(z, t)
            vjp_z(vjp_l(np.float32(1.0), (True, False))[0], (True, False))
        else:
            rows, classes = tile
            _, vjp = LINEAR_CROSS_ENTROPY.forward(h, w, t, chunk_rows=rows, chunk_classes=classes or v,
                                                  needs=(True, False, False))
            vjp(np.float32(1.0), (True, False, False))

    out = []
    for tile in tiles:
        run(tile)
        tracemalloc.start()
        run(tile)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(tile)
            times.append(time.perf_counter() - t0)
        rows, classes = tile if tile is not None else ("whole", "whole")
        out.append({"chunk_rows": rows, "chunk_classes": classes or "all", "seconds": sorted(times)[len(times) // 2],
                    "traced_peak_MiB": peak / MiB})
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.one:
        sys.path.insert(0, HERE)
        print("@@" + json.dumps(one_config(args.one, args)))
        return {}
    sys.path.insert(0, HERE)
    from common import machine, set_blas_threads_env, table, write_json
    set_blas_threads_env(args.threads)  # this process's tile sweep and every configuration's child
    info = dict(machine(), load_average_start=os.getloadavg())
    print(f"batch {args.batch} x {args.seq}, {args.threads} threads; load average {info['load_average_start']}")
    rows = []
    for name in args.configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--steps", str(args.steps),
               "--batch", str(args.batch), "--seq", str(args.seq)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(HERE))
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("@@")), None)
        if line is None:
            raise RuntimeError(f"{name} failed (status {out.returncode}):\n{out.stderr[-3000:]}")
        row = json.loads(line[2:])
        rows.append(row)
        print(f"  {name}: peak RSS {row['rss_peak_MiB']:.0f} MiB, steps {row['step_s']}", flush=True)
    flat = [dict(config=r["config"], step_rss_peak_MiB=r["rss_peak_MiB"], **r["parts_MiB"],
                 lifetime_rss_peak_MiB=r["lifetime_rss_peak_MiB"], step_s=r["step_s"].get("never")) for r in rows]
    print(table(flat, list(flat[0])))
    sweep = [] if args.skip_sweep else chunk_sweep(args)
    if sweep:
        print(table(sweep, ["chunk_rows", "chunk_classes", "seconds", "traced_peak_MiB"]))
    result = dict(benchmark="bench_memory", machine=info, load_average_end=os.getloadavg(),
                  settings=dict(batch=args.batch, seq=args.seq, threads=args.threads, steps=args.steps,
                                lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
                  configs=rows, chunk_sweep=sweep)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
