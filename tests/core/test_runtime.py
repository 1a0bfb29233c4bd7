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
