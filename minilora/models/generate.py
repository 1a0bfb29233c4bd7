"""Autoregressive generation with a KV cache: greedy, temperature and top-k sampling.

Step 0 runs the whole prompt (B, T0) once and fills the cache; each later step feeds only the last
token (B, 1), whose keys/values are written into the cache (preallocated for T0 + max_new_tokens
positions). Only the last position goes through lm_head. A plain Llama-style Transformer runs its
steps on bare arrays (models/decode.py; the same numbers as its module forward). On NumPy the
decoding steps run with the BLAS thread count that times fastest (models/blas_threads.py).
Next-token rule on the last logits z (B, V):

    temperature == 0:  argmax z                                              (greedy)
    otherwise:         sample from softmax(z / temperature) restricted to the top_k largest z,
                       drawn with the Gumbel-max trick argmax(z / temperature + G), G = -log(-log U),
                       U ~ Uniform[0, 1) from a backend.Random (same seed, same tokens).

The top_k threshold is the k-th largest z, found by a partial sort (xp.partition) where the
namespace has one, else by a full sort: the same value either way.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..tensor import Tensor, no_grad
from .blas_threads import ThreadChooser
from .decode import Decoder
from .kv_cache import KVCache
from .transformer import Transformer, as_token_ids


def next_token(logits, temperature: float = 0.0, top_k: int | None = None, rng=None):
    """Pick one token per row of logits (B, V) -> int64 (B,) in the logits' namespace."""
    xp = backend.namespace_of(logits)
    if temperature == 0.0:
        return xp.astype(xp.argmax(logits, axis=-1), xp.int64)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        v = z.shape[-1]
        partition = getattr(xp, "partition", None)  # NumPy and CuPy: O(V) instead of a sort
        ordered = partition(z, v - top_k, axis=-1) if partition is not None else xp.sort(z, axis=-1)
        kth = ordered[:, v - top_k:v - top_k + 1]  # (B, 1): the k-th largest
        z = xp.where(z >= kth, z, xp.full_like(z, -math.inf))
    u = rng.uniform(tuple(z.shape), dtype=z.dtype)
    gumbel = -xp.log(-xp.log(u))  # u == 0 gives -inf: never chosen
    return xp.astype(xp.argmax(z + gumbel, axis=-1), xp.int64)


def stream_generate(model, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                    rng=None, eos_token_id: int | None = None, use_cache: bool = True, adapter_names=None):
    """Yield the new tokens of each step as host int64 arrays (B,); stops early when every row has emitted eos.

    A row that has emitted eos keeps producing tokens until all rows have; callers cut each row at eos.

    prompt_ids (T0,) or (B, T0). use_cache=False recomputes the whole prefix each step (the reference
    the cached path is tested against). adapter_names: one LoRA adapter per row (a LoraModel's
    mixed-adapter batch, "__base__" for none), passed to every forward.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    xp = model.parameters()[0].xp  # works for a wrapped model (LoraModel) too
    ids = as_token_ids(_as_2d(prompt_ids), xp)  # (B, T0)
    if temperature > 0 and rng is None:
        rng = backend.Random(0, xp)
    cache = KVCache(model.config.num_hidden_layers, capacity=ids.shape[1] + max_new_tokens) if use_cache else None
    threads = ThreadChooser(xp)
    was_training = model.training
    model.eval()
    done = np.zeros(ids.shape[0], dtype=bool)
    per_row = {} if adapter_names is None else {"adapter_names": adapter_names}
    try:
        with no_grad():
            decoder = Decoder.for_model(model) if use_cache and adapter_names is None else None
            feed = ids
            for step_index in range(max_new_tokens):
                decoding = use_cache and step_index > 0  # one token per row: GEMVs
                if decoding:
                    threads.begin()
                else:
                    threads.prefill()
                logits = (decoder.last_logits(feed, cache) if decoder is not None
                          else last_logits(model, feed, cache, **per_row))  # (B, V)
                if decoding:
                    threads.end()
                token = next_token(logits, temperature, top_k, rng)  # (B,)
                host = backend.to_numpy(token).astype(np.int64)
                yield host
                if eos_token_id is not None:
                    done |= host == eos_token_id
                    if done.all():
                        return
                step = xp.reshape(token, (-1, 1))  # (B, 1)
                feed = step if use_cache else xp.concat((feed, step), axis=1)
    finally:
        threads.restore()
        model.train(was_training)


def last_logits(model, ids, cache, adapter_names=None):
    """Logits (B, V) of the last position of ids (B, T); a Transformer (or a wrapper whose base is one)
    sends only that position through lm_head. A mixed-adapter batch goes through the wrapper's forward."""
    if adapter_names is not None:
        return model(ids, cache=cache, adapter_names=adapter_names).data[:, -1, :]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if isinstance(base, Transformer):
        h = base.model(ids, cache=cache).data  # (B, T, C)
        return base.lm_head(Tensor(h[:, -1:, :])).data[:, 0, :]  # (B, V)
    return model(ids, cache=cache).data[:, -1, :]


def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             rng=None, eos_token_id: int | None = None, callback=None, use_cache: bool = True, adapter_names=None):
    """Prompt followed by the generated tokens, as a host int64 array shaped like prompt_ids plus new steps.

    callback(step, tokens (B,)) is called after each new token (streaming output). adapter_names: one
    adapter per prompt row (see stream_generate).
    """
    if isinstance(prompt_ids, Tensor):
        prompt_ids = prompt_ids.data
    prompt = np.asarray(backend.to_numpy(prompt_ids) if not isinstance(prompt_ids, (list, tuple))
                        else prompt_ids, dtype=np.int64)
    rows = [_as_2d_host(prompt)]
    for step, token in enumerate(stream_generate(model, prompt_ids, max_new_tokens, temperature, top_k,
                                                 rng, eos_token_id, use_cache, adapter_names)):
        if callback is not None:
            callback(step, token)
        rows.append(token[:, None])
    out = np.concatenate(rows, axis=1)  # (B, T0 + steps)
    return out[0] if prompt.ndim == 1 else out


def _as_2d(ids):
    if isinstance(ids, (list, tuple)):
        ids = np.asarray(ids, dtype=np.int64)
    if isinstance(ids, Tensor):
        ids = ids.data
    if getattr(ids, "ndim", None) == 1:
        xp = backend.namespace_of(ids)
        return xp.reshape(ids, (1, -1))
    return ids


def _as_2d_host(prompt):
    return prompt[None, :] if prompt.ndim == 1 else prompt
