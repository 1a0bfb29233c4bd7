"""The training loop: batches in, a history out; progress, evaluation, checkpoints, fault handling.

One optimizer step over K = grad_accumulation_steps micro-batches m_1..m_K (``batches(step*K + k)``):

    lr <- schedule(step)
    N = sum_k n_k, the trained (label != -100) tokens of all K micro-batches
    for each k:  backward of  CE_mean(m_k) * n_k / N   [+ model.regularization_loss() once]
    -> the gradient of  (1/N) sum over all N tokens of -log p(token),  the same loss (and gradient, to
       float rounding) as one batch of K*b examples: a token-weighted mean, not a mean of K means
    if the loss or the gradient norm is not finite the step is skipped (parameters untouched, counted)
    clip;  optimizer.step();  model.update_and_allocate(step) when the model has it (AdaLoRA prunes
    its ranks there);  zero_grad

The step is two functions, ``accumulate_gradients`` (forward and backward) and ``apply_update``
(check, clip, optimizer step), so work on the gradients between them (a sum over processes) has one
place to go. Batches come from ``batches(index)`` so the data order depends on the index alone, which
makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from .data.batching import IGNORE_INDEX
from .errors import MiniloraError
from .optim.clip import clip_grad_norm, grad_norm
from .optim.schedule import LRScheduler
from .models.transformer import lm_loss


class TrainingStopped(MiniloraError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient (the CLI reports it, no traceback)."""


@dataclass
class TrainConfig:
    steps: int = 200
    warmup_steps: int = 0
    schedule: str = "cosine"          # "cosine" | "linear" | "constant"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    eval_every: int = 0               # 0: evaluate only at the end
    log_every: int = 10
    save_every: int = 0               # 0: no periodic checkpoint
    max_bad_steps: int = 10           # consecutive non-finite steps before giving up
    grad_accumulation_steps: int = 1  # micro-batches per optimizer step
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "warmup_steps", "eval_every", "log_every", "save_every", "max_bad_steps",
                     "grad_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        if self.steps == 0:
            raise ValueError("TrainConfig.steps must be >= 1")
        if self.grad_accumulation_steps == 0:
            raise ValueError("TrainConfig.grad_accumulation_steps must be >= 1")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")


@dataclass
class History:
    steps: list = field(default_factory=list)   # {"step", "loss", "lr", "tokens_per_s", "grad_norm"}
    evals: list = field(default_factory=list)   # {"step", ...metrics}
    bad_steps: list = field(default_factory=list)  # steps skipped for a non-finite loss or gradient

    def to_dict(self) -> dict:
        return asdict(self)


def train(model, optimizer, batches, config: TrainConfig, *, start_step: int = 0, history: History | None = None,
          evaluate=None, save_checkpoint=None, log=None, data_parallel=None) -> History:
    """Run steps start_step .. config.steps - 1 and return the history.

    batches(index) -> (ids, labels) host int arrays (b, T); step s uses indices s*K .. s*K + K - 1
    (K = config.grad_accumulation_steps); evaluate(step) -> dict of metrics ("val_loss" is shown);
    save_checkpoint(step, history) writes a checkpoint that resumes at step + 1;
    log(message) receives progress lines when the progress bar is off;
    data_parallel: a minilora.distributed.DataParallel when several processes train together (each
    takes its rows of every batch; gradients and loss are summed over them; see its module).
    """
    history = history or History()
    trainable = model.trainable_parameters()
    if not trainable:
        raise ValueError("train: the model has no trainable parameters")
    scheduler = LRScheduler(optimizer, config.steps, config.warmup_steps, config.schedule, config.min_lr_ratio)
    bar = _progress(config, start_step)
    k = config.grad_accumulation_steps
    consecutive_bad = 0
    model.train()
    for step in range(start_step, config.steps):
        tic = time.perf_counter()
        lr = optimizer.param_groups[0]["initial_lr"] * scheduler.set_step(step)
        micro_batches = [batches(step * k + i) for i in range(k)]
        if data_parallel is None:
            loss_value, tokens = accumulate_gradients(model, micro_batches)
        else:  # this rank's rows; gradients and loss summed over the ranks / the global token count
            loss_value, tokens = data_parallel.accumulate_gradients(model, micro_batches, trainable)
        norm = apply_update(model, optimizer, trainable, step, loss_value, config.max_grad_norm)
        if norm is None:  # a non-finite loss or gradient: skipped
            history.bad_steps.append(step)
            consecutive_bad += 1
            if consecutive_bad >= config.max_bad_steps:
                raise TrainingStopped(f"{consecutive_bad} consecutive steps had a non-finite loss or gradient "
                                      f"(last at step {step}); parameters are those of the last good step")
            continue
        consecutive_bad = 0
        seconds = time.perf_counter() - tic
        size = sum(int(ids.size) for ids, _ in micro_batches)
        record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm,
                  "tokens_per_s": size / seconds if seconds > 0 else 0.0, "trained_tokens": tokens}
        if data_parallel is not None:
            data_parallel.after_step(model, record)
        history.steps.append(record)
        last = step == config.steps - 1
        if evaluate is not None and ((config.eval_every and (step + 1) % config.eval_every == 0) or last):
            history.evals.append({"step": step, **evaluate(step)})
            model.train()
        _report(bar, log, record, history, config)
        if save_checkpoint is not None and ((config.save_every and (step + 1) % config.save_every == 0) or last):
            save_checkpoint(step, history)
    if bar is not None:
        bar.close()
    model.eval()
    return history


