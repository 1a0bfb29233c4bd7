"""Turn (prompt, completion) examples into padded (ids, labels) batches for next-token training.

For one example: tokens = prompt + completion + [eos]; the model reads tokens[:-1] and is scored on
tokens[1:]; positions that predict prompt tokens get label -100 (ignored by cross_entropy), so the
loss covers only the completion and eos (``mask_prompt=False`` scores the prompt tokens too).

Batches walk through epochs: epoch e is a permutation of the n examples drawn from (seed, e), the
epochs are laid end to end, and batch s holds positions s*b .. s*b + b - 1 of that stream. So a run
of E*n/b steps sees every example E times, and batch(s) depends on (seed, s) alone: a resumed run sees
the same data order as an uninterrupted one, and micro-batches s*K .. s*K + K - 1 of size b hold
exactly the examples of batch s of size K*b (gradient accumulation).
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


def in_order(encoded: list, batch_size: int, pad_id: int, max_batches: int | None = None) -> list:
    """Collated (ids, labels) batches of ``encoded`` in order, no shuffling (evaluation); at most max_batches."""
    starts = range(0, len(encoded), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    return [collate(encoded[i:i + batch_size], pad_id) for i in starts]


def text_windows(token_ids: list, max_len: int) -> list:
    """A token stream cut into (ids, labels) windows of <= max_len targets, every token after the first
    scored exactly once: window w reads tokens[w*L : w*L + L] and predicts tokens[w*L + 1 : w*L + L + 1]."""
    windows = [token_ids[i:i + max_len + 1] for i in range(0, len(token_ids) - 1, max_len)]
    return [(w[:-1], w[1:]) for w in windows]


class Batches:
    """Deterministic batches: batch(step) depends only on (seed, step) and the encoded examples."""

    def __init__(self, encoded: list, batch_size: int, pad_id: int, seed: int = 0):
        if not encoded:
            raise ValueError("Batches: no training examples")
        if batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be positive, got {batch_size}")
        self.encoded, self.batch_size, self.pad_id, self.seed = encoded, batch_size, pad_id, seed
        self._order = (-1, None)  # (epoch, its permutation): the last one used

    def indices(self, step: int) -> list:
        """Example indices of batch ``step``: positions step*b .. step*b + b - 1 of the epoch stream."""
        n, out = len(self.encoded), []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch = position // n
            if self._order[0] != epoch:
                self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
            out.append(int(self._order[1][position % n]))
        return out

    def __call__(self, step: int):
        """(ids, labels) int64 (b, T) host arrays of batch ``step``."""
        return collate([self.encoded[i] for i in self.indices(step)], self.pad_id)
