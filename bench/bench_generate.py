"""Greedy decoding of SmolLM2-135M against this machine's memory-bandwidth limit (and transformers).

Each decoding step reads every weight once, so a step cannot take less than

    bytes of weights per token / GEMV bandwidth

where the bandwidth is measured in the same run, between the generation rounds, as an lm_head-shaped
float32 product W (V, C) @ x with each BLAS thread count the decoder may pick, and in both layouts
of W: its own rows (V, C) and input-major, W^T stored (C, V), which OpenBLAS streams much faster and
the decoder uses (models/fused.py). The fastest layout and thread count set the limit. Each timed
product reads the next of several copies of W, as many bytes in all as a token reads (cold_copies),
so that neither the probe nor the per-shape table after the rounds finds its matrix in a cache that
decoding's 538 MB do not fit in.
The bench prints bytes/token, that bandwidth, the limit in tokens/s and the fraction minilora
reaches: end to end (prefill included, as bench/compare_torch.py's generation row counts it) and
over the decoding steps alone (from the first token to the last).

When torch and transformers import (the reference environment), transformers' ``model.generate`` on
the same GGUF, prompt and token count runs in a worker process (compare_torch.py's), alternating
with minilora round by round; the ratio of tokens/s is taken from the medians. Each step of a round
(minilora, the bandwidth probe, transformers) starts after a pause (common.settle), once the threads
of the step before have stopped spinning.

Usage: python bench/bench_generate.py [--rounds 5] [--new-tokens 64] [--threads 2] [--no-torch] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (medians)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads at most (transformers: torch threads)")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="skip transformers even if it imports")
    p.add_argument("--malloc-tuning", action="store_true",
                   help="tune glibc's allocator as the minilora command does (runtime.tune_allocator)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_generate.json"))
    args = p.parse_args(argv)
    for name in ("rounds", "new_tokens", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def weight_bytes_per_token(model) -> int:
    """Bytes of parameters one decoding step reads: every weight once, of the token embedding one row
    (unless it is tied to lm_head, which reads all of it)."""
    embed = model.model.embed_tokens.weight
    total = sum(int(p.data.nbytes) for p in model.parameters())  # a tied weight is listed once
    if model.lm_head.weight is not embed:
        total -= int(embed.data.nbytes) - int(embed.data[0].nbytes)
    return total


LAYOUTS = ("rows", "input-major")  # W stored (V, C); W^T stored (C, V) and read as its transpose


def cold_copies(np, w, working_set: int) -> list:
    """``w`` and copies of it in the same layout, ceil(working_set / w.nbytes) arrays in all.

    A decoding step reads each weight once and then ``working_set`` bytes of others (538 MB for
    SmolLM2-135M) before reading it again, so a probe that reads one matrix over and over measures
    whatever cache holds it: on a VM with a 480 MiB L3 (2026-12-03) one (49152, 576) matrix repeated
    streams 42-44 GB/s, three or more copies in turn 29-30 GB/s, the rate decoding gets.
    """
    count = max(1, -(-int(working_set) // int(w.nbytes)))
    return [w] + [np.copy(w, order="K") for _ in range(count - 1)]  # order K: an input-major view stays one


def probe_weights(np, shape, working_set: int) -> dict:
    """{layout: [arrays]} for gemv_bandwidth: W (V, C) in its rows and input-major (a (V, C) view of a
    row-major (C, V) array), each as cold_copies over ``working_set`` bytes."""
    rows = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return {"rows": cold_copies(np, rows, working_set),
            "input-major": cold_copies(np, np.ascontiguousarray(rows.T).T, working_set)}


def cycled_seconds(x, copies, repeats: int) -> float:
    """Median seconds of x W^T, each timed product on the next of ``copies`` in turn."""
    times = []
    for i in range(repeats):
        w = copies[i % len(copies)]
        t0 = time.perf_counter()
        x @ w.T
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemv_bandwidth(np, weights: dict, thread_counts, repeats: int = 15) -> dict:
    """{"layout/threads": median bytes/s} of W (V, C) @ x per layout and thread count (threadpoolctl sets
    it), each timed product on the next of the layout's copies (probe_weights) in turn."""
    from minilora.models.blas_threads import blas_threads, set_blas_threads
    first = weights[LAYOUTS[0]][0]
    x = np.random.default_rng(1).standard_normal((1, first.shape[1]), dtype=np.float32)
    start, out = blas_threads(), {}
    for n in thread_counts:
        set_blas_threads(n)
        for layout in LAYOUTS:
            x @ weights[layout][-1].T
            out[f"{layout}/{n}"] = first.nbytes / cycled_seconds(x, weights[layout], repeats)
    if start:
        set_blas_threads(start)
    return out