def trained_tokens(labels) -> int:
    """Positions that count in the loss: labels != -100."""
    return int((labels != IGNORE_INDEX).sum())


def accumulate_gradients(model, micro_batches, divide_by: int | None = None,
                         regularizer_weight: float = 1.0) -> tuple[float, int]:
    """Forward and backward of every micro-batch; returns (loss, N) and leaves the gradients in p.grad.

    loss = (1/N) sum over the N trained tokens of all micro-batches of -log p(token): micro-batch k
    contributes CE_mean(k) * n_k / N, so the gradient is that of one batch holding them all.
    divide_by: what the tokens' losses are divided by instead of N (a data-parallel rank passes 1 and
    the sum over the ranks is divided by the global N); regularizer_weight scales the regularizer.
    """
    counts = [trained_tokens(labels) for _, labels in micro_batches]
    total = sum(counts)
    divide_by = max(total, 1) if divide_by is None else divide_by
    regularizer = getattr(model, "regularization_loss", None)
    loss_value = 0.0
    for i, ((ids, labels), n) in enumerate(zip(micro_batches, counts)):
        loss = lm_loss(model, ids, labels) * (n / divide_by)
        loss_value += float(loss.item())
        last = regularizer is not None and i == len(counts) - 1
        objective = loss + regularizer() * regularizer_weight if last else loss
        objective.backward()
    return loss_value, total


def apply_update(model, optimizer, trainable, step: int, loss_value: float, max_grad_norm) -> float | None:
    """Clip and apply the accumulated gradients; returns their norm, or None (nothing changed, gradients
    dropped) when the loss or the norm is not finite."""
    norm = grad_norm(trainable)
    if not (math.isfinite(loss_value) and math.isfinite(norm)):
        optimizer.zero_grad()
        return None
    if max_grad_norm is not None:
        clip_grad_norm(trainable, max_grad_norm, norm=norm)
    optimizer.step()
    allocate = getattr(model, "update_and_allocate", None)
    if allocate is not None:
        allocate(step)
    optimizer.zero_grad()
    return norm


def _progress(config: TrainConfig, start_step: int):
    if not config.progress:
        return None
    return tqdm(total=config.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)


def _report(bar, log, record, history, config):
    """The bar's postfix, or a line every log_every steps and after each evaluation."""
    postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}",
               "tok/s": f"{record['tokens_per_s']:.0f}"}
    evaluated = bool(history.evals) and history.evals[-1]["step"] == record["step"]
    if (evaluated or bar is not None) and history.evals and "val_loss" in history.evals[-1]:  # a line: fresh only
        postfix["val_loss"] = f"{history.evals[-1]['val_loss']:.4f}"
    if history.bad_steps:
        postfix["skipped"] = len(history.bad_steps)
    if bar is not None:
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
    elif log is not None and ((config.log_every and (record["step"] + 1) % config.log_every == 0) or evaluated):
        log(f"step {record['step'] + 1}/{config.steps} " + " ".join(f"{k}={v}" for k, v in postfix.items()))
