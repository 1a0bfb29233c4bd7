"""Read and write safetensors files (the format PEFT adapters and Hugging Face checkpoints use).

The ``safetensors`` package does the parsing (it validates the header: JSON, dtypes, offsets that
lie inside the file and do not overlap); this module adds what a user needs around it:

- writes are atomic (temporary file beside the target, fsync, rename), arrays on any backend are
  copied to the host first with ``backend.to_numpy``;
- reads check the 8-byte header length against the file size *before* the library sees the file,
  so a header that claims gigabytes allocates nothing, and every failure (missing file, bad header,
  truncation, unknown dtype) becomes a ``FileFormatError`` / ``MissingFileError`` naming the file.

File layout, for reference: u64 little-endian N, then N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from .. import backend
from ..errors import FileFormatError
from .atomic import atomic_path
from .files import regular_file_size

MAX_HEADER_BYTES = 100_000_000  # the safetensors package refuses larger headers too


def _host_array(name, value) -> np.ndarray:
    try:
        return backend.to_numpy(value, contiguous=True)
    except backend.BackendError as exc:
        raise ValueError(f"save_safetensors: tensors[{name!r}] is not an array of a known backend "
                         f"({type(value).__name__})") from exc


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``tensors`` (name -> array of any backend) and string ``metadata`` to ``path`` atomically."""
    from safetensors.numpy import save_file

    if not isinstance(tensors, dict):
        raise ValueError(f"save_safetensors: tensors must be a dict name -> array, got {type(tensors).__name__}")
    for name in tensors:
        if not isinstance(name, str) or not name:
            raise ValueError(f"save_safetensors: tensor names must be non-empty strings, got {name!r}")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in metadata.items()):
            raise ValueError("save_safetensors: metadata must be a dict of str -> str")
    host = {name: _host_array(name, value) for name, value in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(host, tmp, metadata=metadata)


def check_safetensors_header(path) -> int:
    """Validate the first 8 bytes of ``path`` against its size; return the header length N."""
    path = os.fspath(path)
    size = regular_file_size(path, "safetensors file")
    if size < 8:
        raise FileFormatError(path, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_HEADER_BYTES:
        raise FileFormatError(path, f"header claims {header_len} bytes (more than the {MAX_HEADER_BYTES} allowed)")
    if 8 + header_len > size:
        raise FileFormatError(path, f"truncated: header claims {header_len} bytes but the file has only "
                                    f"{size - 8} after the length field")
    return header_len


def load_safetensors(path) -> tuple[dict, dict]:
    """Read ``path`` -> (name -> NumPy array, metadata dict of str -> str).

    Raises MissingFileError when the file does not exist and FileFormatError for anything else that
    is wrong with it; never an error of the underlying library.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    check_safetensors_header(path)
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except MemoryError:
        raise FileFormatError(path, "a tensor is too large to load") from None
    except Exception as exc:  # SafetensorError, TypeError for dtypes NumPy lacks, OSError...
        raise FileFormatError(path, f"invalid safetensors file: {type(exc).__name__}: {exc}") from None
    return tensors, metadata


def read_safetensors_metadata(path) -> dict:
    """Only the ``__metadata__`` dict of ``path`` (no tensor data is read)."""
    from safetensors import safe_open

    path = os.fspath(path)
    check_safetensors_header(path)
    try:
        with safe_open(path, framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise FileFormatError(path, f"invalid safetensors file: {type(exc).__name__}: {exc}") from None
