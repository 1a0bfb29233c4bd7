"""DoRA, PiSSA, OLoRA and LoftQ on the demo task: SmolLM2-135M learning `dates`, several seeds.

Each run is `minilora finetune` with the demo's settings (LoRA r=8, alpha 16 on q_proj/v_proj,
batch 8, lr 2e-3, cosine) shortened to --steps, so the variants are still apart when it ends;
one flag changes per variant. The seed changes the adapters' random init (where there is one)
and the batch order. Reported: the validation loss (mean NLL per completion token over the
50 held-out prompts) before training and at the end, and exact match at the end.

    lora | dora (--dora) | pissa (--init pissa) | olora (--init olora)        float32 base
    qlora | qlora_loftq (--method qlora --init loftq)                         4-bit NF4 base

Usage: python bench/bench_variants_demo.py [--seeds 3] [--steps 12] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, median, table, write_json  # noqa: E402

from minilora.finetune import run_finetune  # noqa: E402
from minilora.finetune_config import FinetuneConfig  # noqa: E402

VARIANTS = {"lora": {}, "dora": {"dora": True}, "pissa": {"init": "pissa"}, "olora": {"init": "olora"},
            "qlora": {"method": "qlora"}, "qlora_loftq": {"method": "qlora", "init": "loftq"}}


def one_run(variant: str, seed: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = FinetuneConfig(seed=seed, steps=steps, eval_every=0, progress=False, out=out, **VARIANTS[variant])
        summary = run_finetune(cfg, log=lambda *a, **k: None)
    return {"variant": variant, "seed": seed, "val_loss_before": summary["val_loss"]["before"],
            "val_loss_final": summary["val_loss"]["final"]["val_loss"],
            "exact_match_final": summary["after"]["exact_match"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_variants_demo.json"))
    args = p.parse_args()
    tic, load = time.perf_counter(), os.getloadavg()
    runs = []
    for seed in range(args.seeds):
        for variant in args.variants.split(","):
            runs.append(one_run(variant, seed, args.steps))
            r = runs[-1]
            print(f"{variant:>12} seed {seed}: val loss {r['val_loss_before']:.4f} -> {r['val_loss_final']:.4f}, "
                  f"exact match {r['exact_match_final']:.2f}", flush=True)
    summary = []
    for variant in args.variants.split(","):
        mine = [r for r in runs if r["variant"] == variant]
        finals = [r["val_loss_final"] for r in mine]
        summary.append({"variant": variant, "seeds": len(mine), "val_loss_before": mine[0]["val_loss_before"],
                        "median_val_loss_final": median(finals), "min": min(finals), "max": max(finals),
                        "median_exact_match": median([r["exact_match_final"] for r in mine])})
    print(table(summary, ["variant", "seeds", "val_loss_before", "median_val_loss_final", "min", "max",
                          "median_exact_match"]))
    write_json(args.json, {"machine": machine(), "args": vars(args), "summary": summary, "runs": runs,
                           "load_average": {"before": load, "after": os.getloadavg()},
                           "seconds": time.perf_counter() - tic})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
