"""The ``minilora`` command (also ``python -m minilora``): argument parsing only; work lives in the library."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_tiny(args) -> int:
    from .tiny import train_tiny
    print(f"Training a tiny Llama-style transformer from scratch on the '{args.task}' task "
          f"({args.steps} steps, batch {args.batch_size}, lr {args.lr})")
    result = train_tiny(task=args.task, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, progress=not args.no_progress, log=print)
    steps = result["history"].steps
    before, after = result["before"], result["after"]
    print(f"loss: first step {steps[0]['loss']:.4f} -> last step {steps[-1]['loss']:.4f}")
    print(f"exact match on {after['n']} held-out prompts: before {before['exact_match']:.1%} -> "
          f"after {after['exact_match']:.1%}")
    for sample in after["samples"]:
        print(f"  {sample['prompt']!r} -> {sample['got']!r} (expected {sample['expected']!r})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"before": before, "after": after, "history": result["history"].to_dict()}, f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilora", description=(
        "Parameter-efficient fine-tuning (LoRA, QLoRA, LoRA+, AdaLoRA) from scratch on NumPy."))
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="train a small transformer from scratch on a generated task")
    tiny.add_argument("--task", default="sort", help="sort | reverse | dates | units (default: sort)")
    tiny.add_argument("--steps", type=int, default=600)
    tiny.add_argument("--batch-size", type=int, default=64)
    tiny.add_argument("--lr", type=float, default=3e-3)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--json", help="write before/after metrics and the history to this file")
    tiny.add_argument("--no-progress", action="store_true", help="print lines instead of a progress bar")
    tiny.set_defaults(func=_cmd_tiny)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
