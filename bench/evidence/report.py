"""Command line, JSON results and figures shared by the evidence scripts.

Every script: ``python -m bench.evidence.<name> [--quick] [--seeds 0 1 2] [--steps N] [--out DIR]``.
Full runs write bench/results/evidence/<name>.json and docs/evidence/<name>*.png; --quick runs the
tiny model and writes under build/evidence-quick/ (or --out) so it never overwrites real results.
Each JSON holds the machine, date, load average before and after, wall and CPU seconds, the setup,
and the raw per-seed rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

from minilora.io.atomic import atomic_path, write_text_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "bench", "results", "evidence")
FIGURES = os.path.join(ROOT, "docs", "evidence")
QUICK_OUT = os.path.join(ROOT, "build", "evidence-quick")


def parse_args(description: str, argv=None, steps: int | None = None, extra=()):
    """The common options, plus ``extra``: (flag, argparse keyword arguments) pairs of one script."""
    parser = argparse.ArgumentParser(description=description)
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps: checks the script runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the mode's)")
    parser.add_argument("--steps", type=int, default=steps, help="training steps (default: the experiment's)")
    parser.add_argument("--out", default=None, help="one folder for JSON and figures (default: see module doc)")
    return parser.parse_args(argv)


class Output:
    """Where one run writes: results (JSON) and figures (PNG)."""

    def __init__(self, args):
        if args.out:
            self.results = self.figures = args.out
        elif args.quick:
            self.results = self.figures = QUICK_OUT
        else:
            self.results, self.figures = RESULTS, FIGURES
        self.started = time.time()
        self.load_before = os.getloadavg()

    def write(self, name: str, setup, data: dict) -> str:
        """Write ``data`` with the run's context to <results>/<name>.json; returns the path."""
        path = os.path.join(self.results, f"{name}.json")
        os.makedirs(self.results, exist_ok=True)
        record = {"experiment": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version()},
                  "load_average_before": list(self.load_before), "load_average_after": list(os.getloadavg()),
                  "wall_seconds": time.time() - self.started, "cpu_seconds": _cpu_seconds(),
                  "setup": setup.describe() if setup else None, **data}
        write_text_atomic(path, json.dumps(record, indent=2, default=_jsonable))
        return path

    def figure_path(self, name: str) -> str:
        os.makedirs(self.figures, exist_ok=True)
        return os.path.join(self.figures, f"{name}.png")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads): about what the run costs on a
    quiet machine, whatever the load (its wall time there lies between cpu / n_cores and cpu)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
