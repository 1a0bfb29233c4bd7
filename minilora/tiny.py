"""The from-scratch job: a small Llama-style transformer learns a generated task on the CPU.

It shows the whole stack (autograd, kernels, model, AdamW, schedule, batching, greedy evaluation)
without any pretrained file: exact match on held-out prompts goes from 0 to >= 90% in about a minute.
"""
from __future__ import annotations

from .data import Batches, CharTokenizer, encode_example, task_splits
from .evaluate import exact_match
from .models.config import ModelConfig
from .models.transformer import Transformer
from .optim import AdamW
from .train import TrainConfig, train

# The one small model of minilora: `minilora tiny` trains it from scratch and `finetune --model tiny`
# adapts it (a character vocabulary, so no file is needed). 256 positions cover finetune's max_seq_len.
TINY_PRESET = dict(style="llama", hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000.0)
TINY_MAX_LEN = 63  # tokens per training example of the from-scratch job (the tasks' examples are shorter)


def tiny_model(seed: int = 0):
    """(Transformer of TINY_PRESET with random weights from ``seed``, its CharTokenizer)."""
    tokenizer = CharTokenizer()
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_PRESET), seed=seed), tokenizer


def train_tiny(task: str = "sort", steps: int = 600, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
               n_eval: int = 100, progress: bool = True, log=None) -> dict:
    """Train TINY_PRESET from scratch on ``task``; returns {"before", "after", "history", "config", "model"}."""
    train_set, eval_set = task_splits(task, n_train=5000, n_eval=n_eval, seed=seed)
    model, tok = tiny_model(seed)
    config = model.config
    encoded = [encode_example(tok, p, c, TINY_MAX_LEN) for p, c in train_set]
    batches = Batches(encoded, batch_size, tok.pad_token_id, seed=seed)
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    before = exact_match(model, tok, eval_set)
    history = train(model, optimizer, batches,
                    TrainConfig(steps=steps, warmup_steps=steps // 20, max_grad_norm=1.0, progress=progress),
                    log=log)
    after = exact_match(model, tok, eval_set)
    return {"before": before, "after": after, "history": history, "config": config, "model": model}