def product_layouts(np, model, working_set: int, repeats: int = 101) -> list:
    """Each decoding product's shape timed as x W^T in both layouts (W's rows; W^T stored input-major),
    cycling over cold_copies of ``working_set`` bytes as decoding does (each weight read once per
    token): [{name, shape, rows_gb_s, input_major_gb_s, decoder_layout}]."""
    from minilora.models.decode import _linears
    q, k, v, o, gate, up, down = _linears(model.model.layers[0])
    c = model.config.hidden_size
    shapes = {"q|k|v": (q.out_features + k.out_features + v.out_features, c), "o_proj": tuple(o.weight.shape),
              "gate|up": (gate.out_features + up.out_features, c), "down_proj": tuple(down.weight.shape),
              "lm_head": tuple(model.lm_head.weight.shape)}
    rows = []
    for name, shape in shapes.items():
        layouts = probe_weights(np, shape, working_set)
        x = np.random.default_rng(1).standard_normal((1, shape[1]), dtype=np.float32)
        rates = {layout: ws[0].nbytes / cycled_seconds(x, ws, repeats) / 1e9 for layout, ws in layouts.items()}
        del layouts
        rows.append(dict(name=name, shape=list(shape), rows_gb_s=rates["rows"], input_major_gb_s=rates["input-major"],
                         decoder_layout="input-major" if shape[0] >= shape[1] else "rows"))
    return rows


def minilora_round(model, prompt, new_tokens: int) -> dict:
    """One greedy generation: wall and CPU seconds end to end, and the decoding steps' share."""
    from minilora.models import stream_generate
    tokens, stamps = [], []
    c0 = time.process_time()
    t0 = time.perf_counter()
    for token in stream_generate(model, prompt, new_tokens):
        stamps.append(time.perf_counter())
        tokens.append(int(token[0]))
    cpu = time.process_time() - c0
    return {"seconds": stamps[-1] - t0, "cpu_seconds": cpu, "decode_seconds": stamps[-1] - stamps[0],
            "tokens": tokens}


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    from common import set_blas_threads_env, settle
    set_blas_threads_env(args.threads)
    import numpy as np

    if args.malloc_tuning:
        from minilora.runtime import tune_allocator
        tune_allocator()

    from common import machine, write_json
    from compare_torch import PROMPT, Worker
    from minilora.io import load_pretrained, load_tokenizer
    from minilora.models.blas_threads import blas_threads

    model, _ = load_pretrained("smollm2-135m")
    model.eval()
    prompt = load_tokenizer("smollm2-135m").encode(PROMPT)
    per_token = weight_bytes_per_token(model)
    counts = sorted({blas_threads() or args.threads, 1}, reverse=True)
    lm_shape = tuple(model.lm_head.weight.shape)
    probe = probe_weights(np, lm_shape, per_token)  # as many bytes as a token reads, so as cold
    use_torch = args.torch and _imports("torch", "transformers")
    info = dict(machine(), load_average_start=os.getloadavg())
    print(f"SmolLM2-135M greedy, {args.new_tokens} new tokens after a {len(prompt)}-token prompt, "
          f"BLAS threads <= {args.threads}; load average {info['load_average_start']}", flush=True)
    ours, theirs, bandwidth, loads = [], [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        worker = None
        if use_torch:
            wargs = argparse.Namespace(threads=args.threads, batch=1, seq=1, new_tokens=args.new_tokens,
                                       malloc_tuning=False, hf_dir=None)
            worker = Worker("torch", "generate", wargs, log_dir)
            worker.receive()  # ready
        for i in range(args.rounds + 1):
            steps = [lambda: ours.append(minilora_round(model, prompt, args.new_tokens)),
                     lambda: bandwidth.append(gemv_bandwidth(np, probe, counts))]
            if worker is not None:
                steps.append(lambda: theirs.append(worker.ask("run")))
            for step in (steps if i % 2 == 0 else steps[::-1]):
                settle()  # the step before it has let go of the cores (common.settle)
                step()
            if i == 0:  # warm-up: minilora's first call, which lays out the decoder's weights
                first_call = ours[0]["seconds"]
                ours.clear(), theirs.clear(), bandwidth.clear()
            loads.append(os.getloadavg()[0])
            print(f"  round {i}{' (warm-up)' if not i else ''}: load {loads[-1]:.1f}", flush=True)
        if worker is not None:
            worker.ask("done")
            worker.proc.wait(timeout=60)
    result = summarize(args, per_token, counts, ours, theirs, bandwidth)
    probe_copies = len(probe["rows"])
    del probe
    result["products"] = product_layouts(np, model, per_token)
    result.update(minilora_first_call_s=first_call, malloc_tuning=args.malloc_tuning, probe_copies=probe_copies)
    result.update(benchmark="bench_generate", machine=info, load_average_1min=loads,
                  load_average_end=os.getloadavg(), prompt_tokens=len(prompt), weight_shape=lm_shape)
    print_table(result)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


def summarize(args, per_token, counts, ours, theirs, bandwidth) -> dict:
    med = statistics.median
    n = args.new_tokens
    by_key = {key: med(b[key] for b in bandwidth) for key in bandwidth[0]}
    best = max(by_key, key=by_key.get)
    best_layout, best_threads = best.split("/")[0], int(best.split("/")[1])
    by_threads = {t: max(by_key[f"{layout}/{t}"] for layout in LAYOUTS) for t in counts}
    limit = by_key[best] / per_token  # tokens/s if reading the weights were all a step did
    tok_s = n / med(r["seconds"] for r in ours)
    decode_tok_s = (n - 1) / med(r["decode_seconds"] for r in ours)
    row = dict(new_tokens=n, threads=args.threads, bytes_per_token=per_token,
               gemv_bandwidth_gb_s={str(t): b / 1e9 for t, b in by_threads.items()},
               gemv_bandwidth_by_layout_gb_s={k: b / 1e9 for k, b in by_key.items()},
               gemv_threads=best_threads, gemv_layout=best_layout, limit_tok_s=limit,
               minilora_tok_s=tok_s, minilora_decode_tok_s=decode_tok_s,
               minilora_cpu_s=med(r["cpu_seconds"] for r in ours),
               fraction_of_limit=tok_s / limit, decode_fraction_of_limit=decode_tok_s / limit,
               minilora_runs=[{k: v for k, v in r.items() if k != "tokens"} for r in ours],
               minilora_tokens=ours[0]["tokens"])
    if theirs:
        row["torch_tok_s"] = n / med(r["seconds"] for r in theirs)
        row["torch_cpu_s"] = med(r["cpu_seconds"] for r in theirs)
        row["speed_ratio"] = tok_s / row["torch_tok_s"]
        row["torch_runs"] = [{k: v for k, v in r.items() if k != "tokens"} for r in theirs]
        mine, ref = ours[0]["tokens"], theirs[0]["tokens"]
        row["agreeing_prefix"] = next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), len(mine))
    row["goals"] = [dict(goal="decoding >= 70% of the bandwidth limit (end to end)", value=row["fraction_of_limit"],
                         met=row["fraction_of_limit"] >= 0.7)]
    if theirs:
        row["goals"].append(dict(goal="generation >= 2x transformers tok/s", value=row["speed_ratio"],
                                 met=row["speed_ratio"] >= 2.0))
    return row


