"""Write a Llama model to a GGUF file that llama.cpp, ollama, transformers and ``load_gguf`` read.

The inverse of ``gguf.load_gguf``, following llama.cpp's converter (convert_hf_to_gguf.py):

- names: HF names -> GGUF names (``hf_to_gguf_name``); ``general.architecture`` is ``llama``.
- RoPE: W_q / W_k rows permuted to llama.cpp's interleaved order (``permute_rope_rows``, nh heads
  for q, nkv for k); the reader un-permutes them, so the round trip is exact.
- types: 2-D weights stored as ``qtype`` (F32, F16, Q8_0, and whatever else ``gguf.quants``
  encodes); 1-D norm weights always F32, and a weight whose rows are not a whole number of
  ``qtype`` blocks falls back to F16, as llama.cpp's converter does. ``general.file_type`` names
  the type.
- Q8_0 (ggml's layout): blocks of 32 values along a row, each stored as its float16 scale
  d = max|x| / 127 followed by 32 int8 q = roundf(x / d) (34 bytes per 32 values, 8.5 bits per
  value). The ``gguf`` package encodes it; ``quantize_q8_0`` is the same arithmetic for a ``gguf``
  package that has no encoder (a test holds the two byte for byte).
- tokenizer: the ``tokenizer.*`` keys as ``load_gguf`` returns them (``tokenizer.ggml.model``,
  ``.pre``, ``.tokens``, ``.token_type``, ``.merges``, special ids, ``tokenizer.chat_template``),
  written with llama.cpp's value types (ids UINT32, token types INT32, scores FLOAT32).

The file is written through ``atomic.atomic_path`` (temporary file, fsync, rename).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from ..errors import FileFormatError
from ..models.config import ModelConfig
from .atomic import atomic_path
from .files import read_json_object
from .gguf import check_llama_state_dict, hf_to_gguf_name, permute_rope_rows

Q8_0_BLOCK = 32
F16_MAX = 65504.0


def quantize_q8_0(values: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 encoding of ``values`` (..., k), k a multiple of 32 -> uint8 (..., k // 32 * 34).

    Per block b of 32 values: d = max|x_b| / 127 (float32, stored as float16), q = roundf(x_b / d)
    (halves away from zero; q = 0 where d = 0), stored as int8 after the 2 bytes of d.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 0 or values.shape[-1] % Q8_0_BLOCK:
        raise ValueError(f"quantize_q8_0: the last dimension must be a multiple of {Q8_0_BLOCK}, "
                         f"got shape {values.shape}")
    blocks = values.reshape(-1, Q8_0_BLOCK)                                  # (n_blocks, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)      # (n_blocks, 1)
    inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)
    scaled = blocks * inverse
    magnitude = np.abs(scaled)
    whole = np.floor(magnitude)
    rounded = np.sign(scaled) * (whole + (magnitude - whole >= 0.5))          # C roundf, exactly
    out = np.concatenate([scale.astype(np.float16).view(np.uint8),           # (n_blocks, 2)
                          rounded.astype(np.int8).view(np.uint8)], axis=1)   # (n_blocks, 32)
    return out.reshape(*values.shape[:-1], values.shape[-1] // Q8_0_BLOCK * (2 + Q8_0_BLOCK))


def _encode(gguf, value: np.ndarray, quant):
    """(data, raw_dtype) for one 2-D weight; raw_dtype None means "store as the array's dtype"."""
    T = gguf.GGMLQuantizationType
    if quant == T.F32:
        return value, None
    if quant == T.F16 or value.shape[-1] % gguf.GGML_QUANT_SIZES[quant][0]:
        return value.astype(np.float16), None  # llama.cpp's fallback for rows that are not whole blocks
    try:
        return gguf.quants.quantize(value, quant), quant
    except (NotImplementedError, AttributeError):  # an older gguf package: no encoder for this type
        if quant != T.Q8_0:
            raise ValueError(f"save_gguf: the installed gguf package cannot encode {quant.name}") from None
        return quantize_q8_0(value), quant


def _value_type(T, value):
    if isinstance(value, bool):
        return T.BOOL
    if isinstance(value, int):
        return T.UINT32 if value >= 0 else T.INT32
    if isinstance(value, float):
        return T.FLOAT32
    return T.STRING


def _tokenizer_kv(writer, meta: dict) -> None:
    from gguf import GGUFValueType as T

    for key, value in meta.items():
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"save_gguf: metadata {key!r} is an empty list, which GGUF cannot store")
            # token types are INT32 in llama.cpp's files even though they are never negative
            sub = T.INT32 if isinstance(value[0], int) and not isinstance(value[0], bool) \
                else _value_type(T, value[0])
            writer.add_key_value(key, list(value), T.ARRAY, sub_type=sub)
        elif isinstance(value, (bool, int, float, str)):
            writer.add_key_value(key, value, _value_type(T, value))


NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp's token types
# pre-tokenizer names llama.cpp gives byte-level BPE tokenizers; "smollm" splits digits one by one
_PRE_DIGITS, _PRE_PLAIN = "smollm", "gpt2"


def _token_name(config: dict, key: str):
    value = config.get(key)
    return value.get("content") if isinstance(value, dict) else value  # AddedToken objects are dicts


def tokenizer_metadata_from_hf(folder) -> dict:
    """The GGUF ``tokenizer.*`` keys of a Hugging Face byte-level BPE tokenizer folder.

    Reads tokenizer.json (vocabulary, merges, added tokens, pre-tokenizer) and tokenizer_config.json
    (bos / eos / pad token names, chat template) as llama.cpp's converter does: special added
    tokens are CONTROL, other added tokens USER_DEFINED, ids no token claims are "[PAD<i>]" UNUSED.
    """
    path = os.path.join(os.fspath(folder), "tokenizer.json")
    data = read_json_object(path, "tokenizer.json")
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise FileFormatError(path, "GGUF export needs a byte-level BPE tokenizer (model.type 'BPE' with a vocab)")
    ids = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens") or [] if isinstance(t, dict) and "content" in t}
    ids.update({content: t.get("id") for content, t in added.items()})
    bad = [t for t, i in ids.items() if isinstance(i, bool) or not isinstance(i, int) or i < 0]
    if not ids or bad:
        raise FileFormatError(path, f"token ids must be non-negative integers (token {bad[:1]!r})" if bad
                              else "the vocabulary is empty")
    size = max(ids.values()) + 1
    if size > 4 * len(ids) + 1024:  # gaps become [PAD<i>] tokens; a stray huge id must not allocate millions
        raise FileFormatError(path, f"token id {size - 1} is far beyond the {len(ids)} tokens of the vocabulary")
    tokens, types = [f"[PAD{i}]" for i in range(size)], [UNUSED] * size
    for token, i in ids.items():
        tokens[i] = token
        types[i] = (CONTROL if added[token].get("special") else USER_DEFINED) if token in added else NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) if isinstance(m, list) and len(m) == 2
              and all(isinstance(p, str) for p in m) else None for m in model.get("merges") or []]
    if None in merges:
        raise FileFormatError(path, f"merge {merges.index(None)} is neither 'a b' nor a pair of strings")
    pre = _PRE_DIGITS if '"individual_digits": true' in json.dumps(data.get("pre_tokenizer")) else _PRE_PLAIN
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
    config_path = os.path.join(os.fspath(folder), "tokenizer_config.json")
    config = read_json_object(config_path) if os.path.isfile(config_path) else {}
    for role, key in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token")):
        name = _token_name(config, key)
        if name in ids:
            meta[f"tokenizer.ggml.{role}_token_id"] = ids[name]
    if isinstance(config.get("chat_template"), str):
        meta["tokenizer.chat_template"] = config["chat_template"]
    return meta


def _file_type(gguf, qtype: str):
    name = "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"
    return gguf.LlamaFileType[name] if name in gguf.LlamaFileType.__members__ else None


def save_gguf(path, config: ModelConfig, state: dict, tokenizer_meta: dict | None = None,
              qtype: str = "F32", name: str = "minilora") -> None:
    """Write ``state`` (HF names -> arrays of any backend) of a llama-style ``config`` to ``path``.

    tokenizer_meta: the ``tokenizer.*`` keys to store (as ``load_gguf`` or
    ``pretrained.tokenizer_metadata`` return them), optional. The parent folder is created.
    """
    import gguf

    if config.style != "llama":
        raise ValueError(f"save_gguf: only llama-style models have a GGUF layout, got style {config.style!r}")
    try:
        quant = gguf.GGMLQuantizationType[qtype]
    except KeyError:
        raise ValueError(f"save_gguf: qtype must be a GGML type name such as F32, F16, Q8_0, Q4_0, Q4_1; "
                         f"got {qtype!r}") from None
    host = {k: np.asarray(backend.to_numpy(v), dtype=np.float32) for k, v in state.items()}
    if config.tie_word_embeddings:
        host.pop("lm_head.weight", None)
    check_llama_state_dict(host, config, None)
    if quant == gguf.GGMLQuantizationType.F16:
        too_big = [k for k, v in host.items() if v.ndim == 2 and np.abs(v).max() > F16_MAX]
        if too_big:
            raise ValueError(f"save_gguf: {too_big[0]} has values beyond float16's range (|x| > {F16_MAX:g}); "
                             "write F32 instead")
    meta = tokenizer_meta or {}
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != config.vocab_size:
        raise ValueError(f"save_gguf: the tokenizer has {len(tokens)} tokens but the model's vocabulary is "
                         f"{config.vocab_size}; llama.cpp needs one token per embedding row")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(name)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_vocab_size(config.vocab_size)
        file_type = _file_type(gguf, qtype)
        if file_type is not None:
            writer.add_file_type(file_type)
        if config.bos_token_id is not None and meta.get("tokenizer.ggml.bos_token_id") is None:
            writer.add_bos_token_id(config.bos_token_id)
        if config.eos_token_id is not None and meta.get("tokenizer.ggml.eos_token_id") is None:
            writer.add_eos_token_id(config.eos_token_id)
        _tokenizer_kv(writer, meta)
        for hf_name, value in host.items():
            if hf_name.endswith("q_proj.weight"):
                value = permute_rope_rows(value, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                value = permute_rope_rows(value, config.num_key_value_heads)
            value = np.ascontiguousarray(value)
            data, raw_dtype = (value, None) if value.ndim == 1 else _encode(gguf, value, quant)
            writer.add_tensor(hf_to_gguf_name(hf_name), data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
