"""Fuzz of the loaders users point at files from elsewhere: adapter_config.json, adapter_model.safetensors,
JSONL data and training checkpoints. Random bytes, mutated bytes of valid files and structurally wrong
(but parseable) content must either load or raise a MiniloraError; nothing else (IndexError, KeyError,
MemoryError, struct.error, NumPy errors) may escape, and a failed load changes nothing.

The safetensors and GGUF readers themselves are fuzzed in test_io_safetensors.py and test_io_gguf.py.
Each test counts the inputs it tried, prints the count (visible without -s) and asserts a minimum.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from safetensors.numpy import load_file, save_file

from minilora.checkpoint import load_checkpoint, save_checkpoint
from minilora.data.jsonl import check_jsonl_folder, read_jsonl
from minilora.errors import DataError, MiniloraError
from minilora.lora import LoraConfig, get_lora_model, load_adapter, save_adapter
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer
from minilora.optim import AdamW

CONFIG = dict(style="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3),
                           max_leaves=6)
_mutations = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


def _base(seed=1):
    return Transformer(ModelConfig(**CONFIG), seed=seed)


def _report(capsys, what, n, minimum):
    with capsys.disabled():
        print(f"\n{what}: {n} inputs tried, each loaded or raised a MiniloraError")
    assert n >= minimum


def _mutate_bytes(data, raw: bytes, limit=None) -> bytes:
    kind = data.draw(st.sampled_from(["mutate", "truncate", "random", "append"]))
    if kind == "mutate":
        out = bytearray(raw)
        for pos, value in data.draw(_mutations):
            out[pos % min(limit or len(out), len(out))] = value  # a limit past the end wraps to the bytes there
        return bytes(out)
    if kind == "truncate":
        return raw[:data.draw(st.integers(0, len(raw) - 1))]
    if kind == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=16))
    return data.draw(st.binary(max_size=300))


# ---------------------------------------------------------------- adapter folders

@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    model = get_lora_model(_base(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                           seed=3)
    save_adapter(model, folder)
    return (folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes()


def _params(model):
    return {n: np.array(p.data, copy=True) for n, p in model.named_parameters()}


def _load_adapter_or_minilora_error(folder) -> bool:
    """True when the adapter loaded; on a MiniloraError the base model must be unchanged."""
    base = _base()
    before = _params(base)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys warn (PEFT's rule); that is not under test
            load_adapter(base, folder)
        return True
    except MiniloraError:
        after = _params(base)
        assert before.keys() == after.keys()
        for name in before:
            np.testing.assert_array_equal(after[name], before[name])
        return False


CONFIG_FIELDS = ["r", "lora_alpha", "lora_dropout", "target_modules", "peft_type", "bias", "rank_pattern",
                 "alpha_pattern", "init_lora_weights", "layers_to_transform", "layers_pattern", "modules_to_save",
                 "use_rslora", "exclude_modules", "fan_in_fan_out", "task_type"]
WRONG = {
    "r": st.sampled_from([0, -1, 2.0, "2", True, None, [2], 10**30]),
    "peft_type": st.sampled_from(["IA3", "lora", "", "PROMPT_TUNING", None, 3]) | st.text(max_size=6),
    "target_modules": st.sampled_from([3, {"q_proj": 1}, [1, 2], [""], [], "(", ["q_proj", None], True]),
}


def test_fuzz_adapter_config_json(adapter_files, tmp_path_factory, capsys):
    valid_config, valid_weights = adapter_files
    folder = tmp_path_factory.mktemp("adapter_config_fuzz")
    (folder / "adapter_model.safetensors").write_bytes(valid_weights)
    counter = {"n": 0, "loaded": 0}

    @settings(max_examples=250)
    @given(data=st.data())
    def run(data):
        kind = data.draw(st.sampled_from(["bytes", "field", "wrong", "drop", "not_object"]))
        if kind == "bytes":
            raw = _mutate_bytes(data, valid_config)
        else:
            config = json.loads(valid_config)
            if kind == "field":
                config[data.draw(st.sampled_from(CONFIG_FIELDS))] = data.draw(json_values)
            elif kind == "wrong":
                name = data.draw(st.sampled_from(sorted(WRONG)))
                config[name] = data.draw(WRONG[name])
            elif kind == "drop":
                config.pop(data.draw(st.sampled_from(sorted(config))))
            else:
                config = data.draw(json_values.filter(lambda v: not isinstance(v, dict)))
            raw = json.dumps(config).encode()
        (folder / "adapter_config.json").write_bytes(raw)
        counter["n"] += 1
        counter["loaded"] += _load_adapter_or_minilora_error(folder)

    run()
    _report(capsys, f"adapter_config.json fuzz ({counter['loaded']} loaded)", counter["n"], 200)


@pytest.mark.parametrize("r,targets,peft_type,match", [
    ("2", ["q_proj"], "LORA", "r must be a positive integer"),
    (0, ["q_proj"], "LORA", "r must be a positive integer"),
    (2, 7, "LORA", "target_modules"),
    (2, ["q_proj"], "IA3", "peft_type"),
])
def test_bad_adapter_config_names_the_file_and_the_field(adapter_files, tmp_path, r, targets, peft_type, match):
    valid_config, valid_weights = adapter_files
    config = dict(json.loads(valid_config), r=r, target_modules=targets, peft_type=peft_type)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "adapter_model.safetensors").write_bytes(valid_weights)
    with pytest.raises(MiniloraError, match=f"adapter_config.json.*{match}"):
        load_adapter(_base(), tmp_path)
    (tmp_path / "adapter_config.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(MiniloraError, match="adapter_config.json: not valid JSON"):
        load_adapter(_base(), tmp_path)


def test_fuzz_adapter_weights_names_shapes_and_bytes(adapter_files, tmp_path_factory, capsys):
    valid_config, valid_weights = adapter_files
    folder = tmp_path_factory.mktemp("adapter_weights_fuzz")
    (folder / "adapter_config.json").write_bytes(valid_config)
    reference = load_file_bytes(valid_weights, folder)
    counter = {"n": 0, "loaded": 0}

    @settings(max_examples=200)
    @given(data=st.data())
    def run(data):
        path = folder / "adapter_model.safetensors"
        kind = data.draw(st.sampled_from(["bytes", "rename", "drop", "add", "reshape", "dtype"]))
        if kind == "bytes":
            path.write_bytes(_mutate_bytes(data, valid_weights))
        else:
            tensors = dict(reference)
            key = data.draw(st.sampled_from(sorted(tensors)))
            if kind == "rename":
                tensors[data.draw(st.sampled_from([key + "x", key.replace("q_proj", "k_proj"),
                                                   key.replace("lora_A", "lora_B"), "../x", "base_model.model.x"]))] \
                    = tensors.pop(key)
            elif kind == "drop":
                tensors.pop(key)
            elif kind == "add":
                tensors["base_model.model.layers.0.mlp.up_proj.lora_A.weight"] = np.zeros((2, 8), np.float32)
            elif kind == "reshape":
                shape = data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
                tensors[key] = np.zeros(shape, np.float32)
            else:
                dtype = data.draw(st.sampled_from(["int64", "int8", "bool", "float16", "float64", "uint8"]))
                tensors[key] = tensors[key].astype(dtype)
            save_file(tensors, path)
        counter["n"] += 1
        counter["loaded"] += _load_adapter_or_minilora_error(folder)

    run()
    _report(capsys, f"adapter_model.safetensors fuzz ({counter['loaded']} loaded)", counter["n"], 150)


def load_file_bytes(raw: bytes, folder):
    path = folder / "reference.safetensors"
    path.write_bytes(raw)
    return load_file(path)


# ---------------------------------------------------------------- JSONL data

class ChatTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


VALID_LINES = [b'{"prompt": "2+2=", "completion": "4"}',
               b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
               b'{"text": "plain text"}']
line_objects = st.one_of(
    json_values,
    st.fixed_dictionaries({"prompt": json_values, "completion": json_values}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(
        ["user", "assistant", "system", 3]), "content": json_values | st.text(max_size=5)}), max_size=3)}),
    st.fixed_dictionaries({"text": json_values}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3))


def test_fuzz_jsonl_lines(tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("jsonl_fuzz")
    counter = {"n": 0, "loaded": 0}

    @settings(max_examples=300)
    @given(data=st.data())
    def run(data):
        good = data.draw(st.lists(st.sampled_from(VALID_LINES), max_size=4))
        kind = data.draw(st.sampled_from(["object", "bytes", "not_utf8", "mutate", "deep"]))
        if kind == "object":
            bad = json.dumps(data.draw(line_objects)).encode()
        elif kind == "bytes":
            bad = data.draw(st.binary(max_size=60)).replace(b"\n", b" ")
        elif kind == "not_utf8":
            bad = b'{"text": "caf\xe9"}'
        elif kind == "deep":
            bad = b"[" * 100_000 + b"]" * 100_000
        else:
            bad = _mutate_bytes(data, data.draw(st.sampled_from(VALID_LINES)), limit=30).replace(b"\n", b" ")
        lines = good + [bad] + data.draw(st.lists(st.sampled_from(VALID_LINES), max_size=2))
        path = folder / "train.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        counter["n"] += 1
        try:
            examples = read_jsonl(path, ChatTokenizer())
        except DataError as exc:
            if bad.strip():  # a bad line is named by its number
                assert f"train.jsonl:{len(good) + 1}:" in str(exc) or "no examples" in str(exc)
            return
        counter["loaded"] += 1
        assert all(isinstance(p, str) and isinstance(c, str) for p, c in examples)

    run()
    _report(capsys, f"JSONL fuzz ({counter['loaded']} loaded)", counter["n"], 250)


def test_jsonl_errors_name_file_and_line(tmp_path):
    (tmp_path / "valid.jsonl").write_text('{"text": "ok"}\n')
    cases = {
        b'{"prompt": "a", "completion": "b"}\n{"prompt": 1, "completion": "b"}\n': "train.jsonl:2: 'prompt'",
        b'{"text": "a"}\n\n{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}':
            "train.jsonl:3: the last message must have role 'assistant'",
        b'{"text": "a"}\n{"txt": "b"}\n': "train.jsonl:2: expected keys",
        b'{"text": "a"}\n{"text": "b"\n': "train.jsonl:2: not valid JSON",
        b'{"text": "a"}\n{"text": "caf\xe9"}\n': "train.jsonl:2: not UTF-8",
        b'\n\n': "train.jsonl: no examples",
    }
    for raw, match in cases.items():
        (tmp_path / "train.jsonl").write_bytes(raw)
        with pytest.raises(DataError, match=match):
            check_jsonl_folder(tmp_path)  # no tokenizer needed: validation before any model is loaded
    (tmp_path / "train.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a BOM is fine"}\n')
    assert read_jsonl(tmp_path / "train.jsonl") == [("", "a BOM is fine")]


# ---------------------------------------------------------------- checkpoints

def _training_state(seed=1):
    model = get_lora_model(_base(seed), LoraConfig(r=2, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
                           seed=2)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, optimizer


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    model, optimizer = _training_state()
    for step in range(2):
        for p in optimizer.param_groups[0]["params"]:
            p.grad = np.full(p.shape, 0.1 * (step + 1), dtype=np.float32)
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    save_checkpoint(path, model, optimizer, 1, {"steps": [{"step": 0, "loss": 1.0}], "evals": [], "bad_steps": []},
                    extra={"config": {"r": 2}})
    return path.read_bytes(), load_file(path)


def _snapshot(model, optimizer):
    state = optimizer.state_dict()
    return ({n: p.data.copy() for n, p in model.named_parameters()},
            {k: {n: np.array(v, copy=True) for n, v in e.items()} for k, e in state["state"].items()},
            json.dumps(state["groups"], default=str))


def test_fuzz_checkpoint_files(checkpoint_bytes, tmp_path_factory, capsys):
    valid, tensors = checkpoint_bytes
    header_len = int.from_bytes(valid[:8], "little")
    from safetensors import safe_open
    folder = tmp_path_factory.mktemp("ckpt_fuzz")
    reference = folder / "reference.safetensors"
    reference.write_bytes(valid)
    with safe_open(reference, framework="numpy") as f:
        metadata = dict(f.metadata())
    counter = {"n": 0, "loaded": 0}

    @settings(max_examples=300)
    @given(data=st.data())
    def run(data):
        path = folder / "checkpoint.safetensors"
        kind = data.draw(st.sampled_from(["bytes", "header", "metadata", "json", "tensors"]))
        if kind == "bytes":
            path.write_bytes(_mutate_bytes(data, valid))
        elif kind == "header":  # mutate inside the JSON header only, where parsing happens
            path.write_bytes(_mutate_bytes(data, valid, limit=8 + header_len))
        elif kind in ("metadata", "json"):
            meta = dict(metadata)
            key = data.draw(st.sampled_from(["step", "optimizer", "rng", "history", "extra", "format"]))
            if kind == "metadata":
                meta[key] = data.draw(st.text(max_size=10))
            else:
                value = json.loads(meta[key]) if key not in ("format", "step") else meta[key]
                if isinstance(value, dict) and value and data.draw(st.booleans()):
                    inner = data.draw(st.sampled_from(sorted(value)))
                    value[inner] = data.draw(json_values)
                else:
                    value = data.draw(json_values)
                meta[key] = json.dumps(value)
            save_file(tensors, path, metadata=meta)
        else:
            changed = dict(tensors)
            key = data.draw(st.sampled_from(sorted(changed)))
            op = data.draw(st.sampled_from(["rename", "drop", "reshape", "dtype"]))
            if op == "rename":
                new = data.draw(st.sampled_from([key + "x", key.replace("0.", "9."), key.replace("/", "//"),
                                                 "optim/0.0", "optim/a.b/exp_avg", "optim/0.99/exp_avg", "other"]))
                changed[new] = changed.pop(key)
            elif op == "drop":
                changed.pop(key)
            elif op == "reshape":
                changed[key] = np.zeros(data.draw(st.lists(st.integers(0, 4), max_size=3)), np.float32)
            else:
                changed[key] = changed[key].astype(data.draw(st.sampled_from(["float64", "float16", "int32"])))
            save_file(changed, path, metadata=metadata)
        counter["n"] += 1
        model, optimizer = _training_state(seed=4)
        before = _snapshot(model, optimizer)
        try:
            load_checkpoint(path, model, optimizer)
        except MiniloraError:
            after = _snapshot(model, optimizer)
            for name, value in before[0].items():
                np.testing.assert_array_equal(after[0][name], value)
            assert after[1].keys() == before[1].keys() and after[2] == before[2]
            return
        counter["loaded"] += 1

    run()
    _report(capsys, f"checkpoint fuzz ({counter['loaded']} loaded)", counter["n"], 250)
