"""DoRA, PiSSA, OLoRA and LoftQ against their plain counterparts: the same fine-tune over several seeds.

The harness of bench_loraplus.py: a tiny Llama-style model trained from scratch on 'sort' is the
base; each run injects adapters (r=8, alpha=16, all linear layers) and teaches it the same prompts
with the digits in DESCENDING order, with AdamW at lr 1e-2 (the lr tuned for plain LoRA in
bench_loraplus.py), evaluating the held-out loss every few steps. The seed changes the adapters' random
init (where there is one) and the batch order.

    float base:  lora (default init) | dora | pissa | olora           eval loss at 0 and after N steps
    4-bit base:  qlora (default init) | qlora + loftq (1 and 5 iters) eval loss gap to the float base at
                                                                       step 0, and eval loss after N steps

Usage: python bench/bench_variants.py [--seeds 3] [--steps 100] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loraplus import descending, eval_loss, fresh_copy  # noqa: E402
from common import machine, median, table, write_json  # noqa: E402

from minilora.data import Batches, CharTokenizer, encode_example, task_splits  # noqa: E402
from minilora.lora import LoraConfig, get_lora_model  # noqa: E402
from minilora.optim import AdamW  # noqa: E402
from minilora.quant import quantize_model  # noqa: E402
from minilora.tiny import train_tiny  # noqa: E402
from minilora.train import TrainConfig, train  # noqa: E402

VARIANTS = {  # name: (quantized base, LoraConfig options)
    "lora": (False, {}), "dora": (False, {"use_dora": True}),
    "pissa": (False, {"init_lora_weights": "pissa"}), "olora": (False, {"init_lora_weights": "olora"}),
    "qlora": (True, {}), "qlora_loftq1": (True, {"init_lora_weights": "loftq", "loftq_config": {"loftq_iter": 1}}),
    "qlora_loftq5": (True, {"init_lora_weights": "loftq", "loftq_config": {"loftq_iter": 5}}),
}


def adapted(base, variant, seed):
    quantized, options = VARIANTS[variant]
    model = fresh_copy(base)
    if quantized:  # LoftQ quantizes its targets itself, from the float weights
        quantize_model(model, skip=".*" if "init_lora_weights" in options else ("lm_head",))
    return get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", **options), seed=seed)


def finetune(base, variant, seed, steps, every, lr, tok, train_set, eval_set):
    model = adapted(base, variant, seed)
    encoded = [encode_example(tok, p, c, 63) for p, c in train_set]
    eval_encoded = [encode_example(tok, p, c, 63) for p, c in eval_set]
    curve = [(0, eval_loss(model, eval_encoded, tok.pad_token_id))]
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

    def evaluate(step):
        curve.append((step + 1, eval_loss(model, eval_encoded, tok.pad_token_id)))
        return {"eval_loss": curve[-1][1]}
    train(model, optimizer, Batches(encoded, 32, tok.pad_token_id, seed=seed),
          TrainConfig(steps=steps, warmup_steps=steps // 20, eval_every=every, progress=False), evaluate=evaluate)
    return curve


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=20, help="evaluate every N steps")
    p.add_argument("--base-steps", type=int, default=600, help="from-scratch steps of the base model")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_variants.json"))
    args = p.parse_args(argv)
    tic = time.perf_counter()
    load_before = os.getloadavg()
    base = train_tiny(task="sort", steps=args.base_steps, progress=False)["model"]
    tok = CharTokenizer()
    train_set, eval_set = (descending(split) for split in task_splits("sort", n_train=2000, n_eval=100, seed=1))
    float_loss = eval_loss(base, [encode_example(tok, q, c, 63) for q, c in eval_set], tok.pad_token_id)
    print(f"float base, eval loss on the descending task before any adapter: {float_loss:.4f}")
    runs = []
    for seed in range(args.seeds):  # seed-major: a partial run still compares every variant
        for variant in args.variants.split(","):
            curve = finetune(base, variant, seed, args.steps, args.every, args.lr, tok, train_set, eval_set)
            runs.append({"variant": variant, "seed": seed, "initial_eval_loss": curve[0][1],
                         "final_eval_loss": curve[-1][1], "curve": curve})
            print(f"{variant:>13} seed {seed}: eval loss at step 0 {curve[0][1]:.4f} "
                  f"(gap to float {curve[0][1] - float_loss:+.4f}), after {args.steps} steps {curve[-1][1]:.4f}",
                  flush=True)
            report(args, float_loss, runs, load_before, tic, complete=False)  # partial results survive a kill
    report(args, float_loss, runs, load_before, tic, complete=True)


def report(args, float_loss, runs, load_before, tic, complete):
    summary = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        summary.append({"variant": variant, "seeds": len(mine),
                        "median_abs_gap_to_float_at_0": median([abs(r["initial_eval_loss"] - float_loss) for r in mine]),
                        "median_final_eval_loss": median([r["final_eval_loss"] for r in mine]),
                        "min_final": min(r["final_eval_loss"] for r in mine),
                        "max_final": max(r["final_eval_loss"] for r in mine)})
    load = {"before": load_before, "after": os.getloadavg()}
    if complete:
        print(table(summary, list(summary[0])))
        print(f"load average before {load_before}, after {load['after']}")
    write_json(args.json, {"machine": machine(), "args": vars(args), "complete": complete,
                           "float_base_eval_loss": float_loss, "summary": summary, "runs": runs,
                           "load_average": load, "seconds": time.perf_counter() - tic})


if __name__ == "__main__":
    main()
