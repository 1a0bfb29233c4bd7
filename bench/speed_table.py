"""The goals table of docs/speed.md (row, minilora, torch, ratio, goal, met), printed as Markdown
from the bench JSON files: compare_torch_train.json (training steps and peak RSS: compare_torch.py
--tasks lora,lora_ckpt,qlora,qlora_ckpt --json ...), compare_torch.json (generation), bench_quant.json
(dequantize rate against bitsandbytes in the same run), bench_generate.json (decoding against the
bandwidth limit) and bench_step.json (LoRA step against the
shape-matched matmul peak). A file or row that is missing prints as a row marked "not measured".

Usage: python bench/speed_table.py [--results bench/results]
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_ROWS = (("lora", "LoRA step, no checkpointing", 0.8), ("lora_ckpt", "LoRA step, checkpointing", None),
             ("qlora", "QLoRA step, no checkpointing", 0.85),
             ("qlora_ckpt", "QLoRA step, checkpointing (PEFT's prepare_model_for_kbit_training)", 0.85))
RSS_ROWS = (("qlora", "QLoRA peak RSS, no checkpointing"), ("qlora_ckpt", "QLoRA peak RSS, checkpointing"))


def _load(folder: str, name: str):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _line(label, ours, theirs, ratio, goal, met):
    mark = "" if met is None else ("**met**" if met else "not met")
    return f"| {label} | {ours} | {theirs} | {ratio} | {goal} | {mark} |"


def rows(folder: str) -> list:
    out = ["| row | minilora | torch | ratio | goal | met |", "|---|---|---|---|---|---|"]
    s = dict((_load(folder, "compare_torch_train.json") or {"summary": {}})["summary"])
    generation = (_load(folder, "compare_torch.json") or {"summary": {}})["summary"].get("generate")
    for task, label, goal in STEP_ROWS:
        r = s.get(task)
        if r is None:
            out.append(_line(label, "not measured", "", "", f"<= {goal}" if goal else "", None))
            continue
        out.append(_line(label, f"{r['minilora_s']:.2f} s", f"{r['torch_s']:.2f} s", f"{r['time_ratio']:.2f}",
                         f"<= {goal}" if goal else "", None if goal is None else r["time_ratio"] <= goal))
    for task, label in RSS_ROWS:
        r = s.get(task)
        if r is None:
            out.append(_line(label, "not measured", "", "", "<= 0.5", None))
            continue
        for kind, key, ratio in (("lifetime", "rss_gib", "rss_ratio"), ("while training", "run_rss_gib",
                                                                           "run_rss_ratio")):
            a, b, q = r.get(f"minilora_{key}"), r.get(f"torch_{key}"), r.get(ratio)
            if a is None or b is None or q is None:
                continue
            out.append(_line(f"{label} ({kind}) vs torch+bnb", f"{a * 1024:.0f} MiB", f"{b * 1024:.0f} MiB",
                             f"{q:.2f}", "<= 0.5", q <= 0.5))
        own = s.get("lora_ckpt" if task == "qlora_ckpt" else "lora")
        if own is not None:
            for kind, key in (("lifetime", "rss_gib"), ("while training", "run_rss_gib")):
                a, b = r.get(f"minilora_{key}"), own.get(f"minilora_{key}")
                if a and b:
                    out.append(_line(f"{label} ({kind}) vs minilora's LoRA at the same setting",
                                     f"{a * 1024:.0f} MiB", f"LoRA: {b * 1024:.0f} MiB (minilora)",
                                     f"{a / b:.2f}", "<= 0.5", a / b <= 0.5))
    bq = _load(folder, "bench_quant.json")
    ours = theirs = None
    for row in (bq or {}).get("throughput", []):
        if row["case"].startswith("minilora nf4") and "double_quant=True, into a reused buffer" in row["case"]:
            ours = row
        if row["case"].startswith("bitsandbytes nf4") and row["case"].endswith("double_quant=True"):
            theirs = row
    label, goal = "NF4 dequantize 4096 x 4096, double quant (wall; per CPU second)", ">= bnb, >= 3.2 GB/s"
    if ours is None or "dequantize_GB_per_cpu_s" not in ours:
        out.append(_line(label, "not measured", "", "", goal, None))
    else:
        def rate(r):
            return f"{r['dequantize_GB_per_s']:.2f} GB/s; {r['dequantize_GB_per_cpu_s']:.2f} GB/cpu-s"
        ratio = ours["dequantize_GB_per_s"] / theirs["dequantize_GB_per_s"] if theirs else None
        met = (ratio is None or ratio >= 1) and max(ours["dequantize_GB_per_s"], ours["dequantize_GB_per_cpu_s"]) >= 3.2
        out.append(_line(label, rate(ours), rate(theirs) if theirs else "", f"{ratio:.2f}" if ratio else "", goal, met))
    g = s.get("generate") or generation
    if g is None:
        out.append(_line("generation, greedy, KV cache (filled by the decoding work)", "", "", "", ">= 2x", None))
    else:
        out.append(_line("generation, greedy, KV cache", f"{g['minilora_tok_s']:.1f} tok/s",
                         f"{g['torch_tok_s']:.1f} tok/s", f"{g['speed_ratio']:.2f}", ">= 2x", g["speed_ratio"] >= 2))
    bg = _load(folder, "bench_generate.json")
    label = "generation vs this machine's bandwidth limit (bench_generate)"
    if bg is None:
        out.append(_line(label, "not measured", "", "", ">= 70%", None))
    else:
        bandwidth = bg["gemv_bandwidth_gb_s"][str(bg["gemv_threads"])]
        out.append(_line(f"{label}: {bg['bytes_per_token'] / 1e6:.1f} MB of weights per token / {bandwidth:.1f} GB/s"
                         f" GEMV = {bg['limit_tok_s']:.1f} tok/s", f"{bg['minilora_tok_s']:.1f} tok/s = "
                         f"{bg['fraction_of_limit']:.0%} (decoding alone {bg['decode_fraction_of_limit']:.0%})",
                         "", "", ">= 70%", bg["fraction_of_limit"] >= 0.7))
    bs = _load(folder, "bench_step.json")
    fraction = (bs or {}).get("fraction_of_peak")
    out.append(_line("LoRA step vs shape-matched matmul peak (bench_step)",
                     f"{fraction:.1%}" if fraction else "", "", "", ">= 80%",
                     None if not fraction else fraction >= 0.8))
    return out


def memory_rows(folder: str) -> list:
    """bench_memory.json's breakdown, one row per configuration (MiB)."""
    bm = _load(folder, "bench_memory.json")
    if bm is None:
        return ["(bench/results/bench_memory.json not measured)"]
    parts = ("weights", "adapters_and_optimizer", "activations", "logits", "backward_transient", "rest")
    out = ["| configuration | " + " | ".join(p.replace("_", " ") for p in parts) +
           " | step peak RSS | lifetime peak RSS (load included) |", "|---" * (len(parts) + 3) + "|"]
    for r in bm["configs"]:
        chunk = f"chunks of {r['chunk_rows']}" if r["chunk_rows"] else "whole logits"
        label = (f"{'QLoRA' if r['quantized'] else 'LoRA'}, {'checkpointing' if r['checkpointing'] else 'no checkpointing'}"
                 f", {chunk}" + (f", keep {r.get('keep_dequantized', 'recompute')}" if r["quantized"] else ""))
        out.append(f"| {label} | " + " | ".join(f"{r['parts_MiB'][p]:.0f}" for p in parts) +
                   f" | **{r['rss_peak_MiB']:.0f}** | {r['lifetime_rss_peak_MiB']:.0f} |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    print("\n".join(rows(args.results)))
    print()
    print("\n".join(memory_rows(args.results)))


if __name__ == "__main__":
    main()
