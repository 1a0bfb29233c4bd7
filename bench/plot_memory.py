"""Bar chart of peak RSS by method and setting, minilora beside torch, from compare_torch's JSON of the
training rows (bench/results/compare_torch_train.json).

Two bars per framework and row: the lifetime peak (loading included) and the peak while the timed
steps ran. Needs matplotlib (the ``plots`` extra).

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
    for k, (key, label, color, hatch) in enumerate(series):
        xs = [i + (k - 1.5) * width for i in range(len(rows))]
        values = [(r.get(key) or 0) * 1024 for r in rows]
        bars = ax.bar(xs, values, width, label=label, color=color, hatch=hatch, edgecolor="white")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(rows)), [LABELS[r["task"]] for r in rows])
    ax.set_ylabel("peak RSS (MiB)")
    s = data["settings"]
    ax.set_title(f"SmolLM2-135M training step, batch {s['batch']} x {s['seq']}, LoRA r=8 q/v "
                 f"({data['machine']['date']})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=os.path.join(HERE, "results", "compare_torch_train.json"))
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "peak_rss.png"))
    args = p.parse_args(argv)
    with open(args.json) as fh:
        rows = plot(json.load(fh), args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
