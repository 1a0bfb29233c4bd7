"""Bar chart of peak RSS by method and setting, minilora beside torch, from compare_torch's JSON of the
training rows (bench/results/compare_torch_train.json).

Two bars per framework and row: the lifetime peak (loading included) and the peak while the timed
steps ran. Also, from bench_memory.json, minilora's step peak split into its parts (stacked bars).
Needs matplotlib (the ``plots`` extra).

Usage: python bench/plot_memory.py [--json bench/results/compare_torch_train.json] [--out docs/peak_rss.png]
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"lora": "LoRA", "lora_ckpt": "LoRA\n+ checkpointing", "qlora": "QLoRA",
          "qlora_ckpt": "QLoRA\n+ checkpointing"}


def plot(data: dict, out: str) -> list:
    from matplotlib.figure import Figure

    rows = [r for t, r in data["summary"].items() if t in LABELS]
    if not rows:
        raise ValueError("plot_memory: the JSON has no training rows (lora, lora_ckpt, qlora, qlora_ckpt)")
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    width = 0.2
    series = [("minilora_rss_gib", "minilora, lifetime peak", "#1f77b4", None),
              ("minilora_run_rss_gib", "minilora, peak while training", "#1f77b4", "//"),
              ("torch_rss_gib", "torch + PEFT (+ bnb), lifetime peak", "#ff7f0e", None),
              ("torch_run_rss_gib", "torch + PEFT (+ bnb), peak while training", "#ff7f0e", "//")]
    top = 0.0
    for k, (key, label, color, hatch) in enumerate(series):
        xs = [i + (k - 1.5) * width for i in range(len(rows))]
        values = [(r.get(key) or 0) * 1024 for r in rows]
        top = max(top, *values)
        bars = ax.bar(xs, values, width, label=label, color=color, hatch=hatch, edgecolor="white")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(rows)), [LABELS[r["task"]] for r in rows])
    ax.set_ylabel("peak RSS (MiB)")
    s = data["settings"]
    ax.set_title(f"SmolLM2-135M training step, batch {s['batch']} x {s['seq']}, LoRA r=8 q/v "
                 f"({data['machine']['date']})", fontsize=10)
    ax.set_ylim(0, top * 1.3)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return rows


PARTS = ("weights", "adapters_and_optimizer", "activations", "logits", "backward_transient", "rest")


def plot_breakdown(data: dict, out: str) -> list:
    """Stacked bars of bench_memory.json: each configuration's step peak RSS split into its parts."""
    from matplotlib.figure import Figure

    rows = data["configs"]
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    bottom = [0.0] * len(rows)
    for part in PARTS:
        values = [r["parts_MiB"][part] for r in rows]
        ax.bar(range(len(rows)), values, 0.6, bottom=bottom, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:.0f}", (i, total), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["config"].replace("_", "\n", 1) for r in rows], fontsize=8)
    ax.set_ylabel("step peak RSS (MiB)")
    ax.set_title(f"minilora's step memory by part (bench_memory, {data['machine']['date']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=os.path.join(HERE, "results", "compare_torch_train.json"))
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "peak_rss.png"))
    p.add_argument("--memory-json", default=os.path.join(HERE, "results", "bench_memory.json"))
    p.add_argument("--memory-out", default=os.path.join(os.path.dirname(HERE), "docs", "memory_breakdown.png"))
    args = p.parse_args(argv)
    with open(args.json) as fh:
        rows = plot(json.load(fh), args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")
    if os.path.exists(args.memory_json):
        with open(args.memory_json) as fh:
            rows = plot_breakdown(json.load(fh), args.memory_out)
        print(f"wrote {args.memory_out} ({len(rows)} configurations)")


if __name__ == "__main__":
    main()
