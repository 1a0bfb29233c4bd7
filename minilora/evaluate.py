"""Exact-match evaluation: greedy completions of many prompts, batched, with the KV cache.

Prompts of equal token length form one batch (no padding, so no attention mask is needed); each
batch is prefilled once and then decoded one token per step for every row at once
(models.generate.stream_generate). A row stops at eos; the completion is compared with the expected
one after stripping surrounding white space.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .models.generate import stream_generate


def greedy_complete(model, prompt_ids: list[list[int]], max_new_tokens: int, eos_token_id: int,
                    batch_size: int = 32) -> list[list[int]]:
    """Greedy continuation of each prompt (a list of token ids), up to eos (excluded) or max_new_tokens."""
    groups = defaultdict(list)
    for index, ids in enumerate(prompt_ids):
        groups[len(ids)].append(index)
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            ids = np.asarray([prompt_ids[i] for i in chunk], dtype=np.int64)  # (b, T)
            done = np.zeros(len(chunk), dtype=bool)
            for tokens in stream_generate(model, ids, max_new_tokens, eos_token_id=eos_token_id):  # (b,)
                done |= tokens == eos_token_id
                for row in np.flatnonzero(~done):
                    outputs[chunk[row]].append(int(tokens[row]))
    return outputs


def exact_match(model, tokenizer, examples, max_new_tokens: int | None = None, batch_size: int = 32,
                n_samples: int = 3) -> dict:
    """Share of (prompt, completion) examples whose greedy completion equals the expected one.

    Returns {"exact_match": float, "n": int, "samples": [{"prompt", "expected", "got"}, ...]}.
    """
    if not examples:
        raise ValueError("exact_match: no examples")
    prompts = [tokenizer.encode(p) for p, _ in examples]
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(c)) for _, c in examples) + 2
    completions = greedy_complete(model, prompts, max_new_tokens, tokenizer.eos_token_id, batch_size)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in completions]
    hits = [got.strip() == expected.strip() for got, (_, expected) in zip(texts, examples)]
    samples = [{"prompt": p, "expected": c, "got": t} for (p, c), t in list(zip(examples, texts))[:n_samples]]
    return {"exact_match": sum(hits) / len(hits), "n": len(hits), "samples": samples}
