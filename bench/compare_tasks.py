"""What each framework runs for each of compare_torch's tasks: build the model (LoRA, QLoRA, with or
without gradient checkpointing, or for generation) and return run(), one timed repetition.

``minilora_setup(task, args)`` and ``torch_setup(task, args)`` run inside compare_torch's worker
processes (one per framework, threads already set); SETTINGS names every row's settings, which the
JSON records. The training step is the same on both sides: random token ids (seed 0), LoRA r=8
(alpha 16) on every q_proj and v_proj, forward + cross entropy + backward + AdamW (lr 1e-4).
"""
from __future__ import annotations

import os
import sys
import time

TASKS = ("lora", "lora_ckpt", "qlora", "qlora_ckpt", "generate")
SETTINGS = {
    "lora": dict(base="float32", checkpointing=False),
    "lora_ckpt": dict(base="float32", checkpointing=True),
    "qlora": dict(base="nf4 + double quant, float32 compute", checkpointing=False),
    "qlora_ckpt": dict(base="nf4 + double quant, float32 compute", checkpointing=True,
                       torch_recipe="prepare_model_for_kbit_training (gradient checkpointing on)"),
    "generate": dict(base="float32", decoding="greedy, KV cache, batch 1"),
}
PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was built"


def _tokens(vocab: int, batch: int, seq: int):
    import numpy as np
    tokens = np.random.default_rng(0).integers(0, vocab, (batch, seq + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _prompt_ids():
    from minilora.io import load_tokenizer
    return load_tokenizer("smollm2-135m").encode(PROMPT)


def _train_step(step, loss_fn):
    """-> run() timing one optimizer step of loss_fn() (zero_grad, loss, backward, step)."""
    def run():
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        step()
        return {"seconds": time.perf_counter() - t0, "loss": float(loss.item())}
    return run


def minilora_setup(task: str, args):
    """-> run() returning a dict with at least "seconds"."""
    from common import load_smollm2
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.models import generate, lm_loss
    from minilora.optim import AdamW
    from minilora.tensor import no_grad

    model, how = load_smollm2(task.startswith("qlora"))
    print(f"minilora {task}: {how}", file=sys.stderr)
    if task == "generate":
        model.eval()
        prompt = _prompt_ids()

        def run():
            t0 = time.perf_counter()
            with no_grad():
                out = generate(model, prompt, args.new_tokens)
            return {"seconds": time.perf_counter() - t0, "tokens": [int(t) for t in out[len(prompt):]]}
        return run
    model.gradient_checkpointing = SETTINGS[task]["checkpointing"]
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    lora.train()
    optimizer = AdamW(lora.trainable_parameters(), lr=1e-4)
    ids, targets = _tokens(model.config.vocab_size, args.batch, args.seq)

    def loss():
        optimizer.zero_grad()
        return lm_loss(lora, ids, targets)
    return _train_step(optimizer.step, loss)


def write_hf_copy(folder: str) -> None:
    """The GGUF as a float32 safetensors model folder (what a 4-bit from_pretrained needs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from minilora.io import smollm2_gguf_path
    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):  # the GGUF marker; the copy is plain float32
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)


def _torch_4bit_model(args, checkpointing: bool):
    """bitsandbytes NF4 + double quantization at load, then PEFT's prepare_model_for_kbit_training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32, quantization_config=config)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)


def torch_setup(task: str, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from minilora.io import smollm2_gguf_path
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    checkpointing = SETTINGS[task].get("checkpointing", False)
    if task.startswith("qlora"):
        model = _torch_4bit_model(args, checkpointing)
    else:
        path = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                     dtype=torch.float32)
    if task == "generate":
        model.eval()
        prompt = torch.tensor([_prompt_ids()])

        def run():
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, use_cache=True)
            return {"seconds": time.perf_counter() - t0, "tokens": out[0, prompt.shape[1]:].tolist()}
        return run
    if checkpointing and not task.startswith("qlora"):
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora.train()
    if checkpointing != bool(getattr(model, "is_gradient_checkpointing", False)):
        raise RuntimeError(f"{task}: torch model has gradient checkpointing {model.is_gradient_checkpointing}")
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
    ids, targets = (torch.from_numpy(a) for a in _tokens(model.config.vocab_size, args.batch, args.seq))

    def loss():
        optimizer.zero_grad(set_to_none=True)
        logits = lora(input_ids=ids).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return _train_step(optimizer.step, loss)
