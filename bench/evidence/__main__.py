"""Run the evidence experiments: ``python -m bench.evidence [--quick] [--out DIR] [--only NAME ...]``.

Order: the cheap, training-free measurements first, then the training experiments. ``--quick`` runs
each on the tiny model in seconds (what `make evidence-quick` and the test suite do).
"""
from __future__ import annotations

import argparse
import importlib
import time

EXPERIMENTS = ("merge_latency", "qlora_dtypes", "intrinsic_rank", "rank_sweep", "which_weights", "loraplus_grid",
               "qlora_vs_lora", "adalora_budget", "summary_table")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=None)
    args = parser.parse_args(argv)
    for name in args.only or EXPERIMENTS:
        tic = time.perf_counter()
        module = importlib.import_module(f"bench.evidence.{name}")
        module.main((["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []))
        print(f"== {name}: {time.perf_counter() - tic:.1f} s", flush=True)


if __name__ == "__main__":
    main()
