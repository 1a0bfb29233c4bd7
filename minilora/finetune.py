"""The main job: fine-tune a pretrained model with LoRA / QLoRA / AdaLoRA (+ LoRA+) on a task or a folder.

``run_finetune(config)`` validates the config, loads the model and tokenizer, quantizes the base
(QLoRA), injects adapters, measures exact match and a sample generation before, trains with a
progress bar and checkpoints, measures again after, and writes to ``config.out``:
    adapter/                   the adapter in PEFT's format (adapter_model.safetensors + adapter_config.json)
    history.json               losses, learning rates, tokens/s, evals, skipped steps
    loss.png                   the loss curve (when matplotlib is installed)
    checkpoint.safetensors     the last checkpoint, for --resume
"""
from __future__ import annotations

import json
import os
import time

from . import backend
from .finetune_config import FinetuneConfig

NOT_EVALUATED = {"exact_match": float("nan"), "n": 0, "samples": []}  # ranks other than 0 (data-parallel)
TINY_MODEL = dict(style="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)


def load_model_and_tokenizer(cfg: FinetuneConfig):
    """(model, tokenizer) for cfg.model; "tiny" is a small random Llama with a character tokenizer."""
    if cfg.model == "tiny":
        from .data import CharTokenizer
        from .models.config import ModelConfig
        from .models.transformer import Transformer
        tokenizer = CharTokenizer()
        return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_MODEL), seed=cfg.seed), tokenizer
    from .io.pretrained import load_pretrained
    from .quant import QuantSpec
    # QLoRA: straight into 4 bits, one tensor at a time (the float32 model never exists whole)
    model, tokenizer = load_pretrained(cfg.model, quantize=QuantSpec(cfg.quant_type) if cfg.method == "qlora" else None)
    if tokenizer is None:
        raise ValueError(f"{cfg.model}: no tokenizer found beside the weights (tokenizer.json)")
    return model, tokenizer


def adapt(model, cfg: FinetuneConfig):
    """Quantize (QLoRA) and inject adapters; returns the adapted model."""
    from .lora import LoraConfig, get_lora_model
    if cfg.method == "qlora":
        from .quant import quantize_model
        quantize_model(model, quant_type=cfg.quant_type)
    if cfg.method == "adalora":
        from .lora.adalora import AdaLoraConfig
        config = AdaLoraConfig(init_r=cfg.r, target_r=cfg.target_r, total_step=cfg.steps, lora_alpha=cfg.alpha,
                               lora_dropout=cfg.dropout, target_modules=cfg.target_list(),
                               tinit=max(cfg.steps // 10, 0), tfinal=max(cfg.steps // 5, 0), deltaT=1)
    else:
        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=cfg.target_list(), use_rslora=cfg.rslora)
    model = get_lora_model(model, config, seed=cfg.seed)
    if cfg.grad_checkpoint:
        model.gradient_checkpointing = True
    return model


def make_optimizer(model, cfg: FinetuneConfig):
    from .optim import AdamW, create_loraplus_optimizer
    if cfg.loraplus_ratio is not None:
        return create_loraplus_optimizer(model, AdamW, lr=cfg.lr, loraplus_lr_ratio=cfg.loraplus_ratio,
                                         weight_decay=0.0)
    return AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)


def load_examples(cfg: FinetuneConfig, tokenizer):
    from .data import load_jsonl_folder, task_splits
    from .data.tasks import TASKS
    if cfg.data in TASKS:
        return task_splits(cfg.data, n_train=cfg.n_train, n_eval=cfg.eval_examples, seed=cfg.seed)
    train, valid = load_jsonl_folder(cfg.data, tokenizer)
    return train, valid[: cfg.eval_examples]


def run_finetune(cfg: FinetuneConfig, log=print) -> dict:
    """Run the job described by ``cfg``; returns a summary dict (also written as summary.json)."""
    from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from .data import Batches, encode_example
    from .evaluate import exact_match
    from .train import History, TrainConfig, TrainingStopped, train

    from .distributed import start_data_parallel
    cfg.validate()
    tic = time.perf_counter()
    dp = start_data_parallel(cfg.distributed, batch_size=cfg.batch_size, backend=cfg.backend)  # None: one process
    main = dp is None or dp.is_main  # only rank 0 reports, evaluates and writes
    log = dp.main_only(log) if dp is not None else log
    with backend.use_backend(cfg.backend):
        model, tokenizer = load_model_and_tokenizer(cfg)
        log(f"loaded {cfg.model}: {model.num_parameters():,} parameters ({time.perf_counter() - tic:.1f} s)")
        train_set, eval_set = load_examples(cfg, tokenizer)
        model = adapt(model, cfg)
        trainable = sum(p.size for p in model.parameters() if p.requires_grad)
        total = model.num_parameters()
        log(f"method {cfg.method}: trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%)")
        log(memory_line(model))
        optimizer = make_optimizer(model, cfg)
        encoded = [encode_example(tokenizer, p, c, cfg.max_seq_len, mask_prompt=bool(p)) for p, c in train_set]
        batches = Batches(encoded, cfg.batch_size, getattr(tokenizer, "pad_token_id", None) or 0, seed=cfg.seed)
        batches = dp.shard(batches) if dp is not None else batches  # this rank's rows of each global batch
        before = exact_match(model, tokenizer, eval_set) if main else NOT_EVALUATED
        log(f"before: exact match {before['exact_match']:.1%} on {before['n']} held-out examples")
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
        train_cfg = TrainConfig(steps=cfg.steps, warmup_steps=min(cfg.warmup_steps, cfg.steps - 1),
                                max_grad_norm=max_norm, save_every=cfg.save_every, progress=cfg.progress and main)
        if start < cfg.steps:
            try:
                history = train(model, optimizer, batches, train_cfg, start_step=start, history=history,
                                save_checkpoint=save if main else None, log=log, data_parallel=dp)
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
        save_outputs(model, cfg, history)
    summary = {"before": before, "after": after, "trainable": trainable, "total": total,
               "skipped_steps": len(history.bad_steps), "seconds": time.perf_counter() - tic,
               "config": cfg.to_dict()}
    _write_json(os.path.join(cfg.out, "summary.json"), summary)
    log(f"wrote {cfg.out}/adapter, history.json, summary.json ({summary['seconds']:.0f} s in all)")
    if dp is not None:
        dp.finish()
    return summary


def memory_line(model) -> str:
    from .quant import model_memory_report
    report = model_memory_report(model)
    text = f"memory: {report['total_bytes'] / 2**20:.1f} MiB of weights " \
           f"(float32 would be {report['float32_equivalent_bytes'] / 2**20:.1f} MiB)"
    if report["quantized"]["params"]:
        text += f"; 4-bit layers at {report['quantized']['bits_per_param']:.3f} bits/param"
    return text


def save_outputs(model, cfg: FinetuneConfig, history) -> None:
    from .lora import save_adapter
    save_adapter(model, os.path.join(cfg.out, "adapter"))
    _write_json(os.path.join(cfg.out, "history.json"), history.to_dict())
    plot_loss(history, os.path.join(cfg.out, "loss.png"))
    if cfg.method == "adalora":
        from .lora.adalora import plot_rank_pattern
        try:
            plot_rank_pattern(model, os.path.join(cfg.out, "rank_pattern.png"))
        except ImportError:  # matplotlib is in the plots extra
            pass


def plot_loss(history, path) -> bool:
    """Draw the training loss per step to ``path``; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .io.atomic import atomic_path
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in history.steps], [r["loss"] for r in history.steps], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
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
    from .io.atomic import write_text_atomic
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
