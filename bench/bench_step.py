"""Time one training step of a SmolLM2-135M-shaped model and compare it with this machine's matmul peak.

The step is forward + loss + backward of the Llama-style decoder (random weights, float32, batch
B x T tokens) with the base frozen except every q_proj and v_proj weight, which train fully.

FLOPs are counted analytically, 2*M*K*N per GEMM: the forward projections, the attention products
and the lm_head, the last as the loss runs it (minilora/lm_head_loss.py: tiles of at most
DEFAULT_CHUNK_ROWS rows x DEFAULT_CHUNK_CLASSES classes, a logits product and a grad-x product per
tile); in backward only the GEMMs that are actually needed -- grad-x wherever something
upstream requires a gradient (not for layer 0's q/k/v inputs, which come from the frozen embedding),
grad-W for q_proj and v_proj. The peak is measured in the same run with NumPy alone on exactly
those GEMM shapes and layouts (best of several repeats each), so

    fraction = (time the step's GEMMs need at the measured rates) / (median step time)
             = achieved GFLOP/s / peak GFLOP/s.

Usage: python bench/bench_step.py [--layers 30] [--steps 5] [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=30, help="decoder layers (30 = SmolLM2-135M; fewer to run quickly)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (median reported)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="repeats per GEMM shape after each step (best kept)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads (sets OPENBLAS/OMP/MKL_NUM_THREADS before NumPy loads; default: BLAS default)")
    p.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                   help="keep glibc's default allocator settings (see tune_malloc)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_step.json"), help="where to write the results")
    args = p.parse_args(argv)
    for name in ("layers", "steps", "batch", "seq", "repeats"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


# ------------------------------------------------------------------ FLOP accounting

def step_gemms(cfg, batch: int, seq: int) -> list[dict]:
    """Every GEMM of one step: dict(name, kind, M, K, N, batch, count, layout).

    kind: "linear" (x (M,K) @ W^T, W stored (N,K)), "grad_x" (g (M,N... ) @ W), "grad_w" (g^T @ x),
    "attn" (batched (G, M, K) @ (G, K, N)). count multiplies identical GEMMs across layers.
    """
    n, c, f, v = batch * seq, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nh, nkv, hs, layers = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    groups, heads_batch = nh // nkv, batch * nkv
    proj = {"q_proj": (c, nh * hs), "k_proj": (c, nkv * hs), "v_proj": (c, nkv * hs), "o_proj": (nh * hs, c),
            "gate_proj": (c, f), "up_proj": (c, f), "down_proj": (f, c)}
    rows = []

    def add(name, kind, m, k, nn, count, g=1):
        if count:
            rows.append(dict(name=name, kind=kind, M=m, K=k, N=nn, batch=g, count=count))

    for name, (d_in, d_out) in proj.items():
        add(f"{name} fwd", "linear", n, d_in, d_out, layers)
        # grad-x: layer 0's q/k/v read the frozen embedding, so only layers 1.. need it there.
        add(f"{name} grad-x", "grad_x", n, d_out, d_in, layers - 1 if name in ("q_proj", "k_proj", "v_proj") else layers)
        if name in ("q_proj", "v_proj"):
            add(f"{name} grad-W", "grad_w", d_out, n, d_in, layers)
    for (r, vj), count in lm_head_tiles(n, v).items():  # each tile: z = h_R W_j^T, then its grad-x z W_j
        add(f"lm_head fwd {r}x{vj}", "linear", r, c, vj, count)
        add(f"lm_head grad-x {r}x{vj}", "grad_x", r, vj, c, count)
    # attention, grouped-query heads folded into rows: (B*nkv, g*T, hs) @ (hs, S) and (g*T, S) @ (S, hs)
    gt, s = groups * seq, seq
    add("attn q k^T fwd", "attn", gt, hs, s, layers, heads_batch)
    add("attn P v fwd", "attn", gt, s, hs, layers, heads_batch)
    add("attn gv = P^T g", "attn", s, gt, hs, layers, heads_batch)
    add("attn gP = g v^T", "attn", gt, hs, s, layers, heads_batch)
    add("attn gq = gS k", "attn", gt, s, hs, layers, heads_batch)
    add("attn gk = gS^T q", "attn", s, gt, hs, layers - 1, heads_batch)  # layer 0: k needs no gradient
    for r in rows:
        r["gflop"] = 2.0 * r["M"] * r["K"] * r["N"] * r["batch"] * r["count"] / 1e9
    return rows


def lm_head_tiles(n: int, v: int) -> dict:
    """{(rows, classes): count} of the loss's tiles over n rows and a vocabulary of v (its own tiling)."""
    from minilora.lm_head_loss import DEFAULT_CHUNK_CLASSES, DEFAULT_CHUNK_ROWS, tile_ranges
    tiles: dict = {}
    for r0, r1 in tile_ranges(n, DEFAULT_CHUNK_ROWS):
        for c0, c1 in tile_ranges(v, DEFAULT_CHUNK_CLASSES):
            tiles[(r1 - r0, c1 - c0)] = tiles.get((r1 - r0, c1 - c0), 0) + 1
    return tiles


