"""minilora's error types: every failure minilora diagnoses is a subclass of ``MiniloraError``.

Each class also subclasses the built-in exception a caller would naturally catch (ValueError for bad
content, FileNotFoundError for a missing file, ImportError for a missing optional package), so
``except ValueError`` keeps working for code that does not know minilora.

    MiniloraError
    +-- FileFormatError(path, problem)    a file's bytes or structure are not what the format says (ValueError)
    +-- MissingFileError(path, what)      a file or folder that should exist does not (FileNotFoundError)
    +-- ConfigError                       a configuration value or argument is invalid (ValueError)
    +-- UnsafePathError                   a name from a file would escape its folder (ValueError)
    +-- DependencyError                   an optional package is not installed (ImportError)
    +-- DataError                         a data file has a bad line (ValueError)
    +-- BackendError                      an unknown or unavailable array backend, or two that meet (ValueError)
    +-- StateDictError                    a state dict whose keys or shapes do not fit the module (ValueError)
"""
from __future__ import annotations

import os


class MiniloraError(Exception):
    """Base class of every error minilora raises on purpose."""


class FileFormatError(MiniloraError, ValueError):
    """A file could not be read: bad magic, a truncated or inconsistent header, an unknown dtype...

    The message always starts with the file's path, so a user knows which file to look at.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class MissingFileError(MiniloraError, FileNotFoundError):
    """A file or folder minilora was asked to read does not exist."""

    def __init__(self, path, what: str = "file"):
        self.path = os.fspath(path)
        # FileNotFoundError's (errno, strerror, filename) form keeps .filename set for callers.
        super().__init__(2, f"{what} not found", self.path)

    def __str__(self) -> str:
        return f"{self.path}: {self.strerror}"


class ConfigError(MiniloraError, ValueError):
    """An invalid configuration field, command-line flag or function argument."""


class UnsafePathError(MiniloraError, ValueError):
    """A name taken from a file or a user (adapter name, path component) that would escape its folder."""


class DependencyError(MiniloraError, ImportError):
    """An optional package minilora needs for this feature is not installed; the message says how to install it."""


class DataError(MiniloraError, ValueError):
    """A training or evaluation data file has a bad line; the message names the file and the line."""


class BackendError(MiniloraError, ValueError):
    """An unknown backend, an unavailable one, or arrays of two backends that meet (minilora.backend)."""


class StateDictError(MiniloraError, ValueError):
    """A state dict whose keys or shapes do not fit the module (Module.load_state_dict)."""
