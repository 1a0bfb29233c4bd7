"""The goals table of docs/speed.md (row, minilora, torch, ratio, goal, met), printed as Markdown
from the bench JSON files: compare_torch_train.json (training steps and peak RSS: compare_torch.py
--tasks lora,lora_ckpt,qlora,qlora_ckpt --json ...), compare_torch.json (generation), bench_quant.json
(dequantize rate against bitsandbytes in the same run), bench_generate.json (decoding against the
bandwidth limit) and bench_step.json (LoRA step against the
shape-matched matmul peak). A file or row that is missing prints as a row marked "not measured".

Step times move 1.5x between runs on a shared machine, so one run's ratio can meet a goal that the
runs around it miss. ``--train-runs`` takes several compare_torch runs of the same code: a training
row then shows the median over runs of minilora's and torch's times and of the ratio, marks the goal
by that median ratio, and says in how many runs the ratio met it. Without ``--train-runs`` the runs
are those listed in the results folder's goals_train_runs.txt (one file name per line: the runs
that docs/speed.md's table reads), else compare_torch_train.json alone.

Usage: python bench/speed_table.py [--results bench/results] [--train-runs a.json b.json ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_LIST = "goals_train_runs.txt"
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


def _line(label, ours, theirs, ratio, goal, met, runs_met=None):
    """One Markdown row; ``runs_met`` = (runs whose ratio met the goal, runs), shown when several."""
    mark = "" if met is None else ("**met**" if met else "not met")
    if mark and runs_met is not None and runs_met[1] > 1:
        mark += f" ({runs_met[0]} of {runs_met[1]} runs)"
    return f"| {label} | {ours} | {theirs} | {ratio} | {goal} | {mark} |"


def _goal_cells(ratios: list, goal) -> tuple:
    """(ratio, goal, met, (runs met, runs)) cells for the median of per-run ratios; goal: ratio <= goal."""
    ratio = statistics.median(ratios)
    if goal is None:
        return f"{ratio:.2f}", "", None, None
    return f"{ratio:.2f}", f"<= {goal}", ratio <= goal, (sum(r <= goal for r in ratios), len(ratios))


def train_rows(summaries: list) -> list:
    """The step and peak-RSS rows from compare_torch summaries of one or more runs (medians over runs)."""
    out = []

    def per_run(task, value):
        """value(row of task, its summary) over the runs that have the task, None dropped."""
        values = [value(s[task], s) for s in summaries if task in s]
        return [v for v in values if v is not None]

    def median_of(task, key, of_task=None):
        """Median over runs of a summary field (of ``of_task``'s row, default the task's own)."""
        return statistics.median(per_run(task, lambda r, s: (s.get(of_task) or {}).get(key) if of_task
                                         else r.get(key)))

    for task, label, goal in STEP_ROWS:
        ratios = per_run(task, lambda r, s: r["time_ratio"])
        if not ratios:
            out.append(_line(label, "not measured", "", "", f"<= {goal}" if goal else "", None))
            continue
        out.append(_line(label, f"{median_of(task, 'minilora_s'):.2f} s", f"{median_of(task, 'torch_s'):.2f} s",
                         *_goal_cells(ratios, goal)))
    for task, label in RSS_ROWS:
        if not per_run(task, lambda r, s: r):
            out.append(_line(label, "not measured", "", "", "<= 0.5", None))
            continue
        own_task = "lora_ckpt" if task == "qlora_ckpt" else "lora"
        kinds = (("lifetime", "minilora_rss_gib", "torch_rss_gib"),
                 ("while training", "minilora_run_rss_gib", "torch_run_rss_gib"))
        for kind, ours, theirs in kinds:  # against torch + bitsandbytes
            ratios = per_run(task, lambda r, s: r[ours] / r[theirs] if r.get(ours) and r.get(theirs) else None)
            if ratios:
                out.append(_line(f"{label} ({kind}) vs torch+bnb", f"{median_of(task, ours) * 1024:.0f} MiB",
                                 f"{median_of(task, theirs) * 1024:.0f} MiB", *_goal_cells(ratios, 0.5)))
        for kind, ours, _ in kinds:  # against minilora's own LoRA at the same setting, in the same run
            ratios = per_run(task, lambda r, s: r[ours] / s[own_task][ours]
                             if r.get(ours) and (s.get(own_task) or {}).get(ours) else None)
            if ratios:
                out.append(_line(f"{label} ({kind}) vs minilora's LoRA at the same setting",
                                 f"{median_of(task, ours) * 1024:.0f} MiB",
                                 f"LoRA: {median_of(task, ours, own_task) * 1024:.0f} MiB (minilora)",
                                 *_goal_cells(ratios, 0.5)))
    return out


def rows(folder: str, train_runs=("compare_torch_train.json",)) -> list:
    out = ["| row | minilora | torch | ratio | goal | met |", "|---|---|---|---|---|---|"]
    summaries = [dict(run["summary"]) for run in (_load(folder, name) for name in train_runs) if run]
    s = summaries[-1] if summaries else {}
    generation = (_load(folder, "compare_torch.json") or {"summary": {}})["summary"].get("generate")
    out += train_rows(summaries)
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


def _loss_layout(config: dict) -> str:
    """How a bench_memory configuration computed lm_head + the loss: whole logits, row chunks (runs
    before the tiles, which record no chunk_classes) or tiles of rows x classes."""
    if not config["chunk_rows"]:
        return "whole logits"
    if config.get("chunk_classes"):
        return f"tiles of {config['chunk_rows']} x {config['chunk_classes']}"
    return f"chunks of {config['chunk_rows']} rows"


def memory_rows(folder: str) -> list:
    """bench_memory.json's breakdown, one row per configuration (MiB)."""
    bm = _load(folder, "bench_memory.json")
    if bm is None:
        return ["(bench/results/bench_memory.json not measured)"]
    parts = ("weights", "adapters_and_optimizer", "activations", "logits", "backward_transient", "rest")
    out = ["| configuration | " + " | ".join(p.replace("_", " ") for p in parts) +
           " | step peak RSS | lifetime peak RSS (load included) |", "|---" * (len(parts) + 3) + "|"]
    for r in bm["configs"]:
        chunk = _loss_layout(r)
        label = (f"{'QLoRA' if r['quantized'] else 'LoRA'}, {'checkpointing' if r['checkpointing'] else 'no checkpointing'}"
                 f", {chunk}" + (f", keep {r.get('keep_dequantized', 'recompute')}" if r["quantized"] else ""))
        out.append(f"| {label} | " + " | ".join(f"{r['parts_MiB'][p]:.0f}" for p in parts) +
                   f" | **{r['rss_peak_MiB']:.0f}** | {r['lifetime_rss_peak_MiB']:.0f} |")
    return out


def listed_train_runs(folder: str) -> list:
    """The run files named in ``folder``/goals_train_runs.txt (blank lines and # comments skipped),
    or ["compare_torch_train.json"] when there is no such list."""
    path = os.path.join(folder, RUN_LIST)
    if not os.path.exists(path):
        return ["compare_torch_train.json"]
    with open(path) as fh:
        names = [line.split("#", 1)[0].strip() for line in fh]
    return [name for name in names if name]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--train-runs", nargs="+", metavar="FILE",
                   help=f"compare_torch training runs of the same code, in --results: rows take their medians "
                        f"(default: the files listed in {RUN_LIST}, else compare_torch_train.json)")
    args = p.parse_args(argv)
    print("\n".join(rows(args.results, args.train_runs or listed_train_runs(args.results))))
    print()
    print("\n".join(memory_rows(args.results)))


if __name__ == "__main__":
    main()
