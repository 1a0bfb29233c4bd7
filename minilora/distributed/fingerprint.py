"""Fingerprints: SHA-256 digests of what every rank must hold identically, compared across ranks.

Data-parallel training is only correct when every rank starts from the same frozen base, the same
adapters and the same optimizer state, and when AdaLoRA prunes the same triplets everywhere. Each
rank hashes those parts (names, dtypes, shapes and bytes, in a fixed order), the digests are
all-gathered (32 bytes per part and rank), and any difference is a RankMismatchError that names the
part and the ranks. Hashing copies device arrays to the host once, on purpose (start-up only).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from .. import backend
from ..errors import MiniloraError
from ..quant.state import QuantState
from ..tensor import Tensor

PARTS = ("frozen base", "trainable parameters", "optimizer state", "AdaLoRA scores and rank pattern")


class RankMismatchError(MiniloraError, RuntimeError):
    """Ranks that must hold the same model, adapters or masks do not."""


def _update(digest, name: str, array) -> None:
    host = backend.to_numpy(array, contiguous=True)
    digest.update(f"{name}|{host.dtype.str}|{host.shape}|".encode())
    digest.update(host.tobytes())


def _module_arrays(module):
    """(name, array) of every array a module holds directly: Parameters, packed 4-bit weights, quant states."""
    for attr, value in vars(module).items():
        if isinstance(value, QuantState):  # maybe nested (double quantization)
            state, prefix = value, attr
            while state is not None:
                yield f"{prefix}.absmax", state.absmax
                yield f"{prefix}.code", state.code
                state, prefix = state.state2, f"{prefix}.state2"
        elif isinstance(value, Tensor) or _is_array(value):
            yield attr, value


def _is_array(value) -> bool:
    return not isinstance(value, type) and hasattr(value, "shape") and hasattr(value, "dtype") \
        and type(value).__module__.split(".")[0] in backend.BACKENDS


def model_digests(model, optimizer=None, frozen: bool = True) -> dict:
    """{part: 32-byte SHA-256} for the parts in PARTS (the last two only when they exist; the frozen
    base only when ``frozen``, since hashing it reads every weight)."""
    base, trainable = hashlib.sha256(), hashlib.sha256()
    for path, module in sorted(model.named_modules(), key=lambda item: item[0]):
        for attr, value in _module_arrays(module):
            is_trainable = isinstance(value, Tensor) and value.requires_grad
            if not (is_trainable or frozen):
                continue
            _update(trainable if is_trainable else base, f"{path}.{attr}",
                    value.data if isinstance(value, Tensor) else value)
    digests = {PARTS[0]: base.digest(), PARTS[1]: trainable.digest()} if frozen else {PARTS[1]: trainable.digest()}
    if optimizer is not None:
        digests[PARTS[2]] = optimizer_digest(optimizer)
    if getattr(model, "rankallocator", None) is not None:
        digests[PARTS[3]] = adalora_digest(model)
    return digests


def optimizer_digest(optimizer) -> bytes:
    """Hyper-parameters of every group and every per-parameter array and scalar (AdamW: step, m, v)."""
    digest = hashlib.sha256()
    saved = optimizer.state_dict()
    digest.update(json.dumps(saved["groups"], sort_keys=True, default=str).encode())
    for key in sorted(saved["state"]):
        for name, value in sorted(saved["state"][key].items()):
            if hasattr(value, "shape"):
                _update(digest, f"{key}.{name}", value)
            else:
                digest.update(f"{key}.{name}={value!r}".encode())
    return digest.digest()


def adalora_digest(model) -> bytes:
    """AdaLoRA's rank pattern, the E vectors' zero pattern and the allocator's score EMAs."""
    digest = hashlib.sha256()
    config = model.peft_config[model.trainable_adapter_name]
    digest.update(json.dumps(config.rank_pattern, sort_keys=True).encode())
    for path, layer in model.rankallocator.layers:
        e = backend.to_numpy(layer.lora_E[model.rankallocator.adapter_name].data)
        digest.update(f"{path}:".encode() + np.packbits(e == 0).tobytes())
    for key, value in sorted(model.rankallocator.state_dict().items()):
        _update(digest, key, value)
    return digest.digest()


def check_same_on_every_rank(communicator, digests: dict, when: str) -> None:
    """All-gather ``digests`` (same parts on every rank) and raise RankMismatchError where any differ."""
    parts = sorted(digests)
    gathered = communicator.allgather_bytes(b"".join(digests[p] for p in parts))
    problems = []
    for i, part in enumerate(parts):
        seen = [row[32 * i: 32 * (i + 1)] for row in gathered]
        if len(set(seen)) > 1:
            differ = [r for r, d in enumerate(seen) if d != seen[0]]
            problems.append(f"{part}: rank(s) {differ} differ from rank 0 "
                            f"({seen[0].hex()[:12]} vs {seen[differ[0]].hex()[:12]})")
    if problems:
        raise RankMismatchError(
            f"data-parallel ranks hold different state {when}: " + "; ".join(problems) +
            ". Every rank must run the same minilora with the same --model, --seed, method flags and, "
            "with --resume, the same checkpoint file")