def print_table(r: dict) -> None:
    bw = ", ".join(f"{t} thread{'s' * (t != '1')} {b:.1f}" for t, b in r["gemv_bandwidth_gb_s"].items())
    print(f"bytes of weights per token   {r['bytes_per_token'] / 1e6:.1f} MB")
    layouts = ", ".join(f"{k} {b:.1f}" for k, b in r["gemv_bandwidth_by_layout_gb_s"].items())
    print(f"GEMV bandwidth (lm_head W@x) {bw} GB/s (best layout; median per round, then over rounds; "
          f"each product on the next of {r.get('probe_copies', 1)} copies of W)")
    print(f"  by layout/threads          {layouts} GB/s; the limit takes {r['gemv_layout']}")
    print(f"limit                        {r['limit_tok_s']:.1f} tok/s")
    print(f"minilora                     {r['minilora_tok_s']:.1f} tok/s end to end "
          f"({100 * r['fraction_of_limit']:.0f}% of the limit), {r['minilora_decode_tok_s']:.1f} tok/s "
          f"decoding alone ({100 * r['decode_fraction_of_limit']:.0f}%)")
    print(f"minilora's first call        {r['minilora_first_call_s']:.2f} s for the same tokens (weights laid out "
          f"once), against the median call {r['new_tokens'] / r['minilora_tok_s']:.2f} s")
    if "torch_tok_s" in r:
        print(f"transformers                 {r['torch_tok_s']:.1f} tok/s end to end -> minilora "
              f"{r['speed_ratio']:.2f}x; the first {r['agreeing_prefix']} of {r['new_tokens']} tokens agree")
    for g in r["goals"]:
        print(f"goal {g['goal']}: {g['value']:.3f} -> {'met' if g['met'] else 'NOT met'}")
    print("each product's shape, x W^T from cold weights (GB/s): rows / input-major -> the decoder's layout")
    for p in r.get("products", []):
        print(f"  {p['name']:10s} {tuple(p['shape'])!s:14s} {p['rows_gb_s']:5.1f} / {p['input_major_gb_s']:5.1f}"
              f" -> {p['decoder_layout']}")


def _imports(*names) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(n) is not None for n in names)


if __name__ == "__main__":
    main()
