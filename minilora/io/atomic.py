"""Atomic file writes: a crash mid-write never leaves a half-written file under the final name.

The bytes go to a temporary file in the destination's own folder (so the rename stays on one file
system), are flushed and fsync'ed, and the temporary file is renamed over the destination with
``os.replace``, which POSIX and Windows both perform atomically. Readers see the old file or the new
one, never a mix. On any error the temporary file is removed.

File mode: the result has the mode a plain ``open(path, "w")`` gives, 0666 minus the umask (0644
under the usual umask 022), so a merged model or an adapter folder can be read by other users and
services. ``tempfile.mkstemp`` would create 0600, and the rename keeps the temporary file's mode,
so the temporary file is created here with ``os.open(..., 0o666)``, which the kernel masks with the
umask (no process-wide ``os.umask`` call, which would race with other threads). A writer that
replaces the temporary file with its own (safetensors' ``save_file`` renames a file of mode 0600
over it) gets that mode put back before the final rename.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat


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


def _create_temporary(path: str) -> tuple[str, int]:
    """Create an empty ``.<name>.<random>.tmp`` beside ``path`` with the mode ``open`` would give.

    Returns (its path, that mode).
    """
    folder, name = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on a clean exit, fsync it and rename it to ``path``.

    For writers that want a file name (``safetensors.numpy.save_file``, ``json.dump`` via ``open``).
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    tmp, mode = _create_temporary(path)
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # the writer put its own file there
            os.chmod(tmp, mode)
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
