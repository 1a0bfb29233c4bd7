"""The BLAS thread count for decoding, chosen by timing decoding steps.

A decoding step is 120 to 210 matrix-vector products, each a few to a hundred microseconds and bound by
memory bandwidth. Several BLAS threads read the weights faster when each has a core; when other
processes share the cores, every product waits for its slowest thread to be scheduled, and one
thread can be several times faster than two (measured on a loaded 2-core machine: 33 against 6
tokens/s). So ``ThreadChooser`` tries each candidate count on real steps and keeps the fastest,
probing again every ``period`` steps as the load moves. A probe of several threads can itself cost
seconds on a crowded machine, so while the 1-minute load average already fills every core the
chooser stays at one thread without probing. A probe's winner also stands for ``REUSE_SECONDS``
across calls: a new generation started within that time (a server, a benchmark's rounds, a chat
turn) takes it without probing again (a probe costs about 2% of a 64-token run: measured A/B).

The count is set through threadpoolctl (the ``fast`` extra) on NumPy's BLAS; without threadpoolctl,
or on another backend, it stays what the environment (OPENBLAS_NUM_THREADS, ...) made it.
Thread counts do not change the products' results: BLAS splits a GEMV's rows, not its sums.
"""
from __future__ import annotations

import os
import time

_CONTROLLER = []  # [threadpoolctl.ThreadpoolController or None], built once


def _blas():
    """threadpoolctl's controller restricted to BLAS libraries, or None when unavailable."""
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
            controller = ThreadpoolController().select(user_api="blas")
            _CONTROLLER.append(controller if controller.lib_controllers else None)
        except Exception:  # noqa: BLE001 - optional accelerator: any failure means "leave threads alone"
            _CONTROLLER.append(None)
    return _CONTROLLER[0]


def blas_threads() -> int | None:
    """The BLAS thread count now in force, or None when it cannot be read."""
    blas = _blas()
    return None if blas is None else max(lib.num_threads for lib in blas.lib_controllers)


def set_blas_threads(n: int) -> None:
    blas = _blas()
    if blas is not None:
        for lib in blas.lib_controllers:
            lib.set_num_threads(n)


REUSE_SECONDS = 10.0
_LAST_CHOICE: dict = {}  # {"count": n, "at": perf_counter seconds} of the latest probe's winner


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_is_crowded(cores: int) -> bool:
    """True when the 1-minute load average says other work already fills every core."""
    return hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores + 1  # our own threads count too


class ThreadChooser:
    """Per decoding step: ``begin()`` sets the count to use, ``end()`` records its time; ``prefill()``
    before a prompt step.

    Each probe round runs ``rounds`` steps per candidate (interleaved), then the candidate with the
    smallest total keeps the count until the next probe, ``period`` steps later; a crowded machine
    skips the probe and takes one thread, and a winner younger than REUSE_SECONDS (from this chooser
    or an earlier one) stands in for the probe. ``restore()`` puts back the count found at construction.
    Inactive (does nothing) when the count cannot be set.
    """

    def __init__(self, xp, period: int = 64, rounds: int = 2):
        self.start = blas_threads() if getattr(xp, "__name__", "") == "numpy" else None
        self.cores = usable_cores()
        most = min(self.start, self.cores) if self.start else 1
        self.candidates = [most, 1] if most > 1 else []
        self.period, self.rounds = period, rounds
        self.step, self.best, self.current, self._t0 = 0, most, most, 0.0
        self.totals: dict[int, float] = {}
        self.probing = False

    @property
    def active(self) -> bool:
        return bool(self.candidates)

    def prefill(self) -> None:
        """Before a step over many positions (GEMMs): every thread, unless the machine is crowded."""
        if self.active:
            set_blas_threads(1 if machine_is_crowded(self.cores) else self.candidates[0])

    def begin(self) -> None:
        if not self.active:
            return
        phase = self.step % self.period
        if phase == 0:
            self.totals = {n: 0.0 for n in self.candidates}
            crowded = machine_is_crowded(self.cores)
            recent = None if crowded else self._recent_choice()
            self.probing = not crowded and recent is None
            if not self.probing:
                self.best = 1 if crowded else recent
        self.probing = self.probing and phase < self.rounds * len(self.candidates)
        self.current = self.candidates[phase % len(self.candidates)] if self.probing else self.best
        set_blas_threads(self.current)
        self._t0 = time.perf_counter()

    def end(self) -> None:
        if not self.active:
            return
        if self.probing:
            self.totals[self.current] += time.perf_counter() - self._t0
            if self.step % self.period == self.rounds * len(self.candidates) - 1:
                self.best = min(self.totals, key=self.totals.get)
                _LAST_CHOICE.update(count=self.best, at=time.perf_counter())
        self.step += 1

    def _recent_choice(self) -> int | None:
        """The latest probe's winner when it is younger than REUSE_SECONDS and one of our candidates."""
        at = _LAST_CHOICE.get("at")
        if at is None or time.perf_counter() - at >= REUSE_SECONDS or _LAST_CHOICE["count"] not in self.candidates:
            return None
        return _LAST_CHOICE["count"]

    def restore(self) -> None:
        if self.active:
            set_blas_threads(self.start)
