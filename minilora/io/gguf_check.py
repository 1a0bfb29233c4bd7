"""Structural check of a GGUF file's header, run before the ``gguf`` package parses it.

``gguf.GGUFReader`` trusts the counts it reads: an array that claims 2**63 elements makes it loop
(and append) until memory runs out, and short reads past the end surface as IndexError. This walk
visits the same structure with every count and length bounded by the bytes actually left in the
file, so a corrupted or hostile header ends in a ``FileFormatError`` naming the file and the field,
having allocated nothing in proportion to what the header claims.

GGUF v2/v3 layout (little-endian):
    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x  (string key | u32 value_type | value)
    tensor_count x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml_type | u64 offset)
    padding to general.alignment (default 32) | tensor data
    string = u64 length | bytes; array value = u32 item_type | u64 count | items
"""
from __future__ import annotations

import mmap
import os
import struct

from ..errors import FileFormatError
from .files import regular_file_size

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4                        # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
# GGUF value type -> size in bytes of a scalar; 8 = string and 9 = array are handled apart.
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4


class _Walker:
    def __init__(self, path: str, buf, size: int):
        self.path, self.buf, self.size, self.offset = path, buf, size, 0

    def fail(self, problem: str):
        raise FileFormatError(self.path, f"invalid GGUF header at byte {self.offset}: {problem}")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.offset + n > self.size:
            self.fail(f"{what} needs {n} bytes but only {self.size - self.offset} remain (truncated file?)")
        start = self.offset
        self.offset += n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> bytes:
        length = self.u64(f"length of {what}")
        start = self.take(length, what)
        return bytes(self.buf[start:start + length])

    def skip_value(self, value_type: int, what: str, depth: int = 0) -> None:
        if value_type in SCALAR_SIZES:
            self.take(SCALAR_SIZES[value_type], what)
        elif value_type == STRING:
            self.string(what)
        elif value_type == ARRAY:
            if depth > 1:
                self.fail(f"{what}: arrays nested deeper than 2 levels")
            item_type = self.u32(f"item type of {what}")
            count = self.u64(f"length of {what}")
            if item_type in SCALAR_SIZES:
                self.take(count * SCALAR_SIZES[item_type], f"{count} items of {what}")
                return
            if item_type not in (STRING, ARRAY):
                self.fail(f"{what}: unknown array item type {item_type}")
            min_item = 8 if item_type == STRING else 12
            if count * min_item > self.size - self.offset:
                self.fail(f"{what} claims {count} items, more than the {self.size - self.offset} bytes left can hold")
            for _ in range(count):
                self.skip_value(item_type, what, depth + 1)
        else:
            self.fail(f"{what}: unknown value type {value_type}")


def check_gguf(path) -> dict:
    """Walk the header of ``path``; return {"version", "tensor_count", "kv_count", "data_offset"}.

    Raises MissingFileError or FileFormatError (naming the file and the faulty field).
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = os.fspath(path)
    size = regular_file_size(path, "GGUF file")
    if size < 24:
        raise FileFormatError(path, f"not a GGUF file: only {size} bytes (the fixed header alone is 24)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        w = _Walker(path, buf, size)
        magic = bytes(buf[:4])
        if magic != GGUF_MAGIC:
            raise FileFormatError(path, f"not a GGUF file: magic {magic!r}, expected {GGUF_MAGIC!r}")
        w.offset = 4
        version = w.u32("version")
        if version not in SUPPORTED_VERSIONS:
            w.fail(f"version {version} is not supported (expected one of {SUPPORTED_VERSIONS}, little-endian)")
        tensor_count, kv_count = w.u64("tensor count"), w.u64("metadata count")
        if kv_count * 12 > size or tensor_count * 28 > size:  # smallest possible entries
            w.fail(f"header claims {kv_count} metadata entries and {tensor_count} tensors, "
                   f"more than a {size}-byte file can hold")
        alignment = DEFAULT_ALIGNMENT
        for i in range(kv_count):
            key_bytes = w.string(f"key of metadata entry {i}")
            key = key_bytes.decode("utf-8", errors="replace")
            value_type = w.u32(f"type of {key!r}")
            value_start = w.offset
            w.skip_value(value_type, repr(key))
            if key == "general.alignment":
                if value_type != UINT32:
                    w.fail("general.alignment must be a uint32")
                alignment = struct.unpack_from("<I", buf, value_start)[0]
                if alignment == 0 or alignment & (alignment - 1):
                    w.fail(f"general.alignment {alignment} is not a power of two")
        tensors = []
        for i in range(tensor_count):
            name = w.string(f"name of tensor {i}").decode("utf-8", errors="replace")
            n_dims = w.u32(f"dimension count of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                w.fail(f"tensor {name!r} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")
            dims = [w.u64(f"dimension {d} of {name!r}") for d in range(n_dims)]
            raw_type = w.u32(f"type of {name!r}")
            try:
                ggml_type = GGMLQuantizationType(raw_type)
                block_size, type_size = GGML_QUANT_SIZES[ggml_type]
            except (ValueError, KeyError):
                w.fail(f"tensor {name!r} has unknown tensor type {raw_type}")
            if dims[0] % block_size:
                w.fail(f"tensor {name!r}: first dimension {dims[0]} is not a multiple of the "
                       f"{ggml_type.name} block size {block_size}")
            n_elements = 1
            for d in dims:
                n_elements *= d
            tensors.append((name, w.u64(f"data offset of {name!r}"), n_elements // block_size * type_size))
        data_offset = -(-w.offset // alignment) * alignment
        names = set()
        for name, offset, n_bytes in tensors:
            if name in names:
                raise FileFormatError(path, f"tensor {name!r} appears twice")
            names.add(name)
            if data_offset + offset + n_bytes > size:
                raise FileFormatError(path, f"tensor {name!r} ({n_bytes} bytes at data offset {offset}) lies past "
                                            f"the end of the file ({size} bytes): truncated or corrupted")
    return {"version": version, "tensor_count": tensor_count, "kv_count": kv_count, "data_offset": data_offset}
