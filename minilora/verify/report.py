"""Rows of the verify report: deviations, tolerances, PASS/FAIL, the printed table and the JSON file.

Deviation of a result ``got`` from its oracle ``want`` (both taken to host float64):

    max abs  = max_i |got_i - want_i|
    max rel  = max abs / max(max_i |want_i|, floor)    (normwise: elements near zero do not blow it up)

floor is the scale of the inputs where a check draws them itself (1 for the primitive checks, whose
inputs and cotangents are O(1)): there the tolerance acts as an absolute one for results smaller
than the inputs (a softmax gradient at a nearly one-hot row, a reduction that cancels).

A check passes when max rel <= tolerance (for an all-zero oracle: when max abs <= tolerance). Exact
checks (bytes, bit-identical optimizer states) use tolerance 0. A shape mismatch or a non-finite
value where the oracle is finite counts as an infinite deviation.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import backend

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"


def host64(a):
    """Any array, Tensor or scalar -> host NumPy float64."""
    from ..tensor import Tensor
    data = a.data if isinstance(a, Tensor) else a
    if not isinstance(data, (np.ndarray, np.generic, int, float, bool)):
        data = backend.to_numpy(data)
    return np.asarray(data, dtype=np.float64)


def deviation(got, want, floor: float = 0.0) -> tuple:
    """(max abs, max rel) of ``got`` against the oracle ``want`` (see the module docstring)."""
    got, want = host64(got), host64(want)
    if got.shape != want.shape:
        return math.inf, math.inf
    if got.size == 0:
        return 0.0, 0.0
    if not np.array_equal(np.isfinite(got), np.isfinite(want)) or np.any(got[~np.isfinite(want)] !=
                                                                         want[~np.isfinite(want)]):
        return math.inf, math.inf
    finite = np.isfinite(want)
    abs_dev = float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))
    scale = float(np.max(np.abs(want[finite]), initial=0.0))
    scale = max(scale, floor)
    rel_dev = abs_dev / scale if scale > 0 else (0.0 if abs_dev == 0 else math.inf)
    return abs_dev, rel_dev


@dataclass
class Row:
    name: str
    max_abs: float | None
    max_rel: float | None
    tol: float | None
    status: str
    note: str = ""


@dataclass
class Tally:
    """Worst deviation of one check over its drawn examples; ``row()`` turns it into a Row."""

    name: str
    tol: float
    floor: float = 0.0
    max_abs: float | None = None
    max_rel: float | None = None
    note: str = ""
    failed: bool = False
    seen: int = 0

    def add(self, got, want) -> None:
        abs_dev, rel_dev = deviation(got, want, self.floor)
        self.record(abs_dev, rel_dev)

    def record(self, abs_dev, rel_dev, ok=None) -> None:
        """Fold in one example; ``ok`` overrides the tolerance test (for exact or band checks)."""
        self.seen += 1
        if abs_dev is not None:
            self.max_abs = abs_dev if self.max_abs is None else max(self.max_abs, abs_dev)
        if rel_dev is not None:
            self.max_rel = rel_dev if self.max_rel is None else max(self.max_rel, rel_dev)
        if ok is None:
            value = rel_dev if rel_dev is not None else abs_dev
            ok = value is not None and value <= self.tol
        self.failed |= not ok

    def error(self, exc: BaseException) -> None:
        self.failed = True
        self.note = f"{type(exc).__name__}: {exc}"[:200]

    def row(self) -> Row:
        return Row(self.name, self.max_abs, self.max_rel, self.tol, FAIL if self.failed or not self.seen else PASS,
                   self.note if self.seen or self.note else "no example ran")


@dataclass
class BackendReport:
    backend: str
    dtype: str
    status: str = "ran"  # "ran" or SKIPPED
    reason: str = ""
    seconds: float = 0.0
    rows: list = field(default_factory=list)

    @property
    def counts(self) -> dict:
        out = {PASS: 0, FAIL: 0, SKIPPED: 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    @property
    def failed(self) -> bool:
        return self.status == "ran" and self.counts[FAIL] > 0

    def summary(self) -> str:
        if self.status == SKIPPED:
            return f"{self.backend} {self.dtype}: SKIPPED ({self.reason})"
        c = self.counts
        verdict = "FAIL" if c[FAIL] else "PASS"
        return (f"{self.backend} {self.dtype}: {verdict}: {len(self.rows)} checks, {c[PASS]} passed, {c[FAIL]} failed, "
                f"{c[SKIPPED]} skipped ({self.seconds:.1f} s)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts
        d["rows"] = [{k: (_json_number(v) if isinstance(v, float) else v) for k, v in asdict(r).items()}
                     for r in self.rows]
        return d


def _json_number(v: float):
    return v if math.isfinite(v) else str(v)  # JSON has no inf/nan


def _num(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def format_table(report: BackendReport) -> str:
    """The rows as an aligned text table (one line per check)."""
    width = max([len("check")] + [len(r.name) for r in report.rows])
    lines = [f"{'check':<{width}}  {'max abs':>9}  {'max rel':>9}  {'tol':>8}  result"]
    for r in report.rows:
        tol = "exact" if r.tol == 0 else _num(r.tol)
        note = f"  {r.note}" if r.note else ""
        lines.append(f"{r.name:<{width}}  {_num(r.max_abs):>9}  {_num(r.max_rel):>9}  {tol:>8}  {r.status}{note}")
    return "\n".join(lines)


def write_json(path, meta: dict, reports: list) -> None:
    """The whole run as JSON, written atomically."""
    from ..io.atomic import write_text_atomic
    doc = dict(meta, passed=not any(r.failed for r in reports), backends=[r.to_dict() for r in reports])
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
