"""Measurements shared by the experiments: perplexity, exact match, a training run, peak memory, time.

perplexity = exp(mean NLL over every held-out target token): windows (N, T + 1) are scored in
batches of equal shape, so the mean of batch means weighted by tokens is the mean over all tokens.
Peak memory of training = bytes of the model at rest (model_memory_report: float and 4-bit weights)
+ the peak of tracemalloc (which NumPy reports its buffers to) over ``memory_steps`` training steps
started from a fresh optimizer: activations, gradients and optimizer state.
"""
from __future__ import annotations

import math
import statistics
import time
import tracemalloc

from minilora import no_grad
from minilora.evaluate import exact_match
from minilora.models.transformer import lm_loss
from minilora.optim import AdamW, create_loraplus_optimizer
from minilora.quant import model_memory_report
from minilora.train import TrainConfig, train


def perplexity(model, windows, batch_size: int = 8) -> dict:
    """{"nll": mean NLL per token, "ppl": exp(nll), "tokens": count} over windows (N, T + 1)."""
    model.eval()
    total, count = 0.0, 0
    with no_grad():
        for start in range(0, len(windows), batch_size):
            rows = windows[start:start + batch_size]
            n = rows[:, 1:].size
            total += float(lm_loss(model, rows[:, :-1], rows[:, 1:]).item()) * n
            count += n
    nll = total / count
    return {"nll": nll, "ppl": math.exp(nll), "tokens": count}


def task_accuracy(model, tokenizer, eval_set) -> float:
    """Exact match of greedy completions (minilora.evaluate.exact_match)."""
    model.eval()
    return float(exact_match(model, tokenizer, eval_set)["exact_match"])


def trainable_count(model) -> int:
    return int(sum(p.size for p in model.parameters() if p.requires_grad))


def make_optimizer(model, lr: float, loraplus_ratio: float | None = None):
    """AdamW without weight decay over the trainable parameters; LoRA+ groups when a ratio is given."""
    if loraplus_ratio is not None:
        return create_loraplus_optimizer(model, AdamW, lr=lr, loraplus_lr_ratio=loraplus_ratio, weight_decay=0.0)
    return AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def train_run(model, batches, steps: int, lr: float, loraplus_ratio: float | None = None,
              max_grad_norm: float = 1.0, warmup_fraction: float = 0.1) -> dict:
    """Train with AdamW (cosine schedule, linear warm-up over ``warmup_fraction`` of the steps).

    Returns {"losses": per-step training loss, "step_s": mean seconds per step, "seconds", "skipped_steps"}.
    """
    optimizer = make_optimizer(model, lr, loraplus_ratio)
    config = TrainConfig(steps=steps, warmup_steps=int(steps * warmup_fraction), schedule="cosine",
                         max_grad_norm=max_grad_norm, progress=False, log_every=10 ** 9)
    tic = time.perf_counter()
    history = train(model, optimizer, batches, config, log=lambda message: None)
    seconds = time.perf_counter() - tic
    return {"losses": [r["loss"] for r in history.steps], "step_s": seconds / steps, "seconds": seconds,
            "skipped_steps": len(history.bad_steps)}


def peak_training_memory(model, batches, lr: float = 1e-4, loraplus_ratio: float | None = None,
                         memory_steps: int = 2) -> dict:
    """Bytes at rest + traced peak of ``memory_steps`` steps (fresh optimizer). Changes the model."""
    at_rest = model_memory_report(model)["total_bytes"]
    optimizer = make_optimizer(model, lr, loraplus_ratio)
    config = TrainConfig(steps=memory_steps, warmup_steps=0, schedule="constant", max_grad_norm=1.0,
                         progress=False, log_every=10 ** 9)
    tracemalloc.start()
    try:
        train(model, optimizer, batches, config, log=lambda message: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"weights_mib": at_rest / 2 ** 20, "training_peak_mib": peak / 2 ** 20,
            "peak_mib": (at_rest + peak) / 2 ** 20}


def smoothed(losses, window: int = 5) -> list:
    """Trailing mean over ``window`` steps (the first steps average what they have)."""
    return [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(losses))]


def steps_to_target(losses, target: float, window: int = 5):
    """First step (1-based) whose smoothed loss is <= target; None if never."""
    for i, value in enumerate(smoothed(losses, window)):
        if value <= target:
            return i + 1
    return None


def spread(values) -> dict:
    """mean, sample std (0 for one value), min, max, n."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}
