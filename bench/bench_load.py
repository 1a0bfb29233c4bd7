"""Peak resident memory of loading SmolLM2-135M: float32, float32 then quantize_model, straight into NF4.

Three ways to get a model from the GGUF file, each in a fresh process (so one's freed memory cannot
hide another's peak), repeated and interleaved, medians reported:

    float            load_pretrained(model)                            the LoRA base
    quantize_after   load_pretrained(model) + quantize_model(model)    QLoRA's base, the old way
    quantize_on_load load_pretrained(model, quantize=QuantSpec())      QLoRA's base, one tensor at a time

Per run: resident memory after the imports (VmRSS), the peak of the whole process (VmHWM, the
kernel's high-water mark: it includes the imports, which stay far below the load), the resident
memory once loaded, and the load's wall time. The allocator is tuned as the ``minilora`` command
tunes it (runtime.tune_allocator) unless --no-malloc-tuning. Both QLoRA ways give the same bytes
(tests/quant/test_load_quantized.py).

Usage: python bench/bench_load.py [--model smollm2-135m] [--runs 3] [--modes float,quantize_after]
       [--code REPO] [--no-malloc-tuning] [--json PATH]
--code measures another checkout's minilora (e.g. the code before quantize-on-load existed).
Numbers are written to bench/results/bench_load.json and printed as a table, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # common.py; minilora comes from --code, through the child's PYTHONPATH

from common import machine, median, table, write_json  # noqa: E402

MODES = ("float", "quantize_after", "quantize_on_load")
MIB = 2**20


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(mode: str, model_name: str, malloc_tuning: bool) -> dict:
    """One load in this process; returns its memory and time."""
    from minilora.io.pretrained import load_pretrained
    from minilora.quant import model_memory_report, quantize_model
    from minilora.runtime import tune_allocator

    tuned = tune_allocator() if malloc_tuning else False
    before = _status_bytes("VmRSS")
    tic = time.perf_counter()
    if mode == "quantize_on_load":
        from minilora.quant import QuantSpec  # not in checkouts from before it existed
        model, _ = load_pretrained(model_name, quantize=QuantSpec())
    else:
        model, _ = load_pretrained(model_name)
        if mode == "quantize_after":
            quantize_model(model)
    seconds = time.perf_counter() - tic
    return {"mode": mode, "malloc_tuned": tuned, "rss_before_load_mib": before / MIB,
            "peak_rss_mib": _status_bytes("VmHWM") / MIB, "rss_loaded_mib": _status_bytes("VmRSS") / MIB,
            "weights_mib": model_memory_report(model)["total_bytes"] / MIB, "load_s": seconds,
            "parameters": model.num_parameters()}


def run_child(mode: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--model", args.model]
    if args.no_malloc_tuning:
        command.append("--no-malloc-tuning")
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.path.abspath(args.code)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def _commit(repo: str) -> str:
    """The measured code's git commit (short), or "unknown"."""
    done = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--runs", type=int, default=3, help="runs per mode, interleaved (median)")
    p.add_argument("--no-malloc-tuning", action="store_true", help="glibc's default allocator settings")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--code", default=os.path.dirname(HERE), help="repository whose minilora is measured")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_load.json"))
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, not args.no_malloc_tuning)))
        return 0
    modes = [m for m in MODES if m in args.modes.split(",")]
    load_start = os.getloadavg()
    runs = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode in modes:
            runs[mode].append(run_child(mode, args))
    rows = []
    for mode in modes:
        r = runs[mode]
        rows.append({"mode": mode, "peak_rss_mib": median(x["peak_rss_mib"] for x in r),
                     "load_peak_mib": median(x["peak_rss_mib"] - x["rss_before_load_mib"] for x in r),
                     "rss_loaded_mib": median(x["rss_loaded_mib"] for x in r),
                     "weights_mib": r[0]["weights_mib"], "load_s": median(x["load_s"] for x in r),
                     "parameters": r[0]["parameters"]})
    print(table(rows, ["mode", "peak_rss_mib", "load_peak_mib", "rss_loaded_mib", "weights_mib", "load_s",
                       "parameters"]))
    ratio = None
    if "quantize_after" in runs and "quantize_on_load" in runs:
        old, new = (next(r for r in rows if r["mode"] == m) for m in ("quantize_after", "quantize_on_load"))
        ratio = {"peak_rss": new["peak_rss_mib"] / old["peak_rss_mib"],
                 "load_peak": new["load_peak_mib"] / old["load_peak_mib"], "load_s": new["load_s"] / old["load_s"]}
        print(f"quantize_on_load / quantize_after: peak RSS {ratio['peak_rss']:.2f}x, "
              f"load peak (above the imports) {ratio['load_peak']:.2f}x, load time {ratio['load_s']:.2f}x")
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    write_json(args.json, {"machine": machine(), "model": args.model, "runs_per_mode": args.runs,
                           "code_commit": _commit(args.code),
                           "malloc_tuning": not args.no_malloc_tuning, "rows": rows,
                           "quantize_on_load_over_quantize_after": ratio, "all_runs": runs,
                           "loadavg_start": load_start, "loadavg_end": load_end})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
