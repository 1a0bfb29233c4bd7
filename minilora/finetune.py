"""The main job: fine-tune a pretrained model with LoRA / QLoRA / AdaLoRA (+ LoRA+) on a task or a folder.

``run_finetune(config)`` validates the config, loads the model and tokenizer, quantizes the base
(QLoRA), injects adapters, measures exact match, the validation loss and a sample generation before,
trains with a progress bar, periodic validation losses and checkpoints, measures again after, and
writes to ``config.out``:
    adapter/                   the adapter in PEFT's format (adapter_model.safetensors + adapter_config.json)
    history.json               losses, learning rates, tokens/s, validation losses ("evals"), skipped steps
    summary.json               exact match before/after, validation loss (before, best, final), test loss
    loss.png                   training and validation loss per step (when matplotlib is installed)
    checkpoint.safetensors     the last checkpoint, for --resume
The validation loss is evaluate.mean_nll over the validation set (valid.jsonl, or the task's eval
split), scored like the training loss (completion tokens unless mask_prompt is off).
"""
from __future__ import annotations

import json
import os
import time

from . import backend
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .distributed import start_data_parallel
from .data import TASKS, Batches, encode_example, in_order, load_jsonl_folder, read_split, task_splits
from .evaluate import exact_match, mean_nll
from .finetune_config import FinetuneConfig
from .io.atomic import atomic_path, write_text_atomic
from .io.pretrained import load_pretrained
from .lora import LoraConfig, get_lora_model, save_adapter
from .lora.adalora import AdaLoraConfig, plot_rank_pattern
from .optim import SGD, AdamW, create_loraplus_optimizer
from .quant import QuantSpec, model_memory_report, quantize_model
from .tiny import tiny_model
from .train import History, TrainConfig, TrainingStopped, train

NOT_EVALUATED = {"exact_match": float("nan"), "n": 0, "samples": [], "val_loss": float("nan")}  # ranks > 0


def load_model_and_tokenizer(cfg: FinetuneConfig):
    """(model, tokenizer) for cfg.model (see model_and_tokenizer); QLoRA loads straight into 4 bits, one
    tensor at a time, so the float32 model never exists whole."""
    # LoftQ needs its targets' float weights: it quantizes them itself (adapt)
    quantize = (QuantSpec(cfg.quant_type) if cfg.method == "qlora" and cfg.model != "tiny" and cfg.init != "loftq"
                else None)
    return model_and_tokenizer(cfg.model, cfg.seed, quantize=quantize)


def model_and_tokenizer(name: str, seed: int = 0, quantize: QuantSpec | None = None):
    """(model, tokenizer) for a model name, file or folder; "tiny" is the tiny preset, random from ``seed``,
    with a character tokenizer. quantize: load the targeted Linears straight into 4 bits."""
    if name == "tiny":
        return tiny_model(seed)
    model, tokenizer = load_pretrained(name, quantize=quantize)
    if tokenizer is None:
        raise ValueError(f"{name}: no tokenizer found beside the weights (tokenizer.json)")
    return model, tokenizer


