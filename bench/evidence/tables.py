"""Markdown tables of the evidence results, for docs/evidence.md: ``python -m bench.evidence.tables [DIR]``.

Reads every <experiment>.json present in DIR (default bench/results/evidence) and prints one table
per experiment (mean +- sample std over seeds, n = seeds), with the run's date, load and wall time.
"""
from __future__ import annotations

import json
import os
import sys

from .measure import spread
from .report import RESULTS
from .runs import by_label
from .setup import TINY


def fmt(stats: dict, digits: int = 3) -> str:
    if stats["n"] == 0:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" +- {stats['std']:.{digits}f}" if stats["n"] > 1 else "") + f" (n={stats['n']})"


def context(data: dict) -> str:
    load = ", ".join(f"{x:.1f}" for x in data["load_average_before"])
    return (f"_{data['date']}, {data['machine']['cpu_count']} CPUs, load average before {load}, "
            f"wall {data['wall_seconds'] / 60:.1f} min"
            + (f", CPU {data['cpu_seconds'] / 60:.1f} min" if "cpu_seconds" in data else "")
            + f"{'' if data.get('complete', True) else ', INCOMPLETE'}_")


def training_table(data: dict) -> list:
    rows = data["rows"]
    base = rows[0]
    lines = ["| setting | trainable | held-out ppl | dates exact match |", "|---|---|---|---|",
             f"| base model | 0 | {base['ppl']:.3f} | {base.get('exact_match', '-')} |"]
    ppl, em = by_label(rows, "text", "ppl"), by_label(rows, "task", "exact_match")
    trainable = {r["label"]: r["text"]["trainable"] for r in rows if "text" in r}
    for label in trainable:
        lines.append(f"| {label} | {trainable[label]:,} | {fmt(spread(ppl[label]))} | "
                     f"{fmt(spread(em.get(label, [])), 2)} |")
    return lines


def merge_latency(data: dict) -> list:
    e, m, r = data["exactness"], data["medians"], data["ratio_to_base"]
    lines = ["| model | decode ms/token (median) | x base | prefill 8x%d ms (median) | x base | held-out ppl |"
             % data["prefill_shape"][1], "|---|---|---|---|---|---|"]
    for name in m:
        lines.append(f"| {name} | {1e3 * m[name]['decode_s_per_token']:.2f} | {r[name]['decode_s_per_token']:.3f} | "
                     f"{1e3 * m[name]['prefill_s']:.1f} | {r[name]['prefill_s']:.3f} | "
                     + (f"{e['ppl'][name]:.4f} |" if "ppl" in e else "- |"))
    lines.append("")
    lines.append(f"merged vs unmerged logits: max |diff| {e['max_abs_diff']:.3g}, mean |diff| {e['mean_abs_diff']:.3g} "
                 f"(logits up to {e['logit_scale_max_abs']:.3g}; the adapter moves them by up to "
                 f"{e['adapter_changes_logits_by_max']:.3g}), argmax agreement {e['argmax_agreement']:.4f}")
    return lines


def qlora_dtypes(data: dict) -> list:
    lines = ["| data type | double quant | held-out ppl | mean abs error | rel. Frobenius error | bits/param |",
             "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        dq = "-" if r["double_quant"] is None else ("yes" if r["double_quant"] else "no")
        lines.append(f"| {r['dtype']} | {dq} | {r['ppl']:.3f} | {r['mean_abs_error']:.3e} | "
                     f"{r['relative_frobenius_error']:.4f} | {r['bits_per_param']:.4f} |")
    return lines


def intrinsic_rank(data: dict) -> list:
    lines = ["| run | trainable | held-out ppl | peak training memory MiB |", "|---|---|---|---|"]
    for r in ("8", "64"):
        lines.append(f"| LoRA r={r} q,v | {data['lora'][r]['trainable']:,} | {data['lora'][r]['ppl']:.3f} | "
                     + (f"{data['memory']['lora_r8']['peak_mib']:.0f} |" if r == "8" else "- |"))
    lines.append(f"| full fine-tune q,v | {data['full']['trainable']:,} | {data['full']['ppl']:.3f} | "
                 f"{data['memory']['full_qv']['peak_mib']:.0f} |")
    lines += ["", "| matrix | top-8 energy, full dW | top-8 energy, LoRA r=8 dW | A: phi(1,1) | phi(8,8) | phi(8,64) "
              "| B: phi(1,1) | phi(8,8) | phi(8,64) | A moved, r=8 / r=64 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in data["spectra"].items():
        phi, phi_b = data["phi"][name], data["phi_b"][name]
        moved = " / ".join(f"{data['a_moved'][f'r={r} {name}']:.2f}" for r in (8, 64))
        lines.append(f"| {name} | {s['full']['energy_top']:.3f} | {s['lora_r8']['energy_top']:.3f} | "
                     f"{phi[0][0]:.3f} | {phi[7][7]:.3f} | {phi[7][-1]:.3f} | "
                     f"{phi_b[0][0]:.3f} | {phi_b[7][7]:.3f} | {phi_b[7][-1]:.3f} | {moved} |")
    # two random subspaces of dimensions i <= j in R^d: E[phi(i, j)] = j / d (d: A's d_in, B's d_out)
    hidden = 576 if data["setup"]["model"].startswith("SmolLM2") else TINY["hidden_size"]
    kv = hidden // 3 if data["setup"]["model"].startswith("SmolLM2") else hidden // 2  # v_proj's d_out
    for label, d_out in (("q_proj", hidden), ("v_proj", kv)):
        lines.append(f"| random subspaces, {label} (expected) | - | - | {1 / hidden:.4f} | {8 / hidden:.4f} | "
                     f"{64 / hidden:.4f} | {1 / d_out:.4f} | {8 / d_out:.4f} | {min(64, d_out) / d_out:.4f} | - |")
    return lines


def summary_table(data: dict) -> list:
    lines = ["| method | lr | trainable | peak training memory MiB | s/step | held-out ppl |", "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if r["method"] == "base":
            lines.append(f"| base model | - | 0 | - | - | {r['ppl']:.3f} |")
        else:
            lines.append(f"| {r['method']} | {r.get('lr', data['lr']):g} | {r['trainable']:,} | {r['peak_mib']:.0f} | "
                         f"{r['step_s']:.2f} | {r['ppl']:.3f} |")
    return lines


SPECIAL = {"merge_latency": merge_latency, "qlora_dtypes": qlora_dtypes, "intrinsic_rank": intrinsic_rank,
           "summary_table": summary_table}


def main(argv=None) -> None:
    folder = (argv or sys.argv[1:] or [RESULTS])[0]
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json") or "_part_" in name:  # parts of a grid: their combined file is shown
            continue
        with open(os.path.join(folder, name)) as f:
            data = json.load(f)
        experiment = data.get("experiment", name[:-5])
        print(f"### {experiment}\n\n{context(data)}\n")
        print("\n".join(SPECIAL.get(experiment, training_table)(data)) + "\n")


if __name__ == "__main__":
    main()
