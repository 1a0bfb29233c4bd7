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


def _anonymous_mappings_of_at_least(nbytes: int) -> int:
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if len(fields) < 6 and hi - lo >= nbytes:  # no path: anonymous, not [heap] or a file
                count += 1
    return count


def test_mapped_allocations_give_a_one_off_buffer_its_own_mapping(monkeypatch):
    """Tuned, a 64 MiB array comes from the heap; inside mapped_allocations it gets its own mapping
    (huge pages), and the tuning holds again after the block."""
    import numpy as np
    import pytest

    from minilora.runtime import mapped_allocations
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    monkeypatch.delenv("MINILORA_MALLOC_TUNING", raising=False)
    assert tune_allocator()
    size = 64 << 20
    before = _anonymous_mappings_of_at_least(size)
    with mapped_allocations():
        inside = np.empty(size // 4, dtype=np.float32)
    assert _anonymous_mappings_of_at_least(size) == before + 1
    after = np.empty(size // 4, dtype=np.float32)
    assert _anonymous_mappings_of_at_least(size) == before + 1
    del inside, after
