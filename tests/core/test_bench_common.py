"""bench/common.py's process set-up: the BLAS thread count is set before NumPy loads, or not at all."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.common import BLAS_THREAD_VARS, set_blas_threads_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_setting_threads_after_numpy_loaded_raises_instead_of_being_ignored():
    import numpy  # noqa: F401 - loaded, as in this test process
    with pytest.raises(RuntimeError, match="NumPy is already loaded"):
        set_blas_threads_env(1)


def test_setting_threads_before_numpy_reaches_its_blas():
    code = ("import sys; sys.path.insert(0, 'bench'); from common import set_blas_threads_env; "
            "set_blas_threads_env(1); import os, numpy; from threadpoolctl import threadpool_info; "
            f"print([os.environ[v] for v in {BLAS_THREAD_VARS!r}], "
            "max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['1', '1', '1'] 1"


def test_compare_torch_pauses_before_every_timed_step(monkeypatch, tmp_path):
    """Each worker's step starts after common.settle, so it does not share the cores with the
    spin-down of the other framework's threads."""
    import argparse
    import types
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import common
    import compare_torch
    events = []

    class FakeWorker:
        def __init__(self, name, task, args, log_dir):
            self.name, self.proc = name, types.SimpleNamespace(wait=lambda timeout: 0)

        def receive(self):
            return {}

        def ask(self, what):
            events.append((self.name, what))
            return {"seconds": 1.0} if what == "run" else {}
    monkeypatch.setattr(compare_torch, "Worker", FakeWorker)
    monkeypatch.setattr(common, "settle", lambda: events.append("settle"))
    compare_torch.measure("lora", argparse.Namespace(steps=2), str(tmp_path))
    runs = [i for i, e in enumerate(events) if e != "settle" and e[1] == "run"]
    assert len(runs) == 6 and all(events[i - 1] == "settle" for i in runs)
