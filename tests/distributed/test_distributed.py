"""Data-parallel pieces in one process (no MPI started): buckets, the all-reduce's bookkeeping, shards,
the objective's weighting, fingerprints, mode detection and the missing-dependency error.

The multi-process behaviour (exactness against one process, faults, resume) is in
tests/distributed/test_distributed_mpi.py, through mpiexec.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from minilora import backend, cli
from minilora.distributed import (DataParallel, RankMismatchError, all_reduce_gradients, launched_size,
                                  model_digests, plan_buckets, start_data_parallel, wants_mpi)
from minilora.distributed.communicator import LAUNCHER_SIZE_VARIABLES
from minilora.distributed.selfcheck import build, relative_difference, trainable_arrays
from minilora.errors import ConfigError, DependencyError
from minilora.finetune_config import FinetuneConfig
from minilora.nn import Parameter
from minilora.train import train


class LoopbackCommunicator:
    """A stand-in for MPI in one process: ``copies`` ranks that all hold this rank's arrays.

    allreduce_sum multiplies by ``copies`` (what N identical ranks would sum to); allgather returns
    this rank's bytes ``copies`` times, or ``others`` for the ranks after the first when given.
    """

    def __init__(self, copies: int = 1, rank: int = 0, others: bytes | None = None):
        self.rank, self.size, self.copies, self.others = rank, copies, copies, others
        self.reduced = []

    def allreduce_sum(self, buffer):
        buffer *= self.copies
        self.reduced.append(buffer.size)
        return buffer

    def allgather_bytes(self, data):
        return [data] + [self.others if self.others is not None else data] * (self.size - 1)

    def barrier(self):
        pass


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _param(shape, dtype=np.float32, grad=True, seed=0):
    rng = np.random.default_rng(seed)
    p = Parameter(rng.standard_normal(shape).astype(dtype))
    p.grad = rng.standard_normal(shape).astype(dtype) if grad else None
    return p


def test_buckets_keep_order_respect_the_cap_and_split_at_dtype_changes():
    params = [_param((10, 10)), _param((5,)), _param((30, 30)), _param((4,), np.float64), _param((3,), np.float64)]
    buckets = plan_buckets(params, bucket_bytes=600)
    assert [p for b in buckets for p in b] == params  # every parameter once, in order
    assert [[params.index(p) for p in b] for b in buckets] == [[0, 1], [2], [3, 4]]
    for b in buckets:
        assert len({p.dtype for p in b}) == 1
        assert len(b) == 1 or sum(p.size * p.data.dtype.itemsize for p in b) <= 600


def test_all_reduce_sums_scales_and_unflattens_every_bucket():
    params = [_param((6, 4), seed=i) for i in range(3)] + [_param((5,), np.float64, seed=3)]
    before = [p.grad.copy() for p in params]
    comm = LoopbackCommunicator(copies=3)
    all_reduce_gradients(params, DataParallel(comm).reducer, 0.25, [True] * 4, bucket_bytes=100)
    assert comm.reduced == [24, 24, 24, 5]  # one all-reduce per bucket
    for p, g in zip(params, before):
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
        np.testing.assert_allclose(p.grad, 0.75 * g, rtol=1e-6)


def test_a_missing_gradient_counts_as_zero_and_stays_none_where_no_rank_has_one():
    here, elsewhere, nowhere = _param((3,)), _param((2,), grad=False), _param((4,), grad=False)
    g = here.grad.copy()
    comm = LoopbackCommunicator(copies=2)
    all_reduce_gradients([here, elsewhere, nowhere], DataParallel(comm).reducer, 1.0, [True, True, False])
    np.testing.assert_allclose(here.grad, 2 * g)
    np.testing.assert_array_equal(elsewhere.grad, np.zeros(2, np.float32))
    assert nowhere.grad is None


def test_shards_split_rows_by_rank_trim_untrained_columns_and_count_global_tokens():
    ids = np.arange(24).reshape(4, 6)
    labels = np.full((4, 6), -100)
    labels[0, 1:5] = 1   # rank 0's rows: trained up to column 4
    labels[1, 1:3] = 1
    labels[2, 0:2] = 1   # rank 1's rows: trained up to column 1
    labels[3, 1] = 1
    shards = []
    for rank in (0, 1):
        dp = DataParallel(LoopbackCommunicator(copies=2, rank=rank))
        shard_ids, shard_labels = dp.shard(lambda step: (ids, labels))(0)
        shards.append((shard_ids, shard_labels))
        assert dp._step_tokens == 9
    np.testing.assert_array_equal(shards[0][0], ids[:2, :5])
    np.testing.assert_array_equal(shards[1][0], ids[2:, :2])
    np.testing.assert_array_equal(shards[1][1], labels[2:, :2])


def test_a_batch_that_does_not_divide_by_the_ranks_is_a_clear_error():
    dp = DataParallel(LoopbackCommunicator(copies=3))
    with pytest.raises(ConfigError, match=r"--batch-size 4 is the global batch and must divide by the number "
                                          r"of ranks \(3\)"):
        dp.check_batch_size(4)
    with pytest.raises(ConfigError, match="must divide"):
        dp.shard(lambda step: (np.zeros((4, 3), np.int64), np.zeros((4, 3), np.int64)))(0)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_one_rank_through_the_hooks_trains_exactly_like_no_hooks(method):
    """Weighting by n_k, summing and dividing by n (here N=1) must give back the plain loop's gradients."""
    with backend.use_backend("numpy"):
        model, optimizer, batches, config = build(method, steps=4, batch_size=4)
        dp = DataParallel(LoopbackCommunicator(copies=1))
        history = train(model, optimizer, dp.shard(batches), config, data_parallel=dp)
        hooked = trainable_arrays(model)
        model, optimizer, batches, config = build(method, steps=4, batch_size=4)
        plain = train(model, optimizer, batches, config)
    assert relative_difference(hooked, trainable_arrays(model)) < 1e-12
    np.testing.assert_allclose([r["loss"] for r in history.steps], [r["loss"] for r in plain.steps], rtol=1e-13)
    assert [r["trained_tokens"] for r in history.steps] == [r["trained_tokens"] for r in plain.steps]
    assert dp.mask_checks == (4 if method == "adalora" else 0)


