"""LoRA+ against plain LoRA: the same fine-tune with loraplus_lr_ratio 1 and 16, over several seeds.

A tiny Llama-style model is first trained from scratch on the 'sort' task (the base: it sorts digits
in ascending order). Each run then injects LoRA (r=8, alpha=16, all linear layers) and teaches it the
same prompts with the digits sorted in DESCENDING order, with AdamW at a base learning rate tuned
once for plain LoRA (ratio 1), evaluating the held-out loss every few steps.
Reported per (lr, ratio): the steps needed to reach a fixed eval loss, the final eval loss and the
final exact match, as medians over seeds; both ratios run at the tuned lr and at --also-lrs. The paper (arXiv 2402.12354) claims up to ~2x faster convergence.

Usage: python bench/bench_loraplus.py [--seeds 3] [--steps 300] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, median, table, write_json  # noqa: E402

from minilora.data import Batches, CharTokenizer, collate, encode_example, task_splits  # noqa: E402
from minilora.evaluate import exact_match  # noqa: E402
from minilora.lora import LoraConfig, get_lora_model  # noqa: E402
from minilora.models.transformer import Transformer, lm_loss  # noqa: E402
from minilora.optim import AdamW, create_loraplus_optimizer  # noqa: E402
from minilora.tensor import no_grad  # noqa: E402
from minilora.tiny import train_tiny  # noqa: E402
from minilora.train import TrainConfig, train  # noqa: E402


def descending(pairs):
    """The sort task's prompts with the answer reversed: 'sort 4913 =' -> ' 9431'."""
    return [(prompt, " " + completion.strip()[::-1]) for prompt, completion in pairs]


def eval_loss(model, encoded, pad_id) -> float:
    with no_grad():
        ids, labels = collate(encoded, pad_id)
        return float(lm_loss(model, ids, labels).item())


def fresh_copy(base):
    model = Transformer(base.config)
    model.load_state_dict(base.state_dict())
    return model


def finetune(base, ratio, lr, seed, steps, every, tok, train_set, eval_set):
    model = get_lora_model(fresh_copy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
                           seed=seed)
    encoded = [encode_example(tok, p, c, 63) for p, c in train_set]
    eval_encoded = [encode_example(tok, p, c, 63) for p, c in eval_set]
    optimizer = create_loraplus_optimizer(model, AdamW, lr=lr, loraplus_lr_ratio=ratio, weight_decay=0.0)
    curve = []

    def evaluate(step):
        curve.append((step + 1, eval_loss(model, eval_encoded, tok.pad_token_id)))
        return {"eval_loss": curve[-1][1]}
    train(model, optimizer, Batches(encoded, 32, tok.pad_token_id, seed=seed),
          TrainConfig(steps=steps, warmup_steps=steps // 20, eval_every=every, progress=False), evaluate=evaluate)
    accuracy = exact_match(model, tok, eval_set)["exact_match"]
    return curve, accuracy


def steps_to_reach(curve, target):
    return next((step for step, loss in curve if loss <= target), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=10, help="evaluate every N steps")
    p.add_argument("--base-steps", type=int, default=600, help="from-scratch steps of the base model")
    p.add_argument("--target-loss", type=float, default=0.3, help="the fixed eval loss to reach")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="base learning rates tried once for ratio 1")
    p.add_argument("--also-lrs", default="1e-3", help="further base lrs to compare both ratios at")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_loraplus.json"))
    args = p.parse_args(argv)
    tic = time.perf_counter()
    base = train_tiny(task="sort", steps=args.base_steps, progress=False)["model"]
    tok = CharTokenizer()
    train_set, eval_set = (descending(split) for split in task_splits("sort", n_train=2000, n_eval=100, seed=1))
    tuning = {}
    for lr in (float(x) for x in args.lrs.split(",")):
        curve, _ = finetune(base, 1.0, lr, 0, args.steps, args.every, tok, train_set, eval_set)
        tuning[lr] = curve[-1][1]
    lr = min(tuning, key=tuning.get)
    print(f"base lr tuned for plain LoRA (seed 0): {lr:g}  (final eval loss by lr: {tuning})")
    lrs = [lr] + [float(x) for x in args.also_lrs.split(",") if x and float(x) != lr]
    runs = []
    for base_lr in lrs:
        for ratio in (1.0, 16.0):
            for seed in range(args.seeds):
                curve, accuracy = finetune(base, ratio, base_lr, seed, args.steps, args.every, tok, train_set,
                                           eval_set)
                runs.append({"lr": base_lr, "ratio": ratio, "seed": seed, "final_eval_loss": curve[-1][1],
                             "steps_to_target": steps_to_reach(curve, args.target_loss), "exact_match": accuracy,
                             "curve": curve})
                print(f"lr {base_lr:g} ratio {ratio:>4g} seed {seed}: steps to eval loss {args.target_loss}: "
                      f"{runs[-1]['steps_to_target']}, final eval loss {curve[-1][1]:.4f}, exact match {accuracy:.0%}")
    summary = []
    for base_lr in lrs:
        for ratio in (1.0, 16.0):
            mine = [r for r in runs if r["ratio"] == ratio and r["lr"] == base_lr]
            reached = [r["steps_to_target"] for r in mine if r["steps_to_target"] is not None]
            summary.append({"lr": base_lr, "ratio": ratio, "seeds": len(mine), "reached": len(reached),
                            "median_steps_to_target": median(reached) if len(reached) * 2 > len(mine) else None,
                            "median_final_eval_loss": median([r["final_eval_loss"] for r in mine]),
                            "median_exact_match": median([r["exact_match"] for r in mine])})
    print(table(summary, list(summary[0])))
    speedups = {}
    for base_lr in lrs:
        plain, plus = (next(s for s in summary if s["lr"] == base_lr and s["ratio"] == r) for r in (1.0, 16.0))
        a, b = plain["median_steps_to_target"], plus["median_steps_to_target"]
        speedups[str(base_lr)] = a / b if a and b else None
        print(f"lr {base_lr:g}: speed-up to eval loss {args.target_loss} (median steps, ratio 1 / ratio 16): "
              f"{'not reached by both' if speedups[str(base_lr)] is None else f'{speedups[str(base_lr)]:.2f}x'}")
    result = {"machine": machine(), "args": vars(args), "lr": lr, "lr_tuning": tuning, "summary": summary,
              "speedup_steps": speedups, "runs": runs, "seconds": time.perf_counter() - tic}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
