"""Atomic file writes: a crash mid-write never leaves a half-written file under the final name.

The bytes go to a temporary file in the destination's own folder (so the rename stays on one file
system), are flushed and fsync'ed, and the temporary file is renamed over the destination with
``os.replace``, which POSIX and Windows both perform atomically. Readers see the old file or the new
one, never a mix. On any error the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import os
import tempfile


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on a clean exit, fsync it and rename it to ``path``.

    For writers that want a file name (``safetensors.numpy.save_file``, ``json.dump`` via ``open``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", encoding: str | None = None):
    """``open(path, mode)`` that only replaces ``path`` once the ``with`` block finishes without error.

    mode is "w" (text, utf-8 by default) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
