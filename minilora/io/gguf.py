"""Load a Llama-architecture GGUF file (llama.cpp's format) into a ModelConfig and float weights.

The ``gguf`` package parses the file; ``gguf_check.check_gguf`` walks the header first so that a
corrupted file fails with a ``FileFormatError`` naming the file instead of an IndexError or a
runaway allocation. Supported tensor types: whatever ``gguf.quants.dequantize`` decodes, which
includes F32, F16, BF16, Q4_0, Q4_1, Q8_0 (the ones tested) and the K-quants.

Two conventions differ from Hugging Face checkpoints:

- Shapes. GGUF lists dimensions innermost first (ggml's ``ne``): a Linear weight of HF shape
  (d_out, d_in) is stored with ne = [d_in, d_out]. ``gguf`` already returns row-major rows, so each
  dequantized tensor is reshaped to ``reversed(ne)`` = (d_out, d_in).
- RoPE pairs. llama.cpp rotates interleaved pairs (x[2i], x[2i+1]); HF rotates half-split pairs
  (x[i], x[i + hs/2]). llama.cpp's converter therefore permutes the rows of W_q and W_k inside each
  head: HF row (half h, index i) is stored at row (i, h). ``unpermute_rope_rows`` applies the
  inverse, so minilora uses the HF half-split layout (``rope_interleaved=False``) for every model.
  W_q is un-permuted with nh heads, W_k with nkv heads.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..errors import FileFormatError, MiniloraError
from ..models.config import ModelConfig
from .gguf_check import check_gguf

# GGUF tensor name -> HF name; "{i}" is the block index.
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def gguf_to_hf_name(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for unknown names."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = _BLOCK_RE.match(name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{match.group(3)}"
    return None


def hf_to_gguf_name(name: str) -> str | None:
    """Inverse of ``gguf_to_hf_name``."""
    for gguf_name, hf_name in _TOP_NAMES.items():
        if name == hf_name:
            return gguf_name
    match = re.match(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
    if match:
        for short, long in _BLOCK_NAMES.items():
            if match.group(2) == long:
                return f"blk.{match.group(1)}.{short}.{match.group(3)}"
    return None


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF half-split row order -> llama.cpp interleaved order (what llama.cpp's converter does).

    w: (n_heads * hs, ...). Within a head, row (h, i) with h in {0, 1} (first or second half) and
    i < hs/2 moves to row (i, h).
    """
    rows = w.shape[0]
    hs = rows // n_heads
    return w.reshape(n_heads, 2, hs // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (nh, hs/2, 2, ...)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp interleaved row order -> HF half-split order; inverse of ``permute_rope_rows``."""
    rows = w.shape[0]
    hs = rows // n_heads
    return w.reshape(n_heads, hs // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (nh, 2, hs/2, ...)


def _fields(reader, path) -> dict:
    """All metadata as plain Python values (str, int, float, bool, lists)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _require(meta: dict, key: str, path, kind=int):
    if key not in meta:
        raise FileFormatError(path, f"metadata key {key!r} is missing")
    value = meta[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise FileFormatError(path, f"metadata {key!r} must be a positive integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise FileFormatError(path, f"metadata {key!r} must be a positive number, got {value!r}")
    return value


def config_from_metadata(meta: dict, tensor_names, path=None) -> ModelConfig:
    """ModelConfig(style="llama") from GGUF metadata; ``tensor_names`` tells whether lm_head is tied."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise FileFormatError(path, f"architecture {arch!r} is not supported (minilora reads 'llama' GGUF files)")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, list) and tokens else _require(meta, "llama.vocab_size", path)
    n_heads = _require(meta, "llama.attention.head_count", path)
    hidden = _require(meta, "llama.embedding_length", path)
    rope_dim = meta.get("llama.rope.dimension_count")
    if rope_dim is not None and rope_dim != hidden // n_heads:
        raise FileFormatError(path, f"partial RoPE (rope.dimension_count {rope_dim} != head size "
                                    f"{hidden // n_heads}) is not supported")
    try:
        return ModelConfig(
            style="llama", vocab_size=vocab, hidden_size=hidden,
            intermediate_size=_require(meta, "llama.feed_forward_length", path),
            num_hidden_layers=_require(meta, "llama.block_count", path),
            num_attention_heads=n_heads,
            num_key_value_heads=meta.get("llama.attention.head_count_kv", n_heads),
            max_position_embeddings=meta.get("llama.context_length", 2048),
            # stored as float32: 1e-5 reads back as 9.9999997e-06; keep the shortest decimal that round-trips
            norm_eps=float(str(np.float32(_require(meta, "llama.attention.layer_norm_rms_epsilon", path, float)))),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            rope_interleaved=False,  # Q/K are un-permuted on load (see module docstring)
            tie_word_embeddings="output.weight" not in set(tensor_names),
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        )
    except (ValueError, TypeError) as exc:
        raise FileFormatError(path, f"metadata does not describe a valid model: {exc}") from None


DECODE_CHUNK_BYTES = 16 << 20  # float output decoded per call: the temporaries stay this small


def _stored(tensor, path) -> np.ndarray:
    """The tensor's stored values (quantized blocks as bytes), read from the file, not the memory map.

    Pages of the map that a copy touches stay in the process's resident set until the map closes,
    so reading every tensor through it made the whole file (about 100 MiB for SmolLM2) resident by
    the end of a 4-bit load; a plain read holds one tensor at a time.
    """
    like = tensor.data  # a view of the map: its dtype and shape, no page is read
    with open(path, "rb") as f:
        f.seek(int(tensor.data_offset))
        raw = f.read(like.nbytes)
    if len(raw) != like.nbytes:
        raise FileFormatError(path, f"tensor {tensor.name!r}: the file ends inside its data")
    return np.frombuffer(raw, dtype=like.dtype).reshape(like.shape)


def _dequantize(tensor, dtype, path) -> np.ndarray:
    """The tensor as a new ``dtype`` array of shape reversed(ne), decoded in row chunks.

    ``gguf.quants.dequantize`` makes about two float32 copies of what it decodes; chunk by chunk
    into one output array, the largest tensor (the embedding) costs its own size, not three times.
    """
    from gguf import quants

    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # ne is innermost-first
    out = np.empty(shape, dtype=dtype)
    rows_out = out.reshape(-1, shape[-1])                             # (rows, row length)
    stored = _stored(tensor, path)
    rows_in = stored.reshape(-1, stored.shape[-1])                     # (rows, row bytes or values)
    step = max(1, DECODE_CHUNK_BYTES // (shape[-1] * out.itemsize))
    for start in range(0, rows_out.shape[0], step):
        try:
            with np.errstate(invalid="ignore", over="ignore"):  # corrupt scales are reported below instead
                chunk = quants.dequantize(rows_in[start:start + step], tensor.tensor_type)
        except NotImplementedError:
            raise FileFormatError(path, f"tensor {tensor.name!r}: type {tensor.tensor_type.name} "
                                        "cannot be dequantized by the installed gguf package") from None
        rows_out[start:start + step] = chunk
        if not np.isfinite(rows_out[start:start + step]).all():
            raise FileFormatError(path, f"tensor {tensor.name!r} contains NaN or infinite values")
    return out


def _reader_class():
    from gguf import GGUFReader

    class PlainArrayReader(GGUFReader):
        """GGUFReader over a plain ndarray view of its memory map.

        The reader slices its buffer once per metadata item (about 250k times for a 49k-token
        vocabulary); slices of an ``np.memmap`` pay for subclass bookkeeping on each, which made
        reading the header 3-5x slower. The view shares the same mapped memory.
        """

        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            self._plain_data = np.asarray(value)

    return PlainArrayReader


def read_gguf(path):
    """Check and open ``path`` -> (GGUFReader, metadata dict). Errors name the file."""
    path = os.fspath(path)
    check_gguf(path)
    try:
        reader = _reader_class()(path)
        return reader, _fields(reader, path)
    except MiniloraError:
        raise
    except Exception as exc:  # what the gguf package raises on inconsistent content
        raise FileFormatError(path, f"invalid GGUF file: {type(exc).__name__}: {exc}") from None


def _hf_named_tensors(reader, path) -> list:
    """[(HF name, GGUF tensor)] of the file; an unknown tensor name is a FileFormatError."""
    named = []
    for tensor in reader.tensors:
        name = gguf_to_hf_name(tensor.name)
        if name is None:
            if tensor.name.startswith("rope_freqs"):  # precomputed RoPE scaling factors: unused
                continue
            raise FileFormatError(path, f"unexpected tensor {tensor.name!r} for a llama model")
        named.append((name, tensor))
    return named


def _decode(name: str, tensor, config: ModelConfig, dtype, path) -> np.ndarray:
    """One tensor dequantized to ``dtype``, W_q / W_k un-permuted to the HF half-split layout."""
    try:
        value = _dequantize(tensor, dtype, path)
    except MiniloraError:
        raise
    except Exception as exc:
        raise FileFormatError(path, f"invalid GGUF tensor data: {type(exc).__name__}: {exc}") from None
    if name.endswith("q_proj.weight"):
        value = unpermute_rope_rows(value, config.num_attention_heads)
    elif name.endswith("k_proj.weight"):
        value = unpermute_rope_rows(value, config.num_key_value_heads)
    return value


class _Shape:
    """A tensor's shape alone, for ``check_llama_state_dict`` before anything is decoded."""

    def __init__(self, shape):
        self.shape = shape


def open_gguf(path, dtype=np.float32):
    """Read a Llama GGUF's header -> (ModelConfig, tokenizer metadata, tensors).

    ``tensors`` is an iterator of (HF name, NumPy array): each tensor is dequantized to ``dtype``
    only when the iterator reaches it, so a caller that converts each one as it comes (e.g. to
    4 bits) never holds the whole float model. Names and shapes are checked against the config
    before anything is decoded.
    """
    path = os.fspath(path)
    reader, meta = read_gguf(path)
    try:
        config = config_from_metadata(meta, [t.name for t in reader.tensors], path)
        named = _hf_named_tensors(reader, path)
        shapes = {name: _Shape(tuple(int(d) for d in reversed(t.shape.tolist()))) for name, t in named}
    except MiniloraError:
        raise
    except Exception as exc:
        raise FileFormatError(path, f"invalid GGUF tensor data: {type(exc).__name__}: {exc}") from None
    check_llama_state_dict(shapes, config, path)
    tokenizer_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    reader.fields.clear()  # the parsed key-value arrays (33 MiB for a 49k vocabulary) are copied into meta
    return config, tokenizer_meta, ((name, _decode(name, t, config, dtype, path)) for name, t in named)


def load_gguf(path, dtype=np.float32):
    """Read a Llama GGUF -> (ModelConfig, state_dict of HF name -> NumPy array, tokenizer metadata).

    Every tensor is dequantized to ``dtype`` (float32 by default); W_q and W_k are un-permuted to
    the HF half-split RoPE layout. Tokenizer metadata: the ``tokenizer.*`` keys (vocabulary, merges,
    token types, special ids, chat template) for ``Tokenizer.from_gguf_metadata``.
    """
    config, tokenizer_meta, tensors = open_gguf(path, dtype)
    return config, dict(tensors), tokenizer_meta


def llama_shapes(config: ModelConfig) -> dict:
    """HF name -> expected shape of every weight of a Llama model with ``config``."""
    C, F, V, hs = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    q, kv = config.num_attention_heads * hs, config.num_key_value_heads * hs
    shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, C), p + "self_attn.k_proj.weight": (kv, C),
                       p + "self_attn.v_proj.weight": (kv, C), p + "self_attn.o_proj.weight": (C, q),
                       p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                       p + "mlp.down_proj.weight": (C, F), p + "input_layernorm.weight": (C,),
                       p + "post_attention_layernorm.weight": (C,)})
    return shapes


def check_llama_state_dict(state: dict, config: ModelConfig, path=None) -> None:
    """FileFormatError unless ``state`` has exactly the weights (and shapes) ``config`` needs.

    Bias tensors are accepted when the config enables them.
    """
    per_layer, top = 9, 2 + (not config.tie_word_embeddings)
    if len(state) < top + per_layer * config.num_hidden_layers:  # before listing what a huge config claims
        raise FileFormatError(path, f"missing weights: {len(state)} tensors for a config that needs "
                                    f"{top + per_layer * config.num_hidden_layers}")
    expected = llama_shapes(config)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise FileFormatError(path, f"missing {len(missing)} weights, e.g. {missing[:3]}")
    for name, value in state.items():
        if name in expected:
            if tuple(value.shape) != expected[name]:
                raise FileFormatError(path, f"weight {name!r} has shape {tuple(value.shape)}, "
                                            f"expected {expected[name]} for this config")
        elif not (name.endswith(".bias") and (config.attention_bias or config.mlp_bias)):
            raise FileFormatError(path, f"unexpected weight {name!r} for this config")
