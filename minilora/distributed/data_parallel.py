"""Data-parallel training: N processes, one global batch, one optimizer step, identical adapters.

Every rank holds the frozen base and the same adapters. For step s the global batch of b sequences
(``batches(s)``, a function of (seed, s) alone) is split into N contiguous shards of b/N rows; rank k
takes rows k*b/N .. (k+1)*b/N - 1. With n_k trained tokens (labels != -100) in shard k and
n = sum_k n_k in the global batch, the training loss is the mean over the global batch's trained
tokens (plus AdaLoRA's regularizer R, once):

    L = (1/n) sum_k sum_{t in shard k} l_t  [+ R]

Rank k backpropagates its token sum, L_k = n_k * mean_{t in shard k} l_t  [+ (n/N) R], and the
gradients are summed over ranks and divided by the global token count:

    g = (1/n) sum_k grad L_k = grad L          (bucketed all-reduce, see reduction.py)

so every rank holds the gradient one process would compute on the whole batch (to rounding), takes
the same clipping (its norm is the global norm) and the same optimizer step. The logged loss is
(1/n) sum_k n_k mean_k, the global mean. With gradient accumulation every micro-batch is split so,
and n counts the trained tokens of the step's K global micro-batches. AdaLoRA scores |p * g| from
the reduced g, so every rank masks the same triplets; after each step the masks are compared across ranks by hash.

``train(..., data_parallel=dp)`` calls accumulate_gradients and after_step; ``dp.shard``
wraps the batch function. Only rank 0 (``is_main``) reports, evaluates and writes files.
"""
from __future__ import annotations

import time

import numpy as np

from ..data.batching import IGNORE_INDEX
from ..errors import ConfigError
from .communicator import Communicator, install_abort_on_uncaught_exception, wants_mpi
from .fingerprint import adalora_digest, check_same_on_every_rank, model_digests
from .reduction import BUCKET_BYTES, all_reduce_gradients, gradient_bytes, make_reducer


