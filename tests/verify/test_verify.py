"""minilora verify: passes on the CPU backends, fails loudly on a broken primitive, writes JSON,
reports an unavailable backend, and runs as ``python -m minilora verify`` without pytest in the loop."""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minilora.tensor import PRIMITIVES, Primitive
from minilora.verify import deviation, main, run_backend
from minilora.verify import runner

ROOT = Path(__file__).resolve().parents[2]


def verify(backend="numpy", dtype="float64", examples=1, json_path=None):
    out = io.StringIO()
    status = main(argparse.Namespace(backend=backend, dtype=dtype, examples=examples, json=json_path), out=out)
    return status, out.getvalue()


def row_line(text, name):
    """The printed row whose check name is exactly ``name``."""
    lines = [line for line in text.splitlines() if line.startswith(name + "  ")]
    assert lines, f"no row {name!r} in:\n{text}"
    return lines[0]


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("numpy", "float32"),
                                            ("array_api_strict", "float64"), ("array_api_strict", "float32")])
def test_cpu_backends_pass(backend, dtype):
    status, text = verify(backend, dtype, examples=2)
    assert status == 0, text
    assert "verify: PASS" in text and " FAIL" not in text
    for name in ("add vjp central-diff f64", "fused attention == composite, grad", "lora merged == unmerged",
                 "nf4 golden bytes (the NF4 table)", "qlora forward == x dq(W)^T + b + lora(x)",
                 "adalora mask == top-budget triplets", "lora+ ratio 1 == plain AdamW (bitwise)",
                 "transformer llama grads"):
        assert row_line(text, name).split()[-1] in ("PASS", "0123456789abcdef"), row_line(text, name)


def test_every_registered_primitive_has_rows():
    report = run_backend("numpy", "float64", examples=1)
    names = {row.name for row in report.rows}
    for prim in PRIMITIVES:
        assert {f"{prim} value", f"{prim} vjp", f"{prim} vjp central-diff f64"} <= names, prim


def _broken(original, where, factor=1.5):
    """A primitive forward whose output (where="value") or input cotangents (where="vjp") are off by ``factor``."""
    def forward(*args, **kwargs):
        out, vjp = original(*args, **kwargs)
        if where == "value":
            return out * factor, vjp
        return out, lambda g, needs: tuple(None if c is None else c * factor for c in vjp(g, needs))
    return forward


@pytest.mark.parametrize("where, row", [("vjp", "mul vjp central-diff f64"), ("value", "mul value")])
def test_a_broken_primitive_fails_its_row_and_the_exit_status(where, row):
    prim = PRIMITIVES["mul"]
    original = prim.forward
    object.__setattr__(prim, "forward", _broken(original, where))
    try:
        status, text = verify("numpy", "float64", examples=1)
    finally:
        object.__setattr__(prim, "forward", original)
    assert status == 1
    assert row_line(text, row).rstrip().endswith("FAIL")
    assert "verify: FAIL on numpy" in text
    assert row_line(text, "add value").rstrip().endswith("PASS")  # the others are unaffected


def test_a_primitive_without_a_case_is_a_failure():
    PRIMITIVES["frobnicate"] = Primitive("frobnicate", lambda a: (a, lambda g, needs: (g,)))
    try:
        report = run_backend("numpy", "float64", examples=1)
    finally:
        del PRIMITIVES["frobnicate"]
    (row,) = [r for r in report.rows if r.name.startswith("frobnicate")]
    assert row.status == "FAIL" and "no verify case" in row.note and report.failed


def test_json_report_is_parseable_and_complete(tmp_path):
    path = tmp_path / "report.json"
    status, text = verify("numpy", "float32", examples=1, json_path=str(path))
    assert status == 0 and f"report written to {path}" in text
    doc = json.loads(path.read_text())
    assert doc["passed"] is True and doc["dtype"] == "float32" and doc["examples"] == 1 and doc["date"]
    (numpy_report,) = doc["backends"]
    assert numpy_report["backend"] == "numpy" and numpy_report["status"] == "ran"
    assert numpy_report["counts"]["FAIL"] == 0 and numpy_report["counts"]["PASS"] == len(numpy_report["rows"])
    row = next(r for r in numpy_report["rows"] if r["name"] == "matmul vjp")
    assert set(row) == {"name", "max_abs", "max_rel", "tol", "status", "note"} and row["tol"] == 1e-5
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_unavailable_backend_alone_exits_nonzero_with_the_reason(monkeypatch):
    monkeypatch.setattr(runner, "unavailable_reason", lambda name: "no CUDA GPU answers" if name == "cupy" else None)
    status, text = verify("cupy")
    assert status == 2
    assert "backend 'cupy' is not available on this machine: no CUDA GPU answers" in text


def test_unavailable_backend_in_all_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "unavailable_reason", lambda name: "no CUDA GPU answers" if name == "cupy" else None)
    path = tmp_path / "all.json"
    status, text = verify("all", examples=1, json_path=str(path))
    assert status == 0, text
    assert "cupy float64: SKIPPED (no CUDA GPU answers)" in text
    assert "ran: numpy, array_api_strict; skipped: cupy" in text
    by_name = {b["backend"]: b for b in json.loads(path.read_text())["backends"]}
    assert by_name["cupy"]["status"] == "SKIPPED" and by_name["cupy"]["reason"] == "no CUDA GPU answers"
    assert by_name["array_api_strict"]["counts"]["FAIL"] == 0


@pytest.mark.parametrize("kwargs, message", [({"backend": "jax"}, "expected one of"),
                                             ({"examples": 0}, "examples must be an integer >= 1"),
                                             ({"dtype": "float16"}, "dtype must be one of")])
def test_bad_arguments_exit_2_with_a_message(kwargs, message):
    status, text = verify(**kwargs)
    assert status == 2 and message in text


def test_deviation_is_normwise_and_strict_about_shapes_and_non_finite_values():
    assert deviation(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == (2.0, 0.5)
    assert deviation(np.array([1e-3]), np.array([0.0]), floor=1.0) == (1e-3, 1e-3)
    assert deviation(np.zeros(2), np.zeros(3)) == (math.inf, math.inf)
    assert deviation(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == (math.inf, math.inf)
    assert deviation(np.array([1e-9]), np.array([0.0])) == (1e-9, math.inf)


def test_python_dash_m_minilora_verify_runs_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MINILORA_BACKEND", None)
    done = subprocess.run([sys.executable, "-m", "minilora", "verify", "--backend", "numpy", "--examples", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: PASS" in done.stdout and "transformer gpt2 grads" in done.stdout
