"""Decoder models: config, transformer, KV cache, generation and gradient checkpointing."""
from .attention import Attention
from .checkpoint import checkpoint
from .config import SMOLLM2_135M, ModelConfig
from .generate import generate, next_token, stream_generate
from .kv_cache import KVCache
from .transformer import MLP, DecoderLayer, DecoderModel, Transformer, as_token_ids, lm_loss

__all__ = ["Attention", "checkpoint", "SMOLLM2_135M", "ModelConfig", "generate", "next_token", "stream_generate",
           "KVCache", "MLP", "DecoderLayer", "DecoderModel", "Transformer", "as_token_ids", "lm_loss"]
