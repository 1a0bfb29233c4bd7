"""Backend conformance report: the property suite as a user-facing command (``minilora verify``)."""
from .report import BackendReport, Row, deviation
from .runner import main, run_backend

__all__ = ["main", "run_backend", "BackendReport", "Row", "deviation"]
