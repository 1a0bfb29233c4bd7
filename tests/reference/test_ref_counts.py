"""Parameter counts equal PEFT's get_nb_trainable_parameters over bitsandbytes 4-bit layers.

A tiny Llama in transformers with every projection replaced by ``bnb.nn.Linear4bit`` (NF4, double
quantization; PEFT counts a Params4bit as 2 x its uint8 bytes) and LoRA r=4 on q_proj and v_proj:
minilora's QLoRA and LoRA models of the same architecture report the same (trainable, total).
"""
from __future__ import annotations

import bitsandbytes as bnb
import torch

from minilora.lora import LoraConfig, get_lora_model
from minilora.models import ModelConfig, Transformer
from minilora.quant import quantize_model

SIZES = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=True)


def _to_4bit(module):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear) and name != "lm_head":
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      quant_type="nf4", compress_statistics=True)
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)._quantize("cpu")
            setattr(module, name, layer)
        else:
            _to_4bit(child)


def test_qlora_counts_equal_peft_over_bitsandbytes():
    from peft import LoraConfig as PeftLoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    theirs = LlamaForCausalLM(LlamaConfig(**SIZES))
    _to_4bit(theirs)
    assert type(theirs.model.layers[0].mlp.up_proj.weight).__name__ == "Params4bit"
    expected = get_peft_model(theirs, PeftLoraConfig(r=4, target_modules=["q_proj", "v_proj"])) \
        .get_nb_trainable_parameters()
    for quantize in (True, False):
        ours = Transformer(ModelConfig(**SIZES), seed=0)
        if quantize:
            quantize_model(ours)
        counts = get_lora_model(ours, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).get_nb_trainable_parameters()
        assert counts == expected, (quantize, counts, expected)
