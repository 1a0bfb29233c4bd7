"""What every example's test does: load examples/<name>.py as a module, or find it to run as a script."""
from __future__ import annotations

import importlib.util
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
