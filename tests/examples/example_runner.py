"""What every example's test does: load examples/<name>.py as a module, or find it to run as a script."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_path(name: str) -> Path:
    return EXAMPLES / f"{name}.py"


def load_example(name: str):
    """examples/<name>.py imported as a module (its main() not yet called)."""
    spec = importlib.util.spec_from_file_location(name, example_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *args: str, timeout: int = 600):
    """examples/<name>.py run as a script from the repository root; the completed process (text output)."""
    return subprocess.run([sys.executable, str(example_path(name)), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES.parent)
