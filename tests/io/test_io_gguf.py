"""GGUF: tiny models written and read back per tensor type, the RoPE row permutation, names, config, and a fuzz."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilora import functional as F
from minilora.errors import FileFormatError, MiniloraError, MissingFileError
from minilora.io import (check_gguf, gguf_to_hf_name, hf_to_gguf_name, load_gguf, permute_rope_rows,
                         save_gguf, unpermute_rope_rows)
from minilora.io.gguf import open_gguf
from minilora.io.pretrained import model_from_state_dict
from minilora.models import ModelConfig, Transformer
from minilora.tensor import Tensor, no_grad

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=500.0, norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2)


def _tiny(tie=True, seed=3):
    config = ModelConfig(**TINY, tie_word_embeddings=tie)
    return config, Transformer(config, seed=seed)


# Worst-case error of each format for weights ~ N(0, 0.02): half a quantization step of the block's range.
@pytest.mark.parametrize("qtype, atol", [("F32", 0.0), ("F16", 1e-4), ("Q8_0", 1e-3), ("Q4_1", 1e-2), ("Q4_0", 1e-2)])
def test_write_and_read_back_each_tensor_type(tmp_path, qtype, atol):
    import gguf

    config, model = _tiny()
    state = model.state_dict()
    save_gguf(tmp_path / "m.gguf", config, state, qtype=qtype)
    loaded_config, loaded, tokenizer_meta = load_gguf(tmp_path / "m.gguf")
    assert loaded_config == config
    assert set(loaded) == set(state)
    assert tokenizer_meta == {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    quant = gguf.GGMLQuantizationType[qtype]
    for name, value in state.items():
        assert loaded[name].dtype == np.float32 and loaded[name].shape == value.shape
        np.testing.assert_allclose(loaded[name], value, atol=atol, rtol=0)
        if value.ndim == 2 and qtype != "F32":
            # exactly what the gguf package's own quantize -> dequantize gives (un-permutation is lossless)
            expected = gguf.quants.dequantize(gguf.quants.quantize(value, quant), quant) if "_proj" not in name \
                or not name.endswith(("q_proj.weight", "k_proj.weight")) else None
            if expected is not None:
                np.testing.assert_array_equal(loaded[name], expected)


def test_untied_model_round_trip_gives_identical_logits(tmp_path):
    config, model = _tiny(tie=False)
    save_gguf(tmp_path / "m.gguf", config, model.state_dict())
    loaded_config, state, _ = load_gguf(tmp_path / "m.gguf")
    assert loaded_config.tie_word_embeddings is False and "lm_head.weight" in state
    other = Transformer(loaded_config, seed=99)
    other.load_state_dict(state)
    ids = np.array([[1, 5, 9, 33, 2, 7]])
    with no_grad():
        np.testing.assert_array_equal(other(ids).data, model(ids).data)


def test_model_from_a_gguf_state_dict_is_in_eval_mode_and_equal(tmp_path):
    config, model = _tiny()
    save_gguf(tmp_path / "m.gguf", config, model.state_dict())
    cfg, state, _ = load_gguf(tmp_path / "m.gguf")
    loaded = model_from_state_dict(cfg, state)
    assert not loaded.training
    ids = np.array([[3, 4, 5]])
    with no_grad():
        np.testing.assert_array_equal(loaded(ids).data, model(ids).data)


@settings(max_examples=30)
@given(n_heads=st.integers(1, 4), half=st.integers(1, 4), d_in=st.integers(1, 5), seed=st.integers(0, 99))
def test_unpermute_inverts_permute(n_heads, half, d_in, seed):
    w = np.random.default_rng(seed).standard_normal((n_heads * 2 * half, d_in))
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(w, n_heads), n_heads), w)
    np.testing.assert_array_equal(permute_rope_rows(unpermute_rope_rows(w, n_heads), n_heads), w)


@settings(max_examples=20)
@given(n_heads=st.integers(1, 3), half=st.integers(1, 4), t=st.integers(1, 5), seed=st.integers(0, 99))
def test_interleaved_rope_on_permuted_rows_is_half_split_rope_on_hf_rows(n_heads, half, t, seed):
    """Why the permutation exists: llama.cpp's interleaved RoPE on permuted W_q gives HF's half-split
    RoPE on W_q, up to the same fixed reordering of dimensions inside each head (which leaves q . k unchanged)."""
    rng = np.random.default_rng(seed)
    hs, d_in = 2 * half, 3
    w = rng.standard_normal((n_heads * hs, d_in))       # HF layout
    x = rng.standard_normal((t, d_in))
    heads = lambda q: np.transpose(q.reshape(t, n_heads, hs), (1, 0, 2))  # noqa: E731  (nh, T, hs)
    pos = np.arange(t)
    cos_h, sin_h = F.rope_tables(np, pos, hs, base=100.0, interleaved=False, dtype=np.float64)
    cos_i, sin_i = F.rope_tables(np, pos, hs, base=100.0, interleaved=True, dtype=np.float64)
    hf = F.rope(Tensor(heads(x @ w.T)), cos_h, sin_h, interleaved=False).data            # (nh, T, hs)
    cpp = F.rope(Tensor(heads(x @ permute_rope_rows(w, n_heads).T)), cos_i, sin_i, interleaved=True).data
    # llama.cpp's dimension (i, h) is HF's (h, i): undo that order on the last axis
    back = cpp.reshape(n_heads, t, half, 2).swapaxes(-1, -2).reshape(n_heads, t, hs)
    np.testing.assert_allclose(back, hf, atol=1e-12)


def test_name_maps_are_inverse():
    names = ["token_embd.weight", "output_norm.weight", "output.weight"] + [
        f"blk.7.{p}.weight" for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                      "ffn_down", "attn_norm", "ffn_norm")]
    for name in names:
        assert hf_to_gguf_name(gguf_to_hf_name(name)) == name
    assert gguf_to_hf_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_to_hf_name("blk.x.attn_q.weight") is None and gguf_to_hf_name("mystery") is None


def _gguf_with(tmp_path, arch="llama", extra=None, drop=None, tensors=None):
    import gguf

    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(path, arch)
    meta = {"block_count": 1, "embedding_length": 8, "feed_forward_length": 16, "head_count": 2,
            "head_count_kv": 2, "layer_norm_rms_eps": 1e-5}
    meta.update(extra or {})
    for key, value in meta.items():
        if key != drop:
            getattr(w, f"add_{key}")(value)
    for name, value in (tensors or {"token_embd.weight": np.zeros((4, 8), np.float32)}).items():
        w.add_tensor(name, value)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_metadata_problems_name_the_file_and_the_key(tmp_path):
    with pytest.raises(FileFormatError, match="architecture 'gpt2'"):
        load_gguf(_gguf_with(tmp_path, arch="gpt2"))
    with pytest.raises(FileFormatError, match="attention.head_count"):
        load_gguf(_gguf_with(tmp_path, extra={"vocab_size": 4}, drop="head_count"))
    with pytest.raises(FileFormatError, match="vocab_size"):
        load_gguf(_gguf_with(tmp_path))  # no vocabulary anywhere
    with pytest.raises(FileFormatError, match="missing weights") as info:
        load_gguf(_gguf_with(tmp_path, extra={"vocab_size": 4}))
    assert "x.gguf" in str(info.value)
    with pytest.raises(FileFormatError, match="unexpected tensor 'mystery.weight'"):
        load_gguf(_gguf_with(tmp_path, extra={"vocab_size": 4}, tensors={"mystery.weight": np.zeros(8, np.float32)}))


def test_a_huge_block_count_fails_fast(tmp_path):
    """A corrupted block_count must not make the loader enumerate 2**32 layers' weight names."""
    with pytest.raises(FileFormatError, match="missing weights: 1 tensors for a config that needs 38654705657"):
        load_gguf(_gguf_with(tmp_path, extra={"vocab_size": 4, "block_count": 2**32 - 1}))


