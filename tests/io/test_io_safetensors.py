"""safetensors IO: round trips on every backend, atomic writes, and loaders that fail only with minilora errors."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilora import backend
from minilora.errors import FileFormatError, MiniloraError, MissingFileError
from minilora.io import atomic_open, load_safetensors, read_safetensors_metadata, save_safetensors


def _sample():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(4, dtype=np.int64),
            "h": rng.standard_normal((2, 2, 2)).astype(np.float16), "flag": np.array([True, False]),
            "scalar": np.array(1.5, dtype=np.float64)}


def test_round_trip_dtypes_and_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = _sample()
    save_safetensors(path, tensors, metadata={"format": "pt", "note": "é"})
    loaded, metadata = load_safetensors(path)
    assert metadata == {"format": "pt", "note": "é"}
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)
    assert read_safetensors_metadata(path) == metadata


def test_arrays_of_any_backend_are_saved_from_the_host(tmp_path, xp):
    values = xp.reshape(xp.arange(12, dtype=xp.float32), (3, 4))
    save_safetensors(tmp_path / "x.safetensors", {"v": values[:, 1:3]})  # a non-contiguous slice too
    loaded, metadata = load_safetensors(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(loaded["v"], backend.to_numpy(values)[:, 1:3])
    assert metadata == {}


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors(path, {"x": np.zeros(3, np.float32)})
    save_safetensors(path, {"x": np.ones(3, np.float32)})
    assert os.listdir(tmp_path) == ["a.safetensors"]
    np.testing.assert_array_equal(load_safetensors(path)[0]["x"], np.ones(3, np.float32))


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors(path, {"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="tensors"):
        save_safetensors(path, {"x": np.ones(3, np.float32), "y": object()})
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "b.txt") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]
    np.testing.assert_array_equal(load_safetensors(path)[0]["x"], np.zeros(3, np.float32))


@pytest.mark.parametrize("bad, match", [({1: np.zeros(2)}, "names"), ({"": np.zeros(2)}, "names"),
                                        ([np.zeros(2)], "dict")])
def test_bad_arguments_raise_value_error(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        save_safetensors(tmp_path / "a.safetensors", bad)
    with pytest.raises(ValueError, match="metadata"):
        save_safetensors(tmp_path / "a.safetensors", {"x": np.zeros(2)}, metadata={"k": 1})


def _write(path, header: dict | bytes, data: bytes = b"", claimed_len: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if claimed_len is None else claimed_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


@pytest.mark.parametrize("case, match", [
    ("huge_header", "header claims"),
    ("header_past_end", "truncated"),
    ("short", "shorter than"),
    ("not_json", "invalid safetensors"),
    ("unknown_dtype", "invalid safetensors"),
    ("offsets_past_end", "invalid safetensors"),
    ("overlapping", "invalid safetensors"),
    ("bfloat16", "invalid safetensors"),
])
def test_corrupted_files_raise_file_format_error_naming_the_file(tmp_path, case, match):
    p = tmp_path / f"{case}.safetensors"
    if case == "huge_header":
        _write(p, b"{}", claimed_len=2**62)
    elif case == "header_past_end":
        _write(p, b"{}", claimed_len=1000)
    elif case == "short":
        p.write_bytes(b"\x01\x02")
    elif case == "not_json":
        _write(p, b"{not json")
    elif case == "unknown_dtype":
        _write(p, {"x": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "offsets_past_end":
        _write(p, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    elif case == "overlapping":
        _write(p, {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    elif case == "bfloat16":  # a valid file whose dtype NumPy cannot hold
        _write(p, {"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(FileFormatError, match=match) as info:
        load_safetensors(p)
    assert str(p) in str(info.value) and isinstance(info.value, ValueError)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(MissingFileError) as info:
        load_safetensors(tmp_path / "nope.safetensors")
    assert isinstance(info.value, FileNotFoundError) and "nope.safetensors" in str(info.value)
    with pytest.raises(FileFormatError, match="regular file"):
        load_safetensors(tmp_path)


_VALID = None


def _valid_bytes(tmp_path_factory) -> bytes:
    global _VALID
    if _VALID is None:
        path = tmp_path_factory.mktemp("st") / "v.safetensors"
        save_safetensors(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.int16)},
                         metadata={"k": "v"})
        _VALID = path.read_bytes()
    return _VALID


_mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    counter = {"n": 0}
    yield folder, counter
    print(f"\nsafetensors fuzz: {counter['n']} inputs tried, each loaded or raised a MiniloraError")


def _load_or_minilora_error(path) -> None:
    try:
        load_safetensors(path)
    except MiniloraError:
        pass  # anything else fails the test with its own traceback


@settings(max_examples=150)
@given(data=st.data())
def test_fuzz_mutated_and_random_bytes_raise_only_minilora_errors(fuzz_dir, tmp_path_factory, data):
    folder, counter = fuzz_dir
    valid = _valid_bytes(tmp_path_factory)
    kind = data.draw(st.sampled_from(["mutate", "truncate", "random", "header_len"]))
    if kind == "mutate":
        raw = bytearray(valid)
        for pos, value in data.draw(_mutations):
            raw[pos % len(raw)] = value
    elif kind == "truncate":
        raw = valid[:data.draw(st.integers(0, len(valid) - 1))]
    elif kind == "random":
        raw = data.draw(st.binary(max_size=200))
    else:
        raw = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + valid[8:]
    path = folder / "f.safetensors"
    path.write_bytes(bytes(raw))
    counter["n"] += 1
    _load_or_minilora_error(path)
