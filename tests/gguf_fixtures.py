"""A tiny Llama GGUF with a real byte-level BPE tokenizer and a ChatML template, for export and loading tests."""
from __future__ import annotations

from minilora.io import save_gguf
from minilora.models import ModelConfig, Transformer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")


def tiny_tokenizer_meta() -> dict:
    """GGUF tokenizer keys: 3 control tokens, GPT-2's 256-character byte alphabet, 3 merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    merged = ["he", "ll", "Ġt"]
    tokens = SPECIALS + alphabet + merged
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
            "tokenizer.ggml.merges": ["h e", "l l", "Ġ t"], "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0,
            "tokenizer.chat_template": CHAT_TEMPLATE}


def tiny_config(tie: bool = True, **overrides) -> ModelConfig:
    vocab = len(tiny_tokenizer_meta()["tokenizer.ggml.tokens"])
    settings = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=500.0,
                    norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie)
    return ModelConfig(**{**settings, **overrides})


def write_tiny_llama_gguf(path, tie: bool = True, seed: int = 0, qtype: str = "F32", **overrides):
    """Write a random tiny Llama with the tokenizer above to ``path``; returns (config, model)."""
    config = tiny_config(tie, **overrides)
    model = Transformer(config, seed=seed)
    save_gguf(path, config, model.state_dict(), tokenizer_meta=tiny_tokenizer_meta(), qtype=qtype)
    return config, model
