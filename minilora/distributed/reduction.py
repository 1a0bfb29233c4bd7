"""Bucketed all-reduce of the trainable gradients: flatten, sum over ranks, scale, unflatten.

The gradients of the P trainable parameters are laid end to end in buckets of at most
``bucket_bytes`` (consecutive parameters of one dtype; a parameter larger than a bucket gets its own):

    flat_j = concat(reshape(g_p, (-1,)) for p in bucket j)          (n_j,)
    flat_j <- scale * sum over ranks of flat_j                       one all-reduce per bucket
    g_p    <- reshape(flat_j[offset_p : offset_p + size_p], shape_p) views into the reduced bucket

A few large messages cost far less than P small ones (each all-reduce pays the network latency
once); the cap bounds the extra memory of the flat copy. With LoRA r=8 on q/v of SmolLM2-135M the
gradients are 1.8 MB in float32: one bucket.

Reducers move the bytes: ``HostReducer`` through MPI on host NumPy buffers (NumPy and array-api-strict
arrays), ``NcclReducer`` and ``CudaAwareMpiReducer`` on CuPy device arrays (NCCL through
cupy.cuda.nccl, bootstrapped over MPI; or an MPI built with CUDA support reading device memory).
The two GPU paths are written to the libraries' documented APIs but have not run here (no GPU).
"""
from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..errors import DependencyError

BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket size
GPU_REDUCERS = ("nccl", "mpi")  # MINILORA_GPU_REDUCTION chooses; nccl by default
NCCL_UNIQUE_ID_BYTES = 128  # ncclUniqueId is char[128]


def gradient_bytes(p) -> int:
    """Bytes of a floating parameter's gradient (Array API: finfo(dtype).bits)."""
    return p.size * p.xp.finfo(p.dtype).bits // 8


def plan_buckets(params, bucket_bytes: int = BUCKET_BYTES) -> list:
    """Lists of consecutive params of one dtype with at most ``bucket_bytes`` of gradient each."""
    buckets, current, current_bytes = [], [], 0
    for p in params:
        nbytes = gradient_bytes(p)
        if current and (current_bytes + nbytes > bucket_bytes or p.dtype != current[0].dtype):
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(p)
        current_bytes += nbytes
    if current:
        buckets.append(current)
    return buckets


def all_reduce_gradients(params, reducer, scale: float, present, bucket_bytes: int = BUCKET_BYTES) -> None:
    """p.grad <- scale * sum over ranks of p.grad for every p in params (same list on every rank).

    present[i]: whether any rank has a gradient for params[i]; a rank without one contributes zeros,
    and a parameter no rank has a gradient for keeps grad None (so the optimizer skips it, as in one
    process).
    """
    for bucket in plan_buckets([p for p, here in zip(params, present) if here], bucket_bytes):
        xp = bucket[0].xp
        flat = xp.concat([xp.reshape(p.grad if p.grad is not None else xp.zeros_like(p.data), (-1,))
                          for p in bucket])  # (n_j,)
        flat = reducer.allreduce_sum(flat)
        flat = flat * scale
        offset = 0
        for p in bucket:
            p.grad = xp.reshape(flat[offset: offset + p.size], p.shape)
            offset += p.size
    for p, here in zip(params, present):
        if not here:
            p.grad = None


class HostReducer:
    """Sum over ranks through MPI on host memory (NumPy arrays directly, others via a host copy)."""

    def __init__(self, communicator):
        self.communicator = communicator

    def allreduce_sum(self, flat):
        host = backend.to_numpy(flat)
        is_numpy = isinstance(flat, np.ndarray)
        if not (is_numpy and host.flags.c_contiguous and host.flags.writeable):
            host = np.array(host, copy=True)
        self.communicator.allreduce_sum(host)
        return host if is_numpy else backend.from_numpy(host, backend.namespace_of(flat))


class CudaAwareMpiReducer:
    """Sum over ranks by handing CuPy device buffers to an MPI built with CUDA support (mpi4py reads
    ``__cuda_array_interface__``). Untested here: no GPU."""

    def __init__(self, communicator):
        self.communicator = communicator

    def allreduce_sum(self, flat):
        import cupy
        from .communicator import wait
        flat = cupy.ascontiguousarray(flat)
        cupy.cuda.get_current_stream().synchronize()  # the kernels that wrote flat are done
        comm, mpi = self.communicator.comm, self.communicator.MPI
        wait(comm.Iallreduce(mpi.IN_PLACE, flat, op=mpi.SUM))
        return flat


class NcclReducer:
    """Sum over ranks with NCCL on the GPUs (cupy.cuda.nccl); MPI only carries NCCL's unique id at
    start-up. One GPU per rank: local rank i takes device i mod the number of devices. Untested here."""

    def __init__(self, communicator):
        try:
            from cupy.cuda import nccl
        except ImportError as exc:
            raise DependencyError(f"GPU gradient reduction needs NCCL in CuPy ({exc}); install a CuPy "
                                  "build with NCCL, or set MINILORA_GPU_REDUCTION=mpi for a CUDA-aware MPI") \
                from None
        self.nccl = nccl
        uid = nccl.get_unique_id() if communicator.rank == 0 else None  # 128 signed chars
        mine = np.asarray(uid, dtype=np.int8).tobytes() if uid is not None else None
        shared = communicator.broadcast_bytes(mine, NCCL_UNIQUE_ID_BYTES)
        uid = tuple(np.frombuffer(shared, dtype=np.int8).tolist())
        self.comm = nccl.NcclCommunicator(communicator.size, uid, communicator.rank)

    def allreduce_sum(self, flat):
        import cupy
        nccl = self.nccl
        flat = cupy.ascontiguousarray(flat)
        kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64, "float16": nccl.NCCL_FLOAT16}
        stream = cupy.cuda.get_current_stream()
        self.comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, kinds[str(flat.dtype)], nccl.NCCL_SUM,
                            stream.ptr)
        stream.synchronize()
        return flat


def make_reducer(communicator, backend_name: str):
    """The reducer for arrays of ``backend_name``: host MPI, or on CuPy NCCL (default) / CUDA-aware MPI."""
    if backend_name != "cupy":
        return HostReducer(communicator)
    choice = os.environ.get("MINILORA_GPU_REDUCTION", "nccl")
    if choice not in GPU_REDUCERS:
        raise ValueError(f"MINILORA_GPU_REDUCTION must be one of {', '.join(GPU_REDUCERS)}, got {choice!r}")
    return NcclReducer(communicator) if choice == "nccl" else CudaAwareMpiReducer(communicator)
