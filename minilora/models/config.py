"""ModelConfig: one dataclass for GPT-2-style and Llama-style decoders.

Field names follow Hugging Face's config.json (LlamaConfig) so a checkpoint's config maps one to one.
Symbols used in shapes: V vocab_size, C hidden_size, nh num_attention_heads, nkv num_key_value_heads,
hs = C / nh head size, F intermediate_size.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields

STYLES = ("llama", "gpt2")


@dataclass
class ModelConfig:
    style: str = "llama"                 # "llama": RMSNorm, RoPE, SwiGLU, GQA; "gpt2": LayerNorm, learned positions, GELU
    vocab_size: int = 256                 # V
    hidden_size: int = 64                 # C
    intermediate_size: int = 256          # F
    num_hidden_layers: int = 2
    num_attention_heads: int = 4          # nh
    num_key_value_heads: int | None = None  # nkv (None: = nh, plain multi-head attention)
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_interleaved: bool = False        # False: HF half-split pairs; True: llama.cpp (x[2i], x[2i+1]) pairs
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    dropout: float = 0.0                  # residual/attention-output dropout (training only)
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"ModelConfig.style must be one of {STYLES}, got {self.style!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ModelConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"ModelConfig: num_attention_heads {self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads {self.num_key_value_heads}")
        if self.style == "llama" and self.head_dim % 2:
            raise ValueError(f"ModelConfig: RoPE needs an even head size, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Build from a dict; unknown keys warn and are ignored (PEFT's rule)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ModelConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


# SmolLM2-135M's shape, for benches and tests that need the real proportions without the file.
SMOLLM2_135M = dict(style="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    max_position_embeddings=8192, norm_eps=1e-5, rope_theta=100000.0,
                    tie_word_embeddings=True)
