"""Data-parallel fine-tuning over MPI (mpi4py): only the trainable adapters' gradients travel.

    mpiexec -n 4 minilora finetune ...        # --batch-size is the global batch, split over the ranks

See docs/distributed.md. Importing this package does not start MPI.
"""
from .communicator import MODES, Communicator, abort_peers, launched_size, wants_mpi
from .data_parallel import DataParallel, start_data_parallel
from .fingerprint import RankMismatchError, model_digests
from .reduction import all_reduce_gradients, plan_buckets

__all__ = ["MODES", "Communicator", "abort_peers", "launched_size", "wants_mpi", "DataParallel",
           "start_data_parallel", "RankMismatchError", "model_digests", "all_reduce_gradients", "plan_buckets"]
