"""Turn (prompt, completion) examples into padded (ids, labels) batches for next-token training.

For one example: tokens = prompt + completion + [eos]; the model reads tokens[:-1] and is scored on
tokens[1:]; positions that predict prompt tokens get label -100 (ignored by cross_entropy), so the
loss covers only the completion and eos. Batches are drawn deterministically from (seed, step), so a
resumed run sees the same data order as an uninterrupted one.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def encode_example(tokenizer, prompt: str, completion: str, max_len: int, mask_prompt: bool = True):
    """(ids, labels), each a list of length <= max_len; the prompt is kept, the completion cut if needed."""
    prompt_ids = tokenizer.encode(prompt)
    completion_ids = tokenizer.encode(completion) + [tokenizer.eos_token_id]
    tokens = (prompt_ids + completion_ids)[: max_len + 1]
    ids, targets = tokens[:-1], tokens[1:]
    n_prompt_targets = max(len(prompt_ids) - 1, 0) if mask_prompt else 0
    labels = [IGNORE_INDEX] * n_prompt_targets + targets[n_prompt_targets:]
    return ids, labels


def collate(pairs, pad_id: int):
    """Pad a list of (ids, labels) on the right: ids with pad_id, labels with -100. -> int64 (B, T) arrays."""
    width = max(len(ids) for ids, _ in pairs)
    ids = np.full((len(pairs), width), pad_id, dtype=np.int64)
    labels = np.full((len(pairs), width), IGNORE_INDEX, dtype=np.int64)
    for row, (i, l) in enumerate(pairs):
        ids[row, : len(i)] = i
        labels[row, : len(l)] = l
    return ids, labels


class Batches:
    """Deterministic batches: batch(step) depends only on (seed, step) and the encoded examples."""

    def __init__(self, encoded: list, batch_size: int, pad_id: int, seed: int = 0):
        if not encoded:
            raise ValueError("Batches: no training examples")
        if batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be positive, got {batch_size}")
        self.encoded, self.batch_size, self.pad_id, self.seed = encoded, batch_size, pad_id, seed

    def __call__(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        n = len(self.encoded)
        picks = rng.choice(n, size=self.batch_size, replace=self.batch_size > n)
        return collate([self.encoded[i] for i in picks], self.pad_id)