def adapt(model, cfg: FinetuneConfig, steps: int | None = None):
    """Quantize (QLoRA) and inject adapters; returns the adapted model. steps: the run's length
    (AdaLoRA's budget schedule; default cfg.total_steps())."""
    steps = cfg.total_steps() if steps is None else steps
    if cfg.method == "qlora":
        targets = cfg.target_list()  # LoftQ quantizes its targets itself, from the float weights
        skip = ("lm_head",) if cfg.init != "loftq" else (".*" if targets == "all-linear" else ("lm_head", *targets))
        quantize_model(model, quant_type=cfg.quant_type, skip=skip)
    if cfg.method == "adalora":
        config = AdaLoraConfig(init_r=cfg.r, target_r=cfg.target_r, total_step=steps, lora_alpha=cfg.alpha,
                               lora_dropout=cfg.dropout, target_modules=cfg.target_list(),
                               tinit=max(steps // 10, 0), tfinal=max(steps // 5, 0), deltaT=1)
    else:
        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=cfg.target_list(), use_rslora=cfg.rslora, use_dora=cfg.dora,
                            init_lora_weights=cfg.lora_init())
    model = get_lora_model(model, config, seed=cfg.seed)
    if cfg.grad_checkpoint:
        model.gradient_checkpointing = True
    return model


def make_optimizer(model, cfg: FinetuneConfig):
    """AdamW or SGD (momentum 0.9) over the trainable parameters; LoRA+ groups when loraplus_ratio is set."""
    cls, extra = (AdamW, {}) if cfg.optimizer == "adamw" else (SGD, {"momentum": 0.9})
    if cfg.loraplus_ratio is not None:
        return create_loraplus_optimizer(model, cls, lr=cfg.lr, loraplus_lr_ratio=cfg.loraplus_ratio,
                                         loraplus_weight_decay=cfg.weight_decay, weight_decay=cfg.weight_decay,
                                         **extra)
    return cls([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay,
               **extra)


def load_examples(cfg: FinetuneConfig, tokenizer):
    """(train, valid) (prompt, completion) lists: a task's splits, or the folder's train and valid.jsonl."""
    if cfg.data in TASKS:
        return task_splits(cfg.data, n_train=cfg.n_train, n_eval=cfg.eval_examples, seed=cfg.seed)
    return load_jsonl_folder(cfg.data, tokenizer)


def encode_all(cfg: FinetuneConfig, tokenizer, pairs) -> list:
    """(ids, labels) of each (prompt, completion); the prompt is masked unless cfg.mask_prompt is off."""
    return [encode_example(tokenizer, p, c, cfg.max_seq_len, mask_prompt=cfg.mask_prompt and bool(p))
            for p, c in pairs]


def run_finetune(cfg: FinetuneConfig, log=print) -> dict:
    """Run the job described by ``cfg``; returns a summary dict (also written as summary.json)."""
    cfg.validate()
    tic = time.perf_counter()
    dp = start_data_parallel(cfg.distributed, batch_size=cfg.batch_size, backend=cfg.backend)  # None: one process
    main = dp is None or dp.is_main  # only rank 0 reports, evaluates and writes
    log = dp.main_only(log) if dp is not None else log
    with backend.use_backend(cfg.backend):
        model, tokenizer = load_model_and_tokenizer(cfg)
        log(f"loaded {cfg.model}: {model.num_parameters():,} parameters ({time.perf_counter() - tic:.1f} s)")
        train_set, valid_set = load_examples(cfg, tokenizer)
        steps = cfg.total_steps(len(train_set))
        model = adapt(model, cfg, steps)
        trainable = sum(p.size for p in model.parameters() if p.requires_grad)
        total = model.num_parameters()
        log(f"method {cfg.method}: trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%)")
        log(memory_line(model))
        optimizer = make_optimizer(model, cfg)
        pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        batches = Batches(encode_all(cfg, tokenizer, train_set), cfg.batch_size, pad_id, seed=cfg.seed)
        batches = dp.shard(batches) if dp is not None else batches  # this rank's rows of each global batch
        val_batches = in_order(encode_all(cfg, tokenizer, valid_set), cfg.batch_size, pad_id, cfg.val_batches)
        log(f"{len(train_set)} training examples, {steps} steps of {cfg.batch_size * cfg.grad_accumulation_steps} "
            f"({cfg.grad_accumulation_steps} x {cfg.batch_size}); validation: {len(valid_set)} examples, "
            f"{len(val_batches)} batches")

        def validation_loss(step=None):
            return {"val_loss": mean_nll(model, val_batches)["loss"]}

        eval_set = valid_set[: cfg.eval_examples]
        before = {**exact_match(model, tokenizer, eval_set), **validation_loss()} if main else NOT_EVALUATED
        log(f"before: exact match {before['exact_match']:.1%} on {before['n']} held-out examples, "
            f"validation loss {before['val_loss']:.4f}")
        _log_sample(log, before)
        if main:
            os.makedirs(cfg.out, exist_ok=True)
        ckpt = checkpoint_path(cfg.out)
        start, history = 0, History()
        if cfg.resume:
            state = load_checkpoint(ckpt, model, optimizer)
            start, history = state["step"] + 1, History(**(state["history"] or {}))
            log(f"resumed from {ckpt} at step {start}")
        if dp is not None:  # every rank holds the same base, adapters and optimizer state, or stop here
            dp.check_identical(model, optimizer, "at start")
            log(f"data-parallel over {dp.size} ranks: {cfg.batch_size // dp.size} of each batch of {cfg.batch_size}")

        def save(step, hist):
            save_checkpoint(ckpt, model, optimizer, step, hist, extra={"config": cfg.to_dict()})

        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else (0.3 if cfg.method == "qlora" else 1.0)
        train_cfg = TrainConfig(steps=steps, warmup_steps=min(cfg.warmup_steps, steps - 1), schedule=cfg.lr_schedule,
                                max_grad_norm=max_norm, eval_every=cfg.evaluation_interval(steps),
                                save_every=cfg.save_every, grad_accumulation_steps=cfg.grad_accumulation_steps,
                                progress=cfg.progress and main)
        if start < steps:
            try:
                history = train(model, optimizer, batches, train_cfg, start_step=start, history=history,
                                evaluate=validation_loss if main else None, save_checkpoint=save if main else None,
                                log=log, data_parallel=dp)
            except TrainingStopped as exc:  # keep the evidence: history.json lists the skipped steps
                if main:
                    _write_json(os.path.join(cfg.out, "history.json"), history.to_dict())
                if dp is not None:  # every rank stops at the same step: none aborts before rank 0 wrote
                    dp.finish()
                last = f"the last checkpoint is {ckpt}" if os.path.isfile(ckpt) else "no checkpoint was written"
                raise TrainingStopped(f"{exc}; {last}; history.json lists the skipped steps") from None
        if dp is not None and not dp.end_of_training(model, optimizer):
            return {}  # ranks other than 0 waited, asleep, while rank 0 evaluated and wrote the outputs
        after = exact_match(model, tokenizer, eval_set)
        log(f"after:  exact match {after['exact_match']:.1%} on {after['n']} held-out examples")
        _log_sample(log, after)
        val_loss = validation_summary(before["val_loss"], history)
        if val_loss["best"] is not None:
            log(f"validation loss: before {val_loss['before']:.4f}, best {val_loss['best']['val_loss']:.4f} "
                f"(step {val_loss['best']['step'] + 1}), final {val_loss['final']['val_loss']:.4f}")
        test = None
        if cfg.test:
            test_batches = in_order(encode_all(cfg, tokenizer, read_split(cfg.data, "test", tokenizer)),
                                    cfg.batch_size, pad_id)
            test = mean_nll(model, test_batches)
            log(f"test loss {test['loss']:.4f}, test perplexity {test['perplexity']:.3f} ({test['tokens']} tokens)")
        save_outputs(model, cfg, history)
    summary = {"before": before, "after": after, "val_loss": val_loss, "test": test, "steps": steps,
               "trainable": trainable, "total": total, "skipped_steps": len(history.bad_steps),
               "seconds": time.perf_counter() - tic, "config": cfg.to_dict()}
    _write_json(os.path.join(cfg.out, "summary.json"), summary)
    log(f"wrote {cfg.out}/adapter, history.json, summary.json ({summary['seconds']:.0f} s in all)")
    if dp is not None:
        dp.finish()
    return summary


def validation_summary(before: float, history) -> dict:
    """{"before": loss, "best": {"step", "val_loss"}, "final": {"step", "val_loss"}} of history.evals."""
    evals = [e for e in history.evals if "val_loss" in e]
    if not evals:
        return {"before": before, "best": None, "final": None}
    best = min(evals, key=lambda e: e["val_loss"])
    return {"before": before, "best": {"step": best["step"], "val_loss": best["val_loss"]},
            "final": {"step": evals[-1]["step"], "val_loss": evals[-1]["val_loss"]}}


def memory_line(model) -> str:
    report = model_memory_report(model)
    text = f"memory: {report['total_bytes'] / 2**20:.1f} MiB of weights " \
           f"(float32 would be {report['float32_equivalent_bytes'] / 2**20:.1f} MiB)"
    if report["quantized"]["params"]:
        text += f"; 4-bit layers at {report['quantized']['bits_per_param']:.3f} bits/param"
    return text


def save_outputs(model, cfg: FinetuneConfig, history) -> None:
    save_adapter(model, os.path.join(cfg.out, "adapter"))
    _write_json(os.path.join(cfg.out, "history.json"), history.to_dict())
    plot_loss(history, os.path.join(cfg.out, "loss.png"))
    if cfg.method == "adalora":
        try:
            plot_rank_pattern(model, os.path.join(cfg.out, "rank_pattern.png"))
        except ImportError:  # matplotlib is in the plots extra
            pass


def plot_loss(history, path) -> bool:
    """Draw the training loss per step and the validation losses to ``path``; False without matplotlib."""
    try:  # imported here: matplotlib is optional (the plots extra) and slow to import
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] + 1 for r in history.steps], [r["loss"] for r in history.steps], lw=1, label="training")
    evals = [e for e in history.evals if "val_loss" in e]
    if evals:
        ax.plot([e["step"] + 1 for e in evals], [e["val_loss"] for e in evals], "o-", lw=1.5, ms=4,
                label="validation")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean NLL per token)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


def _log_sample(log, result):
    if result["samples"]:
        s = result["samples"][0]
        log(f"  sample: {s['prompt']!r} -> {s['got']!r} (expected {s['expected']!r})")


def _write_json(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