def test_structural_errors(tmp_path):
    good = _gguf_with(tmp_path, extra={"vocab_size": 4})
    raw = good.read_bytes()
    info = check_gguf(good)
    assert info["version"] == 3 and info["tensor_count"] == 1 and info["data_offset"] % 32 == 0
    cases = {
        "magic": (b"GGML" + raw[4:], "magic"),
        "version": (raw[:4] + struct.pack("<I", 9) + raw[8:], "version 9"),
        "truncated": (raw[:-16], "past the end"),
        "header_only": (raw[:30], "more than a 30-byte file"),
        "mid_metadata": (raw[:120], "truncated"),
        "kv_count": (raw[:16] + struct.pack("<Q", 2**60) + raw[24:], "more than"),
        "tiny": (b"GGUF", "only 4 bytes"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(FileFormatError, match=match) as err:
            load_gguf(path)
        assert str(path) in str(err.value), name
    with pytest.raises(MissingFileError):
        load_gguf(tmp_path / "absent.gguf")


def test_unknown_tensor_type_is_named(tmp_path):
    path = _gguf_with(tmp_path, extra={"vocab_size": 4})
    raw = bytearray(path.read_bytes())
    name = b"token_embd.weight"
    at = raw.index(name) + len(name) + 4 + 2 * 8  # after n_dims and two dims: the u32 type
    raw[at:at + 4] = struct.pack("<I", 250)
    path.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="unknown tensor type 250"):
        load_gguf(path)


@pytest.fixture(scope="module")
def fuzz_state(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf_fuzz")
    config = ModelConfig(**dict(TINY, hidden_size=32, num_hidden_layers=1))
    state = Transformer(config, seed=1).state_dict()
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"t{i}" for i in range(64)],
            "tokenizer.ggml.token_type": [1] * 64}
    save_gguf(folder / "valid.gguf", config, state, tokenizer_meta=meta, qtype="Q8_0")
    counter = {"n": 0}
    yield folder, (folder / "valid.gguf").read_bytes(), counter
    print(f"\nGGUF fuzz: {counter['n']} inputs tried, each loaded or raised a MiniloraError")


