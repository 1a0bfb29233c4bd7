"""Process-level tuning for the command line: keep freed activation memory in glibc's heap.

By default glibc hands every array above its (dynamic) mmap threshold back to the kernel when it is
freed, so the next step's activations page-fault on first touch. In a small VM that costs more than
the arithmetic of an element-wise kernel (a (512, 1536) SwiGLU measured 31 ms by default and 3.3 ms
with the heap reused; the SmolLM2 LoRA step went from 1.23x to 1.13x torch's time). The threshold
is 512 MiB so that the step's largest arrays, the (512, 49152) logits and their gradient, are reused
too; peak RSS did not change. The library never does this by itself: the ``minilora`` command calls
``tune_allocator`` at start-up, and MINILORA_MALLOC_TUNING=0 turns it off.

The heap has a cost for a large array made once: its fresh pages fault in 4 KiB at a time, where
glibc's own mmap of it gets transparent huge pages (a new 113 MB buffer: 0.35 s against 0.02 s on
the test VM). ``mapped_allocations`` restores the default threshold for such one-off buffers (the
decoder's re-laid-out weights, models/fused.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
DEFAULT_MMAP_THRESHOLD = 32 << 20  # within glibc's dynamic range; arrays above it get their own mapping
_TUNED: dict = {}  # {"libc": CDLL, "threshold": bytes} once tune_allocator succeeded


def tune_allocator(mmap_threshold: int = 512 << 20) -> bool:
    """Serve arrays up to ``mmap_threshold`` bytes from the heap and never trim it. False off glibc."""
    if os.environ.get("MINILORA_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
    if tuned:
        _TUNED.update(libc=libc, threshold=mmap_threshold)
    return tuned


@contextlib.contextmanager
def mapped_allocations():
    """Inside the block, arrays above DEFAULT_MMAP_THRESHOLD get their own mapping again, as without
    ``tune_allocator`` (nothing changes when it was not called)."""
    if not _TUNED:
        yield
        return
    _TUNED["libc"].mallopt(_M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD)
    try:
        yield
    finally:
        _TUNED["libc"].mallopt(_M_MMAP_THRESHOLD, _TUNED["threshold"])
