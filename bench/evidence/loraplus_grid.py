"""Claim: LoRA+ (B learns ratio x faster than A) converges up to ~2x faster and ends 1-2% better
(LoRA+, arXiv 2402.12354; PEFT's example ratio is 16, the authors' repository uses 20).

Grid: loraplus_lr_ratio in RATIOS x base learning rate in LRS (ratio 1 is plain LoRA, so the best
plain-LoRA lr is inside the grid), LoRA r=8 alpha=16 on q_proj and v_proj, AdamW, cosine schedule.
Per cell and seed: Shakespeare (held-out perplexity, training loss curve) and the dates task (exact
match, training loss curve). Steps to target: the target is the final smoothed training loss (mean
of the last 5 steps) of plain LoRA at its best lr (lowest held-out perplexity; mean over seeds);
a cell's steps to target is the first step whose 5-step trailing mean is at or below it.

The grid can run in parts, on separate processes (``--part NAME --seeds ... --lrs ...`` writes
loraplus_grid_part_NAME.json), then ``--combine`` joins every part into loraplus_grid.json with
the summary and the figure.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from minilora.lora import LoraConfig

from .measure import smoothed, spread, steps_to_target
from .report import Output, parse_args, pyplot, save_figure, say
from .runs import grid
from .setup import Setup

NAME = "loraplus_grid"
RATIOS = (1, 2, 4, 8, 16, 32)
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
OPTIONS = (("--lrs", {"type": float, "nargs": "+", "default": None, "help": "base lrs (default: LRS)"}),
           ("--ratios", {"type": int, "nargs": "+", "default": None, "help": "ratios (default: RATIOS)"}),
           ("--part", {"default": None, "help": "run a part of the grid into loraplus_grid_part_<PART>.json"}),
           ("--combine", {"action": "store_true", "help": "join the parts into loraplus_grid.json"}))


def cells(ratios, lrs) -> list:
    config = lambda steps: LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])  # noqa: E731
    return [{"label": f"ratio {ratio} lr {lr:g}", "ratio": ratio, "lr": lr, "loraplus_ratio": float(ratio),
             "make_config": config} for ratio in ratios for lr in lrs]


def analyse(rows, ratios, lrs) -> dict:
    """Per cell: perplexity / exact match spread and steps to the plain-LoRA target, per part."""
    trained = [r for r in rows if "text" in r]
    cell = lambda ratio, lr: [r for r in trained if r["ratio"] == ratio and r["lr"] == lr]  # noqa: E731
    plain = {lr: spread(r["text"]["ppl"] for r in cell(1, lr)) for lr in lrs if cell(1, lr)}
    best_lr = min(plain, key=lambda lr: plain[lr]["mean"])
    result = {"best_plain_lr": best_lr, "cells": []}
    targets = {}
    for part in ("text", "task"):
        finals = [float(np.mean(r[part]["losses"][-5:])) for r in cell(1, best_lr) if part in r]
        targets[part] = float(np.mean(finals)) if finals else None
    result["target_loss"] = targets
    for ratio in ratios:
        for lr in lrs:
            runs = cell(ratio, lr)
            if not runs:  # a grid may add an lr for some ratios only
                continue
            entry = {"ratio": ratio, "lr": lr, "ppl": spread(r["text"]["ppl"] for r in runs)}
            for part in ("text", "task"):
                if targets[part] is None:
                    continue
                steps = [steps_to_target(r[part]["losses"], targets[part]) for r in runs if part in r]
                entry[f"{part}_steps_to_target"] = steps
                entry[f"{part}_final_loss"] = spread(np.mean(r[part]["losses"][-5:]) for r in runs if part in r)
            if any("task" in r for r in runs):
                entry["exact_match"] = spread(r["task"]["exact_match"] for r in runs if "task" in r)
            result["cells"].append(entry)
    return result


def combine(out) -> tuple:
    """(rows, seeds, lrs, ratios) of every part file: one base row, then the trained rows of each part."""
    paths = sorted(glob.glob(os.path.join(out.results, f"{NAME}_part_*.json")))
    if not paths:
        raise SystemExit(f"no {NAME}_part_*.json under {out.results}")
    rows, seeds, lrs, ratios = [], set(), set(), set()
    for path in paths:
        with open(path) as f:
            part = json.load(f)
        if not part["complete"]:
            raise SystemExit(f"{path} is incomplete")
        rows += part["rows"][1:] if rows else part["rows"]
        seeds.update(part["seeds"])
        lrs.update(part["lrs"])
        ratios.update(part["ratios"])
    return rows, sorted(seeds), sorted(lrs), sorted(ratios)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, extra=OPTIONS)
    setup, out = Setup(quick=args.quick), Output(args)
    b = setup.budget
    ratios = tuple(args.ratios or ((1, 16) if args.quick else RATIOS))
    lrs = tuple(args.lrs or ((1e-3,) if args.quick else LRS))
    seeds = args.seeds or ((0,) if not args.quick else b.seeds[:1])
    extra = {"ratios": list(ratios), "lrs": list(lrs), "r": 8, "lora_alpha": 16, "targets": ["q_proj", "v_proj"]}
    steps = args.steps or b.grid_steps
    if args.combine:
        rows, seeds, lrs, ratios = combine(out)
        extra.update(lrs=lrs, ratios=ratios)
    else:
        name = NAME if args.part is None else f"{NAME}_part_{args.part}"
        rows = grid(setup, out, name, cells(ratios, lrs), seeds, steps, b.task_steps, extra)
        if args.part is not None:
            return
    summary = analyse(rows, ratios, lrs)
    say(f"best plain lr {summary['best_plain_lr']}, targets {summary['target_loss']}")
    out.write(NAME, setup, {**extra, "steps": steps, "task_steps": b.task_steps, "seeds": list(seeds),
                            "complete": True, "rows": rows, "summary": summary})
    plot(rows, summary, ratios, lrs, out.figure_path(NAME))


def plot(rows, summary, ratios, lrs, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ppl = np.array([[next((c["ppl"]["mean"] for c in summary["cells"] if c["ratio"] == r and c["lr"] == lr), np.nan)
                     for lr in lrs] for r in ratios])
    image = axes[0].imshow(ppl, cmap="viridis_r", aspect="auto")
    for (i, j), value in np.ndenumerate(ppl):
        if np.isfinite(value):
            axes[0].text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
    axes[0].set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    axes[0].set_yticks(range(len(ratios)), [str(r) for r in ratios])
    axes[0].set_xlabel("base lr")
    axes[0].set_ylabel("LoRA+ ratio")
    axes[0].set_title("held-out perplexity")
    fig.colorbar(image, ax=axes[0])
    best = summary["best_plain_lr"]
    for r in ratios:
        runs = [row for row in rows if "text" in row and row["ratio"] == r and row["lr"] == best]
        if runs:
            axes[1].plot(smoothed(runs[0]["text"]["losses"]), label=f"ratio {r}")
    if summary["target_loss"]["text"] is not None:
        axes[1].axhline(summary["target_loss"]["text"], color="k", ls="--", label="target")
    axes[1].set_title(f"training loss at lr {best:g} (5-step mean, first seed)")
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
