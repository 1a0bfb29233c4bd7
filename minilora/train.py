"""The training loop: batches in, a history out; progress, evaluation, checkpoints, fault handling.

One step:  lr <- schedule(step);  loss = CE(model(ids), labels) [+ model.regularization_loss()];
backward;  if the loss or the gradient norm is not finite the step is skipped (parameters untouched,
counted);  clip;  optimizer.step();  model.update_and_allocate(step) when the model has it (AdaLoRA
prunes its ranks there);  zero_grad.  Batches come from ``batches(step)`` so the data order depends on
the step alone, which makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

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
    schedule: str = "cosine"          # "cosine" | "constant"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    eval_every: int = 0               # 0: evaluate only at the end
    log_every: int = 10
    save_every: int = 0               # 0: no periodic checkpoint
    max_bad_steps: int = 10           # consecutive non-finite steps before giving up
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "warmup_steps", "eval_every", "log_every", "save_every", "max_bad_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        if self.steps == 0:
            raise ValueError("TrainConfig.steps must be >= 1")
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

    batches(step) -> (ids, labels) host int arrays (B, T); evaluate(step) -> dict of metrics;
    save_checkpoint(step, history) writes a checkpoint that resumes at step + 1;
    log(message) receives progress lines when the progress bar is off;
    data_parallel: a minilora.distributed.DataParallel when several processes train together (it
    weights this rank's loss, all-reduces the gradients and checks AdaLoRA's masks; see its module).
    """
    history = history or History()
    trainable = model.trainable_parameters()
    if not trainable:
        raise ValueError("train: the model has no trainable parameters")
    scheduler = LRScheduler(optimizer, config.steps, config.warmup_steps, config.schedule, config.min_lr_ratio)
    bar = _progress(config, start_step)
    consecutive_bad = 0
    model.train()
    for step in range(start_step, config.steps):
        tic = time.perf_counter()
        ids, labels = batches(step)
        lr = optimizer.param_groups[0]["initial_lr"] * scheduler.set_step(step)
        loss = lm_loss(model, ids, labels)
        regularizer = getattr(model, "regularization_loss", None)
        if data_parallel is not None:  # this rank's share of the global batch's objective
            total = data_parallel.local_objective(loss, regularizer, labels)
        else:
            total = loss + regularizer() if regularizer is not None else loss
        loss_value = float(loss.item())
        total.backward()
        if data_parallel is not None:  # gradients summed over ranks / global token count; the global loss
            loss_value = data_parallel.all_reduce(trainable, loss_value)
        norm = grad_norm(trainable)
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            optimizer.zero_grad()
            history.bad_steps.append(step)
            consecutive_bad += 1
            if consecutive_bad >= config.max_bad_steps:
                raise TrainingStopped(f"{consecutive_bad} consecutive steps had a non-finite loss or gradient "
                                      f"(last at step {step}); parameters are those of the last good step")
            continue
        consecutive_bad = 0
        if config.max_grad_norm is not None:
            clip_grad_norm(trainable, config.max_grad_norm, norm=norm)
        optimizer.step()
        allocate = getattr(model, "update_and_allocate", None)
        if allocate is not None:
            allocate(step)
        optimizer.zero_grad()
        seconds = time.perf_counter() - tic
        tokens = int((labels != -100).sum()) if hasattr(labels, "sum") else 0
        record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm,
                  "tokens_per_s": float(ids.size) / seconds if seconds > 0 else 0.0, "trained_tokens": tokens}
        if data_parallel is not None:
            data_parallel.after_step(model, record)
        history.steps.append(record)
        _report(bar, log, record, len(history.bad_steps), config)
        last = step == config.steps - 1
        if evaluate is not None and ((config.eval_every and (step + 1) % config.eval_every == 0) or last):
            metrics = evaluate(step)
            history.evals.append({"step": step, **metrics})
            model.train()
        if save_checkpoint is not None and ((config.save_every and (step + 1) % config.save_every == 0) or last):
            save_checkpoint(step, history)
    if bar is not None:
        bar.close()
    model.eval()
    return history


def _progress(config: TrainConfig, start_step: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=config.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)


def _report(bar, log, record, n_bad, config):
    postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}",
               "tok/s": f"{record['tokens_per_s']:.0f}"}
    if n_bad:
        postfix["skipped"] = n_bad
    if bar is not None:
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
    elif log is not None and config.log_every and (record["step"] + 1) % config.log_every == 0:
        log(f"step {record['step'] + 1}/{config.steps} " + " ".join(f"{k}={v}" for k, v in postfix.items()))
