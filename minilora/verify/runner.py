"""``minilora verify``: run every check on one backend or all of them, print the table, set the exit status.

    minilora verify --backend numpy|cupy|array_api_strict|all --dtype float32|float64 --examples N --json FILE

Exit status: 0 when every check on every backend that ran passed, 1 when any check failed, 2 when
the one backend asked for is not available here (``--backend all`` reports it SKIPPED instead).
Nothing here needs pytest or hypothesis: drawn cases come from seeded NumPy generators.
"""
from __future__ import annotations

import datetime
import importlib
import platform
import sys
import time

from .. import backend
from .report import SKIPPED, BackendReport, format_table, write_json

# modules whose import registers primitives or provides what the checks exercise
_MODULES = ("minilora.ops", "minilora.kernels", "minilora.functional", "minilora.quant", "minilora.lora",
            "minilora.optim", "minilora.models")
DTYPES = ("float32", "float64")


def check_groups() -> list:
    """(group name, check function) in report order."""
    from . import checks_core, checks_lora, checks_quant
    return ([("primitives", checks_core.check_primitives), ("fused kernels", checks_core.check_fused)] +
            [("lora", f) for f in checks_lora.CHECKS] + [("4-bit", f) for f in checks_quant.CHECKS] +
            [("transformer", checks_core.check_transformer)])


def import_everything() -> None:
    for name in _MODULES:
        importlib.import_module(name)


def unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` works here, else why not."""
    try:
        backend.namespace_named(name)
        return None
    except (backend.BackendError, ImportError) as exc:
        return str(exc)


def run_backend(name: str, dtype: str = "float64", examples: int = 10, seed: int = 0) -> BackendReport:
    """Every check on backend ``name`` in ``dtype`` with ``examples`` drawn cases each."""
    from .checks_core import Target
    if dtype not in DTYPES:
        raise ValueError(f"verify: dtype must be one of {DTYPES}, got {dtype!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"verify: examples must be an integer >= 1, got {examples!r}")
    report = BackendReport(name, dtype)
    reason = unavailable_reason(name)
    if reason is not None:
        report.status, report.reason = SKIPPED, reason
        return report
    import_everything()
    target = Target(name, backend.namespace_named(name), dtype, examples, seed)
    start = time.perf_counter()
    for _, check in check_groups():
        report.rows += check(target)
    report.seconds = time.perf_counter() - start
    return report


def _backends(arg: str) -> list:
    if arg == "all":
        return list(backend.BACKENDS)
    if arg not in backend.BACKENDS:
        raise ValueError(f"verify --backend: expected one of {', '.join(backend.BACKENDS)} or all, got {arg!r}")
    return [arg]


def main(args, out=None) -> int:
    """Entry point of ``minilora verify`` (args: .backend .dtype .examples .json); returns the exit status."""
    out = out or sys.stdout
    try:
        names = _backends(getattr(args, "backend", "numpy") or "numpy")
        dtype, examples = getattr(args, "dtype", "float64") or "float64", getattr(args, "examples", 10)
        if len(names) == 1 and (reason := unavailable_reason(names[0])) is not None:
            print(f"minilora verify: backend {names[0]!r} is not available on this machine: {reason}", file=out)
            return 2
        reports = []
        for name in names:
            report = run_backend(name, dtype, examples)
            reports.append(report)
            print(f"\n== {name} ({dtype}, {examples} examples per check) ==", file=out)
            if report.status == SKIPPED:
                print(f"SKIPPED: {report.reason}", file=out)
            else:
                print(format_table(report), file=out)
            print(report.summary(), file=out)
    except ValueError as exc:
        print(f"minilora verify: {exc}", file=out)
        return 2
    failed = [r.backend for r in reports if r.failed]
    ran = [r.backend for r in reports if r.status != SKIPPED]
    print(f"\nverify: {'FAIL on ' + ', '.join(failed) if failed else 'PASS'} "
          f"(ran: {', '.join(ran) or 'none'}; skipped: "
          f"{', '.join(r.backend for r in reports if r.status == SKIPPED) or 'none'})", file=out)
    if getattr(args, "json", None):
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
                "python": platform.python_version(), "dtype": dtype, "examples": examples}
        write_json(args.json, meta, reports)
        print(f"report written to {args.json}", file=out)
    return 1 if failed or not ran else 0