@settings(max_examples=120)
@given(data=st.data())
def test_fuzz_mutated_and_random_bytes_raise_only_minilora_errors(fuzz_state, data):
    folder, valid, counter = fuzz_state
    header_end = valid.index(b"blk.0.attn_norm") + 400  # mutate mostly the header, where parsing happens
    kind = data.draw(st.sampled_from(["mutate", "mutate_u64", "truncate", "random"]))
    raw = bytearray(valid)
    if kind == "mutate":
        for pos, value in data.draw(st.lists(st.tuples(st.integers(0, header_end), st.integers(0, 255)),
                                             min_size=1, max_size=4)):
            raw[pos] = value
    elif kind == "mutate_u64":  # plant a huge count or length somewhere in the header
        pos = data.draw(st.integers(4, header_end - 8))
        raw[pos:pos + 8] = struct.pack("<Q", data.draw(st.sampled_from([2**63, 2**40, 2**32 + 1, 10**6, 0])))
    elif kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(valid) - 1))]
    else:
        raw = bytearray(b"GGUF" + data.draw(st.binary(max_size=120)))
    path = folder / "f.gguf"
    path.write_bytes(bytes(raw))
    counter["n"] += 1
    try:
        load_gguf(path)
    except MiniloraError:
        pass


def _mapped_rss_kib(path) -> int:
    """Resident KiB of this process's memory maps of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
                inside = len(head) >= 6 and head[-1] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux /proc/self/smaps")
def test_reading_tensors_leaves_the_file_map_unread(tmp_path):
    """Decoding goes through plain reads, so a 4-bit load never holds the whole file in its map."""
    config = ModelConfig(**{**TINY, "vocab_size": 8192, "hidden_size": 256, "intermediate_size": 256,
                            "num_attention_heads": 4, "num_key_value_heads": 2})
    path = tmp_path / "m.gguf"
    save_gguf(path, config, Transformer(config, seed=0).state_dict(), qtype="F32")  # 8 MiB embedding
    _, _, tensors = open_gguf(path)
    decoded, mapped = {}, []
    for name, value in tensors:  # the reader's map stays open until the last tensor
        decoded[name] = value
        mapped.append(_mapped_rss_kib(path.resolve()))
    assert decoded["model.embed_tokens.weight"].shape == (8192, 256)
    assert 0 < max(mapped) < 1024  # the header's pages at most, though 12 MiB of tensors were read