class DataParallel:
    """One rank's side of data-parallel training over ``communicator`` (see the module docstring)."""

    def __init__(self, communicator, reducer=None, bucket_bytes: int = BUCKET_BYTES):
        self.communicator = communicator
        self.reducer = reducer if reducer is not None else make_reducer(communicator, "numpy")
        self.bucket_bytes = bucket_bytes
        self.rank, self.size = communicator.rank, communicator.size
        self.mask_checks = 0          # AdaLoRA mask comparisons made (for reports and tests)
        self.bytes_reduced = 0        # gradient bytes this rank sent into all-reduces, in all
        self.reduce_seconds = []      # wall time of each step's all-reduces (waiting for the slowest rank included)
        self._step_tokens = 0         # global trained tokens of the batches fetched since the last all_reduce
        self._step_ids = self._local_ids = 0
        self._last = {"tokens": 0, "ids": 0, "local_ids": 0}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only(self, log):
        """``log`` on rank 0, a function that prints nothing on the others."""
        return log if self.is_main else (lambda *args, **kwargs: None)

    # ------------------------------------------------------------ the data
    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ConfigError(f"--batch-size {batch_size} is the global batch and must divide by the number of "
                              f"ranks ({self.size}); use a multiple of {self.size}")

    def shard(self, batches):
        """batch function -> this rank's shard of it (ids, labels) (b/N, T'); records the global token count.

        T' <= T: columns after the shard's last trained position are dropped (a causal model's earlier
        positions do not depend on them, and they carry no loss)."""
        def shard_of(step):
            ids, labels = batches(step)
            b = ids.shape[0]
            self.check_batch_size(b)
            rows = slice(self.rank * b // self.size, (self.rank + 1) * b // self.size)
            ids_k, labels_k = ids[rows], labels[rows]
            trained = np.flatnonzero((labels_k != IGNORE_INDEX).any(axis=0))
            width = int(trained[-1]) + 1 if trained.size else 1
            self._step_tokens += int((labels != IGNORE_INDEX).sum())
            self._step_ids += int(ids.size)
            self._local_ids += int(ids_k[:, :width].size)
            return ids_k[:, :width], labels_k[:, :width]
        return shard_of

    # ------------------------------------------------------------ the step
    def accumulate_gradients(self, model, micro_batches, params) -> tuple[float, int]:
        """Backward of this rank's token sums (+ (n/N) R), then the gradients of ``params`` and the loss
        summed over the ranks and divided by the global token count n; returns (global loss, n)."""
        from ..train import accumulate_gradients
        n = self._step_tokens
        local_sum, _ = accumulate_gradients(model, micro_batches, divide_by=1, regularizer_weight=n / self.size)
        tic = time.perf_counter()
        meta = np.array([local_sum] + [p.grad is not None for p in params], dtype=np.float64)
        self.communicator.allreduce_sum(meta)  # the loss sum and which gradients exist, in one small message
        present = [bool(v > 0) for v in meta[1:]]
        all_reduce_gradients(params, self.reducer, 1.0 / max(n, 1), present, self.bucket_bytes)
        self.reduce_seconds.append(time.perf_counter() - tic)
        self.bytes_reduced += sum(gradient_bytes(p) for p, here in zip(params, present) if here)
        self._last = {"tokens": n, "ids": self._step_ids, "local_ids": self._local_ids}
        self._step_tokens = self._step_ids = self._local_ids = 0
        return float(meta[0]) / max(n, 1), n

    def after_step(self, model, record: dict) -> None:
        """Global counts into the step's record; AdaLoRA: the masks must match on every rank."""
        record["trained_tokens"] = self._last["tokens"]
        if self._last["local_ids"]:
            record["tokens_per_s"] *= self._last["ids"] / self._last["local_ids"]
        if getattr(model, "rankallocator", None) is not None:
            self.mask_checks += 1
            check_same_on_every_rank(self.communicator, {"AdaLoRA masks": adalora_digest(model)},
                                     f"after step {record['step']}")

    # ------------------------------------------------------------ start, end
    def check_identical(self, model, optimizer=None, when: str = "at start") -> dict:
        """Compare the hashes of the frozen base, trainable parameters, optimizer and AdaLoRA state."""
        digests = model_digests(model, optimizer)
        check_same_on_every_rank(self.communicator, digests, when)
        return {part: digest.hex() for part, digest in digests.items()}

    def end_of_training(self, model, optimizer) -> bool:
        """Check that training left every rank with the same adapters and optimizer state; then rank 0
        goes on (returns True) while the others wait in ``finish`` for it (and return False)."""
        digests = model_digests(model, optimizer, frozen=False)
        check_same_on_every_rank(self.communicator, digests, "after training")
        if not self.is_main:
            self.finish()
        return self.is_main

    def finish(self) -> None:
        """Wait (sleeping) until every rank got here, e.g. while rank 0 writes the outputs."""
        self.communicator.barrier()


def start_data_parallel(mode: str = "auto", *, batch_size: int | None = None,
                        backend: str = "numpy") -> DataParallel | None:
    """A DataParallel over MPI_COMM_WORLD, or None for one process.

    mode "auto": MPI when an MPI launcher started several processes; "mpi": always; "none": never.
    Checks that batch_size divides by the number of ranks; on CuPy each rank takes the GPU of its
    local rank. From here on an uncaught exception aborts the whole job instead of leaving peers waiting.
    """
    if not wants_mpi(mode):
        return None
    communicator = Communicator.world()
    install_abort_on_uncaught_exception(communicator)
    dp = DataParallel(communicator, reducer=None)
    if batch_size is not None:
        dp.check_batch_size(batch_size)
    if backend == "cupy":
        import cupy
        cupy.cuda.Device(communicator.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
    dp.reducer = make_reducer(communicator, backend)
    return dp

