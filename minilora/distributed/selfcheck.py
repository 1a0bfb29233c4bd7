"""Exactness check: N ranks with batch b/N each train the same adapters as one process with batch b.

    mpiexec -n 3 python -m minilora.distributed.selfcheck [--steps 6] [--batch-size 6] [--json report.json]

For each method (LoRA, LoRA+, QLoRA, AdaLoRA) a tiny Llama-style model in float64 trains K steps
data-parallel on the 'dates' task; then rank 0 trains the same model as one process on the whole
batches and compares every trainable parameter, per tensor: rel = max|a - b| / max|b|. The ranks add
their shards' gradients in another order than one process does, so the two agree to rounding, not
bit for bit; the check asks rel <= 1e-12. It also reports each rank's hash of the adapters and of
AdaLoRA's masks (equal on every rank, or the run stops with RankMismatchError).
Use it to check an MPI installation or a cluster before a long run. Exit status 0 when all match.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .. import backend
from .data_parallel import start_data_parallel
from .fingerprint import adalora_digest

METHODS = ("lora", "loraplus", "qlora", "adalora")
TOLERANCE = 1e-12
TINY = dict(style="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def build(method: str, steps: int, batch_size: int, seed: int = 0, accumulation: int = 1):
    """(model, optimizer, batches, TrainConfig) of a float64 tiny-model run with ``method``; each step
    ``accumulation`` micro-batches of batch_size."""
    from ..data import Batches, CharTokenizer, encode_example, task_splits
    from ..finetune import adapt, make_optimizer
    from ..finetune_config import FinetuneConfig
    from ..models import ModelConfig, Transformer
    from ..train import TrainConfig
    tokenizer = CharTokenizer()
    cfg = FinetuneConfig(model="tiny", method="lora" if method == "loraplus" else method, r=4, alpha=8.0,
                         target_r=2, steps=steps, batch_size=batch_size, lr=2e-2, seed=seed,
                         loraplus_ratio=16.0 if method == "loraplus" else None)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY), dtype="float64", seed=seed)
    model = adapt(model, cfg)
    optimizer = make_optimizer(model, cfg)
    train_set, _ = task_splits("dates", n_train=64, n_eval=1, seed=seed)
    encoded = [encode_example(tokenizer, p, c, 64) for p, c in train_set]
    batches = Batches(encoded, batch_size, tokenizer.pad_token_id or 0, seed=seed)
    config = TrainConfig(steps=steps, warmup_steps=1, max_grad_norm=0.3 if method == "qlora" else 1.0,
                         grad_accumulation_steps=accumulation, progress=False)
    return model, optimizer, batches, config


def trainable_arrays(model) -> dict:
    return {name: np.array(backend.to_numpy(p.data), copy=True) for name, p in model.named_parameters()
            if p.requires_grad}


def relative_difference(got: dict, want: dict) -> float:
    """max over tensors of max|got - want| / max|want| (0/0 counts as 0)."""
    worst = 0.0
    for name, w in want.items():
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        diff = float(np.max(np.abs(got[name] - w))) if w.size else 0.0
        worst = max(worst, diff / scale if scale else diff)
    return worst


def run(methods=METHODS, steps: int = 6, batch_size: int = 6, backend_name: str = "numpy",
        accumulation: int = 1) -> dict | None:
    """Train every method data-parallel and (rank 0) alone; the report on rank 0, None elsewhere.

    backend_name "cupy": the gradients are reduced on the GPUs (NCCL, or a CUDA-aware MPI)."""
    from ..train import train
    dp = start_data_parallel("mpi", batch_size=batch_size, backend=backend_name)
    results = {}
    with backend.use_backend(backend_name):
        for method in methods:
            model, optimizer, batches, config = build(method, steps, batch_size, accumulation=accumulation)
            start = trainable_arrays(model)
            dp.check_identical(model, optimizer, "at start")
            history = train(model, optimizer, dp.shard(batches), config, data_parallel=dp)
            digests = dp.check_identical(model, optimizer, "after training")
            entry = {"final": trainable_arrays(model), "start": start, "digests": digests,
                     "losses": [r["loss"] for r in history.steps]}
            if method == "adalora":
                entry["mask_digests"] = [d.hex() for d in dp.communicator.allgather_bytes(adalora_digest(model))]
                entry["kept_ranks"] = model.kept_ranks()
            results[method] = entry
        if not dp.is_main:
            dp.finish()  # rank 0 computes the single-process reference meanwhile
            return None
        report = {"ranks": dp.size, "steps": steps, "batch_size": batch_size, "accumulation": accumulation,
                  "tolerance": TOLERANCE,
                  "backend": backend_name, "reducer": type(dp.reducer).__name__,
                  "mask_checks": dp.mask_checks, "methods": {}}
        for method, entry in results.items():
            model, optimizer, batches, config = build(method, steps, batch_size, accumulation=accumulation)
            history = train(model, optimizer, batches, config)
            alone = trainable_arrays(model)
            row = {"max_relative_difference": relative_difference(entry["final"], alone),
                   "moved": relative_difference(alone, entry["start"]),
                   "losses_data_parallel": entry["losses"], "losses_one_process": [r["loss"] for r in history.steps],
                   "digests": entry["digests"]}
            for key in ("mask_digests", "kept_ranks"):
                if key in entry:
                    row[key] = entry[key]
            row["ok"] = row["max_relative_difference"] <= TOLERANCE
            report["methods"][method] = row
        dp.finish()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=6, help="the global batch (divides by the ranks)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per step (gradient accumulation)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "array_api_strict"])
    parser.add_argument("--json", help="rank 0 writes the report here")
    args = parser.parse_args(argv)
    report = run([m for m in args.methods.split(",") if m], args.steps, args.batch_size, args.backend,
                 args.accumulation)
    if report is None:
        return 0
    print(f"{report['ranks']} ranks x batch {args.batch_size // report['ranks']} against 1 process x batch "
          f"{args.batch_size}, {args.accumulation} micro-batch(es) per step, {args.steps} steps, float64, "
          f"{args.backend} ({report['reducer']})")
    for method, row in report["methods"].items():
        print(f"  {method:9s} max relative difference {row['max_relative_difference']:.2e} "
              f"(parameters moved {row['moved']:.2e})  {'ok' if row['ok'] else 'MISMATCH'}")
    if args.json:
        from ..io.atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps(report, indent=1))
    return 0 if all(row["ok"] for row in report["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
