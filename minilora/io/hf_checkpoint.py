"""Hugging Face Llama checkpoint folders: config.json + model.safetensors (or shards + index).

Loading maps LlamaConfig keys onto ModelConfig (the names are the same except ``rms_norm_eps`` ->
``norm_eps``) and checks every weight's name and shape against the config before a model is built.
Saving writes what ``transformers.LlamaForCausalLM.from_pretrained`` reads: config.json with
``architectures: ["LlamaForCausalLM"]`` and float32 weights in model.safetensors (tied lm_head
omitted, as transformers does), each file written atomically.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from ..errors import FileFormatError, MissingFileError
from ..models.config import ModelConfig
from .atomic import write_text_atomic
from .files import read_json_object
from .gguf import check_llama_state_dict
from .safetensors_io import load_safetensors, save_safetensors

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
# HF LlamaConfig key -> ModelConfig field (same name unless listed)
_RENAMED = {"rms_norm_eps": "norm_eps"}
_COPIED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
           "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id")
_IGNORED_WEIGHTS = ("rotary_emb.inv_freq",)  # buffers older checkpoints saved; recomputed by minilora


def config_from_hf(data: dict, path=None) -> ModelConfig:
    """ModelConfig from the dict of a Llama config.json (unknown keys are ignored: HF adds many)."""
    if data.get("model_type") != "llama":
        raise FileFormatError(path, f"model_type {data.get('model_type')!r} is not supported (minilora reads 'llama')")
    if data.get("rope_scaling"):
        raise FileFormatError(path, f"rope_scaling {data['rope_scaling']!r} is not supported")
    if data.get("hidden_act", "silu") != "silu":
        raise FileFormatError(path, f"hidden_act {data['hidden_act']!r} is not supported (Llama uses 'silu')")
    fields = {"style": "llama", "tie_word_embeddings": False}  # LlamaConfig's default is untied
    for key in _COPIED:
        if key in data and data[key] is not None:
            fields[_RENAMED.get(key, key)] = data[key]
    if isinstance(fields.get("eos_token_id"), list):  # generation may list several; keep the first
        fields["eos_token_id"] = fields["eos_token_id"][0] if fields["eos_token_id"] else None
    for key in ("norm_eps", "rope_theta"):
        if key in fields and (isinstance(fields[key], bool) or not isinstance(fields[key], (int, float))):
            raise FileFormatError(path, f"{key} must be a number, got {fields[key]!r}")
    try:
        config = ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"invalid model config: {exc}") from None
    head_dim = data.get("head_dim")
    if head_dim is not None and head_dim != config.head_dim:
        raise FileFormatError(path, f"head_dim {head_dim} != hidden_size / num_attention_heads = {config.head_dim}")
    return config


def config_to_hf(config: ModelConfig) -> dict:
    """The config.json dict transformers' LlamaConfig expects for ``config``."""
    if config.style != "llama":
        raise ValueError(f"config_to_hf: only llama-style configs map to LlamaForCausalLM, got {config.style!r}")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "rope_scaling": None,
        "tie_word_embeddings": config.tie_word_embeddings, "attention_bias": config.attention_bias,
        "attention_dropout": 0.0, "mlp_bias": config.mlp_bias, "initializer_range": 0.02,
        "pretraining_tp": 1, "use_cache": True, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "torch_dtype": "float32",
    }


def _weight_files(folder) -> list[str]:
    single = os.path.join(folder, WEIGHTS_FILE)
    if os.path.isfile(single):
        return [single]
    index_path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(index_path):
        raise MissingFileError(single, f"{WEIGHTS_FILE} (or {INDEX_FILE})")
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FileFormatError(index_path, "'weight_map' must map tensor names to shard file names")
    files = []
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FileFormatError(index_path, f"shard name {shard!r} is not a plain file name in the folder")
        files.append(os.path.join(folder, shard))
    return files


def load_hf_checkpoint(folder, dtype=np.float32) -> tuple[ModelConfig, dict]:
    """Read a Llama checkpoint folder -> (ModelConfig, state_dict of HF name -> NumPy array of ``dtype``)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise MissingFileError(folder, "checkpoint folder")
    config_path = os.path.join(folder, CONFIG_FILE)
    config = config_from_hf(read_json_object(config_path), config_path)
    state = {}
    for path in _weight_files(folder):
        tensors, _ = load_safetensors(path)
        for name, value in tensors.items():
            if name.endswith(_IGNORED_WEIGHTS):
                continue
            if name in state:
                raise FileFormatError(path, f"tensor {name!r} appears in two shards")
            if not np.issubdtype(value.dtype, np.floating):
                raise FileFormatError(path, f"tensor {name!r} has dtype {value.dtype}, expected floating point")
            state[name] = value.astype(dtype, copy=False)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: the embedding is the head
    check_llama_state_dict(state, config, folder)
    return config, state


def save_hf_checkpoint(folder, model=None, *, config: ModelConfig | None = None, state: dict | None = None,
                       tokenizer=None) -> None:
    """Write ``model`` (a Transformer: its .config and .state_dict()), or ``config`` + ``state``, to ``folder``.

    Files: config.json, model.safetensors (float32), and tokenizer.json + tokenizer_config.json when a
    tokenizer is given. Names and shapes are checked against the config before anything is written.
    """
    folder = os.fspath(folder)
    if model is not None:
        config, state = model.config, model.state_dict()
    if not isinstance(config, ModelConfig) or not isinstance(state, dict):
        raise ValueError("save_hf_checkpoint: pass a model, or config= (ModelConfig) and state= (dict)")
    host = {name: np.asarray(backend.to_numpy(value), dtype=np.float32) for name, value in state.items()}
    if config.tie_word_embeddings:
        host.pop("lm_head.weight", None)
    try:
        check_llama_state_dict(host, config, None)
    except FileFormatError as exc:
        raise ValueError(f"save_hf_checkpoint: state does not fit the config: {exc.problem} (a LoRA-wrapped "
                         "model must be merged and unwrapped first)") from None
    hf_config = config_to_hf(config)
    os.makedirs(folder, exist_ok=True)
    save_safetensors(os.path.join(folder, WEIGHTS_FILE), host, metadata={"format": "pt"})
    write_text_atomic(os.path.join(folder, CONFIG_FILE), json.dumps(hf_config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
