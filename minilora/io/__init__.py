"""File formats: safetensors, GGUF (llama.cpp), Hugging Face checkpoint folders, tokenizers."""
from .atomic import atomic_open, atomic_path, write_text_atomic
from .gguf import (gguf_to_hf_name, hf_to_gguf_name, load_gguf, open_gguf, permute_rope_rows, read_gguf,
                   unpermute_rope_rows)
from .gguf_check import check_gguf
from .gguf_write import save_gguf
from .hf_checkpoint import config_from_hf, config_to_hf, load_hf_checkpoint, save_hf_checkpoint
from .pretrained import (load_model, load_pretrained, load_tokenizer, model_from_state_dict, resolve_model,
                         smollm2_available, smollm2_gguf_path, tokenizer_metadata)
from .safetensors_io import load_safetensors, read_safetensors_metadata, save_safetensors
from .tokenizer import Tokenizer

__all__ = ["atomic_open", "atomic_path", "write_text_atomic", "gguf_to_hf_name", "hf_to_gguf_name", "load_gguf",
           "open_gguf", "permute_rope_rows", "read_gguf", "unpermute_rope_rows", "check_gguf", "save_gguf",
           "config_from_hf", "config_to_hf", "load_hf_checkpoint", "save_hf_checkpoint", "load_model",
           "load_pretrained", "load_tokenizer", "model_from_state_dict", "resolve_model", "smollm2_available",
           "smollm2_gguf_path", "tokenizer_metadata", "load_safetensors", "read_safetensors_metadata",
           "save_safetensors", "Tokenizer"]
