"""The command line's allocator tuning: on glibc it applies, and MINILORA_MALLOC_TUNING=0 turns it off."""
import platform

from minilora.runtime import tune_allocator


def test_tuning_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MINILORA_MALLOC_TUNING", "0")
    assert tune_allocator() is False


def test_tuning_applies_on_linux_glibc(monkeypatch):
    monkeypatch.delenv("MINILORA_MALLOC_TUNING", raising=False)
    applied = tune_allocator()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied is True
    else:
        assert applied is False


_MAPPING_PROBE = """
import numpy as np
from minilora.runtime import mapped_allocations, tune_allocator

def big_mappings(nbytes):
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            count += len(fields) < 6 and hi - lo >= nbytes  # anonymous: no path, not [heap] or a file
    return count

assert tune_allocator()
size = 64 << 20
before = big_mappings(size)
with mapped_allocations():
    inside = np.empty(size // 4, dtype=np.float32)
print(big_mappings(size) - before)
after = np.empty(size // 4, dtype=np.float32)
print(big_mappings(size) - before)
"""


def test_mapped_allocations_give_a_one_off_buffer_its_own_mapping():
    """Tuned, a 64 MiB array comes from the heap; inside mapped_allocations it gets its own mapping
    (huge pages), and the tuning holds again after the block. In a fresh interpreter, whose heap has
    no free 64 MiB chunk to reuse (a chunk already free and touched would serve either way)."""
    import os
    import subprocess
    import sys

    import pytest
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    env = {k: v for k, v in os.environ.items() if k != "MINILORA_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", _MAPPING_PROBE], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout.split()
    assert out == ["1", "1"], out  # one new mapping inside the block, none for the array after it