def measure_gemm(np, row: dict, repeats: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of one GEMM of this row's shape and memory layout, with NumPy alone."""
    rng = np.random.default_rng(0)
    m, k, n, g = row["M"], row["K"], row["N"], row["batch"]
    if row["kind"] == "linear":      # x (M, K) @ W^T, W stored (N, K)
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32).T
    elif row["kind"] == "grad_x":    # g (M, K) @ W, W stored (K, N)
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    elif row["kind"] == "grad_w":    # g^T @ x with g (K, M), x (K, N)
        a, b = rng.standard_normal((k, m), dtype=np.float32).T, rng.standard_normal((k, n), dtype=np.float32)
    else:                            # batched contiguous
        a, b = rng.standard_normal((g, m, k), dtype=np.float32), rng.standard_normal((g, k, n), dtype=np.float32)
    np.matmul(a, b)
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        np.matmul(a, b)
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu


# ------------------------------------------------------------------ the step

def tune_malloc() -> bool:
    """glibc keeps freed activations in its heap (see minilora/runtime.py for why it matters)."""
    from minilora.runtime import tune_allocator
    return tune_allocator()


def build(args):
    from minilora.models import SMOLLM2_135M, ModelConfig, Transformer
    cfg = ModelConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers})
    model = Transformer(cfg, dtype="float32", seed=0)
    model.freeze()
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad = True
        layer.self_attn.v_proj.weight.requires_grad = True
    return cfg, model


