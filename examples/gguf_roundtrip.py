"""GGUF in and out: load a Llama GGUF straight into NF4, merge an adapter, export GGUF for llama.cpp.

A small random Llama with a byte-level tokenizer stands in for SmolLM2 (the same calls work on
"smollm2-135m"):
1. write it as a GGUF file (what llama.cpp's converter would give us);
2. load it straight into NF4, one tensor at a time: the same bytes as quantizing the float model;
3. add a LoRA adapter, then `minilora merge --gguf` writes the merged model as GGUF (F32 and Q8_0);
4. read the F32 file back: the same logits and greedy tokens as the merged model, bit for bit.

    python examples/gguf_roundtrip.py
"""
import os
import tempfile

import numpy as np

from minilora import cli
from minilora.io import load_hf_checkpoint, load_pretrained, save_gguf
from minilora.io.pretrained import model_from_state_dict
from minilora.lora import LoraConfig, get_lora_model, save_adapter
from minilora.models import ModelConfig, Transformer, generate
from minilora.quant import Linear4bit, QuantSpec, quantize_model
from minilora.tensor import no_grad


def byte_level_tokenizer() -> dict:
    """GGUF tokenizer keys: <|im_start|>, <|im_end|>, GPT-2's 256-character byte alphabet, one merge."""
    from tokenizers.pre_tokenizers import ByteLevel
    tokens = ["<|im_start|>", "<|im_end|>"] + sorted(ByteLevel.alphabet()) + ["he"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": ["h e"],
            "tokenizer.ggml.token_type": [3, 3] + [1] * 257, "tokenizer.ggml.eos_token_id": 1}


def packed_bytes(model) -> dict:
    return {path: np.asarray(m.weight) for path, m in model.named_modules() if isinstance(m, Linear4bit)}


def main(folder=None, seed=0):
    folder = folder or tempfile.mkdtemp(prefix="gguf_roundtrip_")
    config = ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=1)
    base = os.path.join(folder, "base.gguf")
    save_gguf(base, config, Transformer(config, seed=seed).state_dict(), byte_level_tokenizer(), qtype="Q8_0")

    # 2. straight into NF4 vs float-then-quantize: identical packed bytes
    nf4, tokenizer = load_pretrained(base, quantize=QuantSpec())
    reference = load_pretrained(base)[0]
    quantize_model(reference)
    same = all(np.array_equal(a, packed_bytes(reference)[p]) for p, a in packed_bytes(nf4).items())
    print(f"loaded into NF4: {len(packed_bytes(nf4))} Linear4bit layers, {nf4.num_parameters():,} parameters, "
          f"bytes equal to quantize_model: {same}")

    # 3. an adapter (random B, so it changes the output), merged and exported
    lora = get_lora_model(load_pretrained(base)[0], LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"],
                                                                init_lora_weights=False), seed=seed)
    save_adapter(lora, os.path.join(folder, "adapter"))
    for qtype in ("F32", "Q8_0"):
        cli.main(["merge", "--model", base, "--adapter", os.path.join(folder, "adapter"), "--out",
                  os.path.join(folder, "merged"), "--gguf", os.path.join(folder, f"merged-{qtype}.gguf"),
                  "--gguf-type", qtype])

    # 4. read back
    merged = model_from_state_dict(*load_hf_checkpoint(os.path.join(folder, "merged")))
    ids = np.asarray([tokenizer.encode("hello, GGUF")])
    with no_grad():
        expected = merged(ids).numpy()
        result = {"nf4_bytes_equal": same}
        for qtype in ("F32", "Q8_0"):
            back = load_pretrained(os.path.join(folder, f"merged-{qtype}.gguf"))[0]
            result[qtype] = float(np.max(np.abs(back(ids).numpy() - expected)))
            result[f"{qtype}_greedy_equal"] = bool(np.array_equal(generate(back, ids, 8), generate(merged, ids, 8)))
            print(f"{qtype}: max |logit difference| to the merged model {result[qtype]:.2e}, "
                  f"same greedy tokens: {result[f'{qtype}_greedy_equal']}")
    return result


if __name__ == "__main__":
    main()