def test_identical_copies_of_a_rank_reproduce_it():
    """N ranks holding the same shard: the sum is N times the gradient, the token count N times too."""
    with backend.use_backend("numpy"):
        model, optimizer, batches, config = build("lora", steps=3, batch_size=2)
        dp = DataParallel(LoopbackCommunicator(copies=3))
        # every "rank" gets the same rows: a batch of 3 identical copies of a 1-row batch
        history = train(model, optimizer, dp.shard(lambda s: tuple(np.repeat(a[:1], 3, 0) for a in batches(s))),
                        config, data_parallel=dp)
        copied = trainable_arrays(model)
        model, optimizer, batches, config = build("lora", steps=3, batch_size=2)
        plain = train(model, optimizer, lambda s: tuple(a[:1] for a in batches(s)), config)
    assert relative_difference(copied, trainable_arrays(model)) < 1e-12
    assert [r["trained_tokens"] for r in history.steps] == [3 * r["trained_tokens"] for r in plain.steps]


def test_fingerprints_name_the_part_that_differs():
    with backend.use_backend("numpy"):
        model, optimizer, _, _ = build("qlora", steps=2, batch_size=2)
        mine = model_digests(model, optimizer)
        other, _, _, _ = build("qlora", steps=2, batch_size=2, seed=1)
        theirs = model_digests(other, optimizer)
    assert set(mine) == {"frozen base", "trainable parameters", "optimizer state"}
    assert mine["optimizer state"] == theirs["optimizer state"] and mine["frozen base"] != theirs["frozen base"]
    dp = DataParallel(LoopbackCommunicator(copies=2))
    dp.communicator.others = b"".join(theirs[p] for p in sorted(theirs))
    with pytest.raises(RankMismatchError, match=r"frozen base: rank\(s\) \[1\] differ.*trainable parameters"):
        dp.check_identical(model, optimizer)
    dp.communicator.others = None
    assert dp.check_identical(model, optimizer)["frozen base"] == mine["frozen base"].hex()


def test_mode_detection_follows_the_launchers_environment(monkeypatch):
    assert launched_size() == 1 and not wants_mpi("auto") and wants_mpi("mpi") and not wants_mpi("none")
    monkeypatch.setenv("PMI_SIZE", "3")
    assert launched_size() == 3 and wants_mpi("auto") and not wants_mpi("none")
    assert start_data_parallel("none") is None
    with pytest.raises(ValueError, match="distributed must be one of auto, mpi, none"):
        wants_mpi("yes")
    with pytest.raises(ConfigError, match="distributed must be one of"):
        FinetuneConfig(model="tiny", distributed="yes").validate()


def test_asking_for_mpi_without_mpi4py_names_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    with pytest.raises(DependencyError, match=r"pip install 'minilora\[distributed\]'"):
        start_data_parallel("mpi")
    code = cli.main(["finetune", "--model", "tiny", "--distributed", "mpi", "--out", str(tmp_path / "run"),
                     "--steps", "1", "--no-progress"])
    assert code == 2
    assert "needs mpi4py and an MPI library" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
