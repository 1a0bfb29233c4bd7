"""Evaluation: mean negative log-likelihood (validation loss, perplexity) and exact match.

mean_nll: over N scored tokens (labels != -100) of a set of (ids, labels) batches,
    loss = (1/N) sum -log p(label | ids before it),   perplexity = exp(loss)
(a token-weighted mean, as the training loss). It serves the validation loss of a fine-tune and
`minilora eval`; ``encode_eval_source`` turns a task, a JSONL folder split or a text file into the
scored examples.

Exact match: greedy completions of many prompts, batched, with the KV cache. Prompts of equal token
length form one batch (no padding, so no attention mask is needed); each batch is prefilled once and then decoded one token per step for every row at once
(models.generate.stream_generate). A row stops at eos; the completion is compared with the expected
one after stripping surrounding white space.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from .data import TASKS, encode_example, read_split, task_splits, text_windows
from .errors import ConfigError, DataError
from .models.generate import stream_generate
from .models.transformer import lm_loss
from .tensor import no_grad
from .train import trained_tokens


def mean_nll(model, batches) -> dict:
    """{"loss": mean NLL per scored token, "perplexity": exp(loss), "tokens": N} over (ids, labels) batches.

    The model runs in eval mode (no dropout) without a graph; its train/eval mode is restored after.
    """
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    try:
        with no_grad():
            for ids, labels in batches:
                n = trained_tokens(labels)
                if n:
                    total += float(lm_loss(model, ids, labels).item()) * n  # mean over n -> sum
                    count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("evaluation: no token to score (every label is masked)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


def check_eval_source(source: str, split: str = "valid") -> None:
    """Raise ConfigError / MissingFileError / DataError for a source encode_eval_source cannot read, before
    any model is loaded."""
    if source in TASKS or os.path.isfile(source):
        return
    if not os.path.isdir(source):
        raise ConfigError(f"data {source!r} is neither a task ({', '.join(sorted(TASKS))}), a folder of JSONL "
                          "splits nor a text file")
    read_split(source, split, check_only=True)


def encode_eval_source(source: str, tokenizer, max_len: int, split: str = "valid", mask_prompt: bool = True,
                       n_task: int = 100, seed: int = 0) -> list:
    """Scored (ids, labels) examples of ``source``: a task's eval split, a JSONL folder's ``split`` (the
    completion tokens, or every token with mask_prompt=False), or a text file cut into max_len windows."""
    check_eval_source(source, split)
    if source in TASKS:
        pairs = task_splits(source, n_train=0, n_eval=n_task, seed=seed)[1]
    elif os.path.isdir(source):
        pairs = read_split(source, split, tokenizer)
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            raise DataError(f"{source}: no text")
        return text_windows(tokenizer.encode(text), max_len)
    return [encode_example(tokenizer, p, c, max_len, mask_prompt=mask_prompt and bool(p)) for p, c in pairs]


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
