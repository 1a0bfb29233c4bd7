"""GGUF export of a merged model: `minilora merge --gguf`, ggml's Q8_0 bytes, tokenizer metadata, read back.

The real-model check against transformers' GGUF loader is tests/reference/test_ref_gguf_export.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from gguf_fixtures import tiny_tokenizer_meta, write_tiny_llama_gguf
from minilora import cli
from minilora.errors import FileFormatError
from minilora.io import load_gguf, load_hf_checkpoint, load_pretrained, read_gguf, save_gguf
from minilora.io.gguf_write import quantize_q8_0, tokenizer_metadata_from_hf
from minilora.io.pretrained import model_from_state_dict, tokenizer_metadata
from minilora.io.tokenizer import Tokenizer
from minilora.lora import LoraConfig, get_lora_model, save_adapter
from minilora.models import generate
from minilora.tensor import no_grad

TEXT = "hello, tell the 12 otters"


def test_own_q8_0_encoder_gives_the_gguf_package_bytes():
    import gguf

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((6, 96)).astype(np.float32) * np.float32(0.05)
    rows[1, :32] = 0.0                                        # a block of zeros: scale 0, q 0
    rows[2, :32] = np.arange(-16, 16, dtype=np.float32) + 0.5  # with max 127 below, x / d is k + 0.5: ties
    rows[2, 31] = 127.0
    rows[3, 32:64] = -rows[3, 32:64]
    ours = quantize_q8_0(rows)
    theirs = gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q8_0)
    assert ours.shape == theirs.shape == (6, 96 // 32 * 34) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)
    q = ours[2, 2:34].view(np.int8)
    assert (q[0], q[14], q[15], q[16]) == (-16, -2, -1, 1)  # -15.5, -1.5, -0.5, 0.5: halves away from zero
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.ones((2, 33), np.float32))


@pytest.fixture(scope="module")
def merged_export(tmp_path_factory):
    """A tiny GGUF base, a random adapter on every projection, and `minilora merge --gguf` at F32."""
    folder = tmp_path_factory.mktemp("export")
    write_tiny_llama_gguf(folder / "base.gguf", seed=4)
    model, _ = load_pretrained(folder / "base.gguf")
    lora = get_lora_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights=False), seed=5)
    save_adapter(lora, folder / "adapter")
    code = cli.main(["merge", "--model", str(folder / "base.gguf"), "--adapter", str(folder / "adapter"),
                     "--out", str(folder / "hf"), "--gguf", str(folder / "out" / "merged.gguf"), "--gguf-type", "F32"])
    assert code == 0
    lora.eval()
    return folder, lora


def _logits(model, ids):
    with no_grad():
        return np.asarray(model(ids).numpy())


def test_f32_export_reads_back_to_the_merged_model_exactly(merged_export):
    folder, lora = merged_export
    config, state = load_hf_checkpoint(folder / "hf")
    merged = model_from_state_dict(config, state)
    back, tokenizer = load_pretrained(folder / "out" / "merged.gguf")
    assert back.config == merged.config
    ids = np.asarray([tokenizer.encode(TEXT)])
    np.testing.assert_array_equal(_logits(back, ids), _logits(merged, ids))
    np.testing.assert_allclose(_logits(back, ids), _logits(lora, ids), rtol=1e-5, atol=1e-5)  # merged == unmerged
    np.testing.assert_array_equal(generate(back, ids, 12), generate(merged, ids, 12))


def test_export_carries_the_tokenizer_and_names_its_type(merged_export):
    import gguf

    folder, _ = merged_export
    _, meta = read_gguf(folder / "out" / "merged.gguf")
    source = tiny_tokenizer_meta()
    assert {k: v for k, v in meta.items() if k.startswith("tokenizer.")} == source
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    assert tokenizer.encode(TEXT) == load_pretrained(folder / "base.gguf")[1].encode(TEXT)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("qtype, atol", [("F16", 2e-4), ("Q8_0", 2e-3)])
def test_f16_and_q8_0_exports_store_each_matrix_in_that_type(merged_export, tmp_path, qtype, atol):
    import gguf

    folder, _ = merged_export
    config, state = load_hf_checkpoint(folder / "hf")
    save_gguf(tmp_path / "m.gguf", config, state, tokenizer_meta=tokenizer_metadata(folder / "base.gguf"),
              qtype=qtype)
    reader, meta = read_gguf(tmp_path / "m.gguf")
    assert meta["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{qtype}"]
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == qtype
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    _, back, _ = load_gguf(tmp_path / "m.gguf")
    for name, value in state.items():
        np.testing.assert_allclose(back[name], value, atol=atol, rtol=0, err_msg=name)


def test_rows_that_are_not_whole_q8_0_blocks_fall_back_to_f16(tmp_path):
    config, model = write_tiny_llama_gguf(tmp_path / "odd.gguf", hidden_size=48, intermediate_size=80,
                                          qtype="Q8_0")
    reader, _ = read_gguf(tmp_path / "odd.gguf")
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "F16"       # rows of 48 values: not whole blocks of 32
    assert kinds["blk.0.ffn_gate.weight"] == "F16"
    assert kinds["blk.0.ffn_down.weight"] == "F16"     # rows of 80
    _, back, _ = load_gguf(tmp_path / "odd.gguf")
    np.testing.assert_allclose(back["model.layers.0.mlp.up_proj.weight"],
                               model.state_dict()["model.layers.0.mlp.up_proj.weight"], atol=1e-4)


def test_a_hugging_face_folder_base_exports_its_tokenizer_too(merged_export, tmp_path):
    folder, _ = merged_export
    meta = tokenizer_metadata(folder / "hf")  # the merged folder's tokenizer.json, converted
    source = tiny_tokenizer_meta()
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert meta[key] == source[key], key
    assert meta["tokenizer.ggml.pre"] == "smollm"  # digits split one by one
    config, state = load_hf_checkpoint(folder / "hf")
    save_gguf(tmp_path / "from_hf.gguf", config, state, tokenizer_meta=meta)
    back, tokenizer = load_pretrained(tmp_path / "from_hf.gguf")
    assert tokenizer.encode(TEXT) == load_pretrained(folder / "base.gguf")[1].encode(TEXT)
    (tmp_path / "bad").mkdir()
    for content, problem in [('{"model": {"type": "Unigram"}}', "byte-level BPE"),
                             ('{"model": {"type": "BPE", "vocab": {}}}', "vocabulary is empty"),
                             ('{"model": {"type": "BPE", "vocab": {"a": "0"}}}', "non-negative integers"),
                             ('{"model": {"type": "BPE", "vocab": {"a": 0, "b": 99999999}}}', "far beyond"),
                             ('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}}', "merge 0")]:
        (tmp_path / "bad" / "tokenizer.json").write_text(content)
        with pytest.raises(FileFormatError, match=problem):
            tokenizer_metadata_from_hf(tmp_path / "bad")


def test_bad_export_requests_fail_before_writing(merged_export, tmp_path, capsys):
    folder, _ = merged_export
    config, state = load_hf_checkpoint(folder / "hf")
    short = dict(tiny_tokenizer_meta(), **{"tokenizer.ggml.tokens": ["a", "b"]})
    with pytest.raises(ValueError, match="2 tokens but the model's vocabulary is"):
        save_gguf(tmp_path / "x.gguf", config, state, tokenizer_meta=short)
    with pytest.raises(ValueError, match="'tokenizer.ggml.merges' is an empty list"):
        save_gguf(tmp_path / "x.gguf", config, state, tokenizer_meta=dict(tiny_tokenizer_meta(),
                                                                           **{"tokenizer.ggml.merges": []}))
    huge = dict(state, **{"model.layers.0.mlp.up_proj.weight": state["model.layers.0.mlp.up_proj.weight"] * 1e6})
    with pytest.raises(ValueError, match="beyond float16's range"):
        save_gguf(tmp_path / "x.gguf", config, huge, qtype="F16")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf.*"))
    with pytest.raises(SystemExit):
        cli.main(["merge", "--adapter", "a", "--out", "b", "--gguf", "c.gguf", "--gguf-type", "Q4_K"])
    assert "invalid choice: 'Q4_K'" in capsys.readouterr().err


def test_without_the_gguf_encoder_q8_0_files_are_the_same_bytes(tmp_path, monkeypatch):
    import gguf

    write_tiny_llama_gguf(tmp_path / "with.gguf", qtype="Q8_0")

    def missing(data, qtype):
        raise NotImplementedError(f"Quantization for {qtype.name} is not yet implemented")
    monkeypatch.setattr(gguf.quants, "quantize", missing)
    write_tiny_llama_gguf(tmp_path / "without.gguf", qtype="Q8_0")
    assert (tmp_path / "with.gguf").read_bytes() == (tmp_path / "without.gguf").read_bytes()
    with pytest.raises(ValueError, match="cannot encode Q4_0"):
        write_tiny_llama_gguf(tmp_path / "q4.gguf", qtype="Q4_0")
