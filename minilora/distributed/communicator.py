"""The communicator: the few MPI collectives data-parallel training needs, through mpi4py.

minilora speaks MPI and nothing else between processes (no socket protocol of its own): mpi4py over
the MPI library it was built against (``pip install mpi4py mpich`` on a workstation, the site's MPI
on a cluster). The launcher (``mpiexec -n N``, ``srun``) starts the processes; MPI_COMM_WORLD numbers
them 0 .. N-1 (the *rank*).

Every collective here is started non-blocking and then waited on with a sleeping poll (``wait``):
a rank that arrives first sleeps instead of spinning on a core, which matters when ranks share a
machine with fewer cores than processes and while rank 0 alone evaluates or writes files.

Importing this module does not import mpi4py (that would start MPI): ``Communicator.world()`` does.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..errors import DependencyError

INSTALL_HINT = ("pip install 'minilora[distributed]' (mpi4py and mpich), or on a cluster "
                "pip install mpi4py built against the site's MPI")
# Set by the launchers of MPICH and Intel MPI (hydra), Open MPI and MVAPICH2 in every process they start.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
MODES = ("auto", "mpi", "none")
ABORT_GRACE_SECONDS = 0.3


def launched_size() -> int:
    """How many processes an MPI launcher started with this one (1 when none did), from its environment."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def wants_mpi(mode: str) -> bool:
    """mode "mpi": always; "auto": when a launcher started more than one process; "none": never."""
    if mode not in MODES:
        raise ValueError(f"distributed must be one of {', '.join(MODES)}, got {mode!r}")
    return mode == "mpi" or (mode == "auto" and launched_size() > 1)


def mpi_module():
    """mpi4py's MPI module (importing it initializes MPI); DependencyError naming the install when missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DependencyError(f"distributed training needs mpi4py and an MPI library ({exc}): "
                              f"{INSTALL_HINT}") from None
    return MPI


def wait(request, first_sleep: float = 2e-5, longest_sleep: float = 2e-3) -> None:
    """Complete a non-blocking MPI request, sleeping between tests (exponential back-off, at most 2 ms)."""
    pause = first_sleep
    while not request.Test():
        time.sleep(pause)
        pause = min(pause * 2, longest_sleep)


class Communicator:
    """MPI_COMM_WORLD (or any mpi4py intracommunicator) with the collectives minilora uses.

    rank: this process's number, 0 .. size-1. Host buffers are contiguous NumPy arrays.
    """

    def __init__(self, comm, mpi):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    @classmethod
    def world(cls) -> "Communicator":
        mpi = mpi_module()
        return cls(mpi.COMM_WORLD, mpi)

    @property
    def local_rank(self) -> int:
        """This process's number among the ranks on its own machine (which GPU it takes)."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return local.Get_rank()
        finally:
            local.Free()

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        """buffer <- sum over ranks of buffer, in place (a contiguous, writable host array)."""
        if not (buffer.flags.c_contiguous and buffer.flags.writeable):
            raise ValueError("allreduce_sum: the buffer must be a contiguous, writable NumPy array")
        wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM))
        return buffer

    def allgather_bytes(self, data: bytes) -> list:
        """Every rank's ``data`` (the same length on every rank), in rank order."""
        mine = np.frombuffer(data, dtype=np.uint8)
        everyone = np.empty((self.size, mine.size), dtype=np.uint8)
        wait(self.comm.Iallgather(mine, everyone))
        return [bytes(row) for row in everyone]

    def broadcast_bytes(self, data: bytes | None, length: int, root: int = 0) -> bytes:
        """Rank ``root``'s ``length`` bytes on every rank (others pass None)."""
        buffer = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(length, np.uint8)
        wait(self.comm.Ibcast(buffer, root=root))
        return bytes(buffer)

    def barrier(self) -> None:
        wait(self.comm.Ibarrier())

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort): the launcher kills the others and exits non-zero."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)  # the launcher forwards what this rank printed before it kills the job
        self.comm.Abort(code)


def mpi_is_running() -> bool:
    """True when this process has initialized MPI (through mpi4py) and not finalized it."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def abort_peers(code: int, mode: str | None = None) -> None:
    """After a fatal error on this rank: end the whole job, so no other rank waits for it forever.

    Acts when MPI runs with more than one rank, or (mode "auto"/"mpi") when a launcher started this
    process with others and MPI is not started yet: then it starts MPI only to abort (the peers are
    waiting inside MPI_Init or a collective). Does nothing in a single process.
    """
    if not mpi_is_running():
        if mode not in ("auto", "mpi") or launched_size() <= 1:
            return
        try:
            mpi_module()
        except DependencyError:
            return
    world = Communicator.world()
    if world.size > 1:
        world.abort(code)


def install_abort_on_uncaught_exception(communicator: Communicator) -> None:
    """An exception nobody catches prints its traceback, then aborts the job (never a silent hang)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        communicator.abort(1)
    sys.excepthook = hook
