"""Write a Llama model to a GGUF file that llama.cpp and ``load_gguf`` read.

The inverse of ``gguf.load_gguf``: HF names -> GGUF names, W_q / W_k rows permuted to llama.cpp's
interleaved RoPE order (``permute_rope_rows``, nh heads for q, nkv for k), 2-D weights stored as
``qtype`` (F32, F16, Q8_0, Q4_0, Q4_1 ... anything ``gguf.quants.quantize`` encodes), 1-D norm
weights always F32 (as llama.cpp does). The file is written through a temporary file and renamed.
"""
from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..models.config import ModelConfig
from .atomic import atomic_path
from .gguf import check_llama_state_dict, hf_to_gguf_name, permute_rope_rows


def _tokenizer_kv(writer, meta: dict) -> None:
    from gguf import GGUFValueType as T

    for key, value in meta.items():
        if isinstance(value, bool):
            writer.add_key_value(key, value, T.BOOL)
        elif isinstance(value, int):
            writer.add_key_value(key, value, T.UINT32)
        elif isinstance(value, str):
            writer.add_key_value(key, value, T.STRING)
        elif isinstance(value, (list, tuple)) and value:
            sub = T.STRING if isinstance(value[0], str) else T.INT32
            writer.add_key_value(key, list(value), T.ARRAY, sub_type=sub)


def save_gguf(path, config: ModelConfig, state: dict, tokenizer_meta: dict | None = None,
              qtype: str = "F32", name: str = "minilora") -> None:
    """Write ``state`` (HF names -> arrays of any backend) of a llama-style ``config`` to ``path``.

    tokenizer_meta: the ``tokenizer.*`` keys to store (as ``load_gguf`` returns them), optional.
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
        if config.bos_token_id is not None and not (tokenizer_meta or {}).get("tokenizer.ggml.bos_token_id"):
            writer.add_bos_token_id(config.bos_token_id)
        if config.eos_token_id is not None and not (tokenizer_meta or {}).get("tokenizer.ggml.eos_token_id"):
            writer.add_eos_token_id(config.eos_token_id)
        _tokenizer_kv(writer, tokenizer_meta or {})
        for hf_name, value in host.items():
            if hf_name.endswith("q_proj.weight"):
                value = permute_rope_rows(value, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                value = permute_rope_rows(value, config.num_key_value_heads)
            if value.ndim == 1 or quant == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(hf_to_gguf_name(hf_name), np.ascontiguousarray(value))
            else:
                data = gguf.quants.quantize(np.ascontiguousarray(value), quant)
                writer.add_tensor(hf_to_gguf_name(hf_name), data, raw_dtype=quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    os.stat(path)  # the rename happened