def time_steps(np, model, cfg, args, rows) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds of each timed step. After each step one round of the GEMM shapes is timed
    (best kept per shape), so that peak and step sample the same stretch of a shared machine's load.

    CPU time (time.process_time) counts only when this process runs, so with one BLAS thread it is the
    honest measure on a machine that others are loading; wall time is the one to read on a quiet one.
    """
    from minilora.models import lm_loss
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    walls, cpus = [], []
    for i in range(args.steps + 1):
        model.zero_grad()
        w0, c0 = time.perf_counter(), time.process_time()
        loss = lm_loss(model, ids, targets)
        loss.backward()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        grad = model.model.layers[0].self_attn.q_proj.weight.grad
        if grad is None or grad.dtype != np.float32 or loss.dtype != np.float32:
            raise RuntimeError("bench: the step did not produce float32 gradients for q_proj")
        if i:  # step 0 is the warm-up
            walls.append(wall)
            cpus.append(cpu)
        for r in rows:
            w, c = measure_gemm(np, r, args.repeats)
            r["seconds_each"] = min(r.get("seconds_each", float("inf")), w)
            r["cpu_seconds_each"] = min(r.get("cpu_seconds_each", float("inf")), c)
    return walls, cpus


def machine_info(np) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")
        info = cfg["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version')}"
    except Exception:  # noqa: BLE001 - informational only
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), numpy=np.__version__, blas=blas,
                platform=platform.platform())


def main(argv=None) -> dict:
    args = parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(here)]  # bench/common.py and the minilora package
    if args.threads is not None:
        from common import set_blas_threads_env
        set_blas_threads_env(args.threads)
    tuned = tune_malloc() if args.malloc_tuning else False
    import numpy as np

    cfg, model = build(args)
    rows = step_gemms(cfg, args.batch, args.seq)
    times, cpu_times = time_steps(np, model, cfg, args, rows)
    for r in rows:
        r["gflops_per_s"] = 2.0 * r["M"] * r["K"] * r["N"] * r["batch"] / r["seconds_each"] / 1e9
    total = sum(r["gflop"] for r in rows)
    ideal = sum(r["seconds_each"] * r["count"] for r in rows)  # the step's GEMMs alone, at measured rates
    ideal_cpu = sum(r["cpu_seconds_each"] * r["count"] for r in rows)
    median, median_cpu = statistics.median(times), statistics.median(cpu_times)
    achieved, peak = total / median, total / ideal
    best_shape = max(r["gflops_per_s"] for r in rows)
    result = dict(
        benchmark="bench_step", date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_info(np), threads=args.threads if args.threads is not None else "default",
        malloc_tuned=tuned, load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        config=dict(cfg.to_dict(), num_hidden_layers=args.layers), batch=args.batch, seq=args.seq,
        trainable=["q_proj.weight", "v_proj.weight"], dtype="float32",
        step_seconds=times, step_seconds_median=median, step_cpu_seconds=cpu_times,
        step_cpu_seconds_median=median_cpu, step_gflop=total,
        achieved_gflops_per_s=achieved, peak_gflops_per_s=peak, fraction_of_peak=achieved / peak,
        fraction_of_peak_fastest_step=total / min(times) / peak,
        fraction_of_peak_cpu_time=ideal_cpu / median_cpu,
        best_single_shape_gflops_per_s=best_shape, fraction_of_best_shape=achieved / best_shape,
        gemm_seconds_at_peak=ideal, gemm_cpu_seconds_at_peak=ideal_cpu, gemms=rows)
    print_table(result)
    from common import write_json  # bench/common.py: atomic (temp file in the folder, then os.replace)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


def print_table(res: dict) -> None:
    print(f"SmolLM2-135M shape, {res['config']['num_hidden_layers']} layers, batch {res['batch']} x {res['seq']}, "
          f"float32, q/v trainable, BLAS threads: {res['threads']}")
    print(f"{'GEMM':<18}{'M':>7}{'K':>7}{'N':>7}{'batch':>6}{'count':>6}{'GFLOP':>9}{'GFLOP/s':>9}")
    for r in res["gemms"]:
        print(f"{r['name']:<18}{r['M']:>7}{r['K']:>7}{r['N']:>7}{r['batch']:>6}{r['count']:>6}"
              f"{r['gflop']:>9.2f}{r['gflops_per_s']:>9.1f}")
    print(f"step: median {res['step_seconds_median']:.3f} s over {len(res['step_seconds'])} steps "
          f"({', '.join(f'{t:.3f}' for t in res['step_seconds'])})")
    print(f"step FLOPs {res['step_gflop']:.1f} GFLOP; the same GEMMs alone take {res['gemm_seconds_at_peak']:.3f} s")
    print(f"achieved {res['achieved_gflops_per_s']:.1f} GFLOP/s = {100 * res['fraction_of_peak']:.1f}% of the "
          f"shape-matched peak {res['peak_gflops_per_s']:.1f} GFLOP/s "
          f"({100 * res['fraction_of_best_shape']:.1f}% of the best single shape, "
          f"{res['best_single_shape_gflops_per_s']:.1f} GFLOP/s)")
    print(f"fastest step: {100 * res['fraction_of_peak_fastest_step']:.1f}% of the shape-matched peak; "
          f"CPU time: step median {res['step_cpu_seconds_median']:.3f} s, its GEMMs alone "
          f"{res['gemm_cpu_seconds_at_peak']:.3f} s -> {100 * res['fraction_of_peak_cpu_time']:.1f}% of peak")


if __name__ == "__main__":
    main()
