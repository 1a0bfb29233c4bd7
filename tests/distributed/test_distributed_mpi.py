"""Data-parallel training through mpiexec: exactness against one process, the real command, faults.

- 2 and 3 ranks x batch 6/N against one process x batch 6, float64, tiny model, 5 steps, with LoRA,
  LoRA+, QLoRA and AdaLoRA (python -m minilora.distributed.selfcheck): adapters equal to 1e-12
  relative, AdaLoRA's masks hashed equal on every rank.
- `mpiexec -n 2 minilora finetune` against one process (float32): same adapter and losses to float32
  rounding; rank 0 alone prints.
- A rank killed with SIGKILL mid-run: the job ends non-zero, with a message, in bounded time; the
  last checkpoint loads; --resume finishes it with 3 ranks and with 1, with the same adapter.
- Ranks that start from different seeds, a batch that does not divide, a flag error on one rank
  before MPI starts: each ends the job with a message, never a hang.
Every launch has a timeout, and a hung launch is killed with its whole process group.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from minilora import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def find_mpiexec():
    """The mpiexec beside this interpreter (pip's mpich puts it in the virtualenv's bin), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
pytestmark = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="mpiexec or mpi4py is missing: pip install -e '.[distributed]' (the test extra includes it)")

# One BLAS thread per rank (ranks share the cores); single-host process start-up; Open MPI, if that is
# the mpiexec found, may run as root and oversubscribe.
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_", "HYDRA_"))}
ENV.update(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OPENBLAS_NUM_THREADS="1",
           OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_LAUNCHER="fork", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
FINETUNE = ["-m", "minilora", "finetune", "--model", "tiny", "--no-progress", "--eval-examples", "2",
            "--batch-size", "6"]


def launch(*groups, timeout=60, kill_rank_when=None):
    """Run ``mpiexec -n N python ARGS [: -n M python ARGS ...]`` for groups (N, ARGS); (rc, output, seconds).

    kill_rank_when: (rank, predicate): once predicate() holds, SIGKILL that rank's process.
    """
    command = [MPIEXEC]
    for i, (n, args) in enumerate(groups):
        command += ([":"] if i else []) + ["-n", str(n), sys.executable] + list(args)
    tic = time.monotonic()
    proc = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        if kill_rank_when is not None:
            rank, ready = kill_rank_when
            while not ready():
                assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()[0]}"
                assert time.monotonic() - tic < timeout, "the kill condition never held"
                time.sleep(0.02)
            os.kill(rank_pid(proc.pid, rank), signal.SIGKILL)
        output, _ = proc.communicate(timeout=timeout - (time.monotonic() - tic))
    except (subprocess.TimeoutExpired, AssertionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank it started: our process group
        proc.communicate()
        raise
    return proc.returncode, output, time.monotonic() - tic


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of MPI rank ``rank`` among the launcher's descendants (its environment names the rank)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, grew = {launcher_pid}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    for pid in family - {launcher_pid}:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if env.get(b"PMI_RANK", env.get(b"OMPI_COMM_WORLD_RANK")) == str(rank).encode():
            return pid
    raise AssertionError(f"no process of rank {rank} found")


def adapter(folder):
    return load_file(os.path.join(folder, "adapter", "adapter_model.safetensors"))


def max_relative_difference(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float(np.max(np.abs(got[k] - want[k])) / np.max(np.abs(want[k]))) for k in want)


@pytest.mark.parametrize("ranks,accumulation", [(2, 1), (3, 2)])
def test_n_ranks_train_the_same_adapters_as_one_process_to_1e_12(ranks, accumulation, tmp_path):
    report_path = tmp_path / "report.json"
    rc, output, _ = launch((ranks, ["-m", "minilora.distributed.selfcheck", "--steps", "5", "--batch-size", "6",
                                    "--accumulation", str(accumulation), "--json", str(report_path)]))
    assert rc == 0, output
    report = json.loads(report_path.read_text())
    assert report["ranks"] == ranks and report["accumulation"] == accumulation
    assert set(report["methods"]) == {"lora", "loraplus", "qlora", "adalora"}
    for method, row in report["methods"].items():
        assert row["max_relative_difference"] <= 1e-12, (method, row["max_relative_difference"])
        assert row["moved"] > 0.1, method  # training changed the adapters: the comparison means something
        np.testing.assert_allclose(row["losses_data_parallel"], row["losses_one_process"], rtol=1e-12)
    adalora = report["methods"]["adalora"]
    assert len(adalora["mask_digests"]) == ranks and len(set(adalora["mask_digests"])) == 1
    assert report["mask_checks"] == 5  # AdaLoRA's masks compared across ranks after every step
    assert sum(adalora["kept_ranks"].values()) < 4 * len(adalora["kept_ranks"])  # triplets were pruned


def test_arrays_of_another_backend_are_reduced_through_host_buffers(tmp_path):
    report_path = tmp_path / "report.json"
    rc, output, _ = launch((2, ["-m", "minilora.distributed.selfcheck", "--steps", "3", "--methods", "lora,adalora",
                                "--backend", "array_api_strict", "--json", str(report_path)]))
    assert rc == 0, output
    report = json.loads(report_path.read_text())
    assert report["backend"] == "array_api_strict" and report["reducer"] == "HostReducer"
    assert all(row["max_relative_difference"] <= 1e-12 for row in report["methods"].values())


def test_mpiexec_finetune_matches_one_process_and_only_rank_0_reports(tmp_path):
    args = FINETUNE + ["--steps", "4"]
    rc, output, _ = launch((2, args + ["--out", str(tmp_path / "two")]))
    assert rc == 0, output
    assert cli.main(args[2:] + ["--out", str(tmp_path / "one")]) == 0
    assert output.count("data-parallel over 2 ranks: 3 of each batch of 6") == 1
    assert output.count("after:  exact match") == 1 and output.count("wrote ") == 1
    assert max_relative_difference(adapter(tmp_path / "two"), adapter(tmp_path / "one")) < 1e-4
    two, one = (json.loads((tmp_path / d / "history.json").read_text())["steps"] for d in ("two", "one"))
    np.testing.assert_allclose([s["loss"] for s in two], [s["loss"] for s in one], rtol=1e-5)
    assert [s["trained_tokens"] for s in two] == [s["trained_tokens"] for s in one]


def test_a_killed_rank_ends_the_job_and_the_checkpoint_resumes_with_another_number_of_ranks(tmp_path):
    from minilora.checkpoint import checkpoint_path, load_checkpoint
    from minilora.finetune import adapt, load_model_and_tokenizer, make_optimizer
    from minilora.finetune_config import FinetuneConfig
    out = tmp_path / "killed"
    ckpt = checkpoint_path(out)
    rc, output, seconds = launch((2, FINETUNE + ["--steps", "400", "--save-every", "2", "--out", str(out)]),
                                 timeout=60, kill_rank_when=(1, lambda: os.path.isfile(ckpt)))
    assert rc != 0, output
    assert re.search(r"(?i)killed|signal 9|bad termination", output), output
    assert not os.path.isfile(out / "adapter" / "adapter_model.safetensors")
    cfg = FinetuneConfig(model="tiny", batch_size=6, steps=400)
    model, _ = load_model_and_tokenizer(cfg)
    model = adapt(model, cfg)
    step = load_checkpoint(ckpt, model, make_optimizer(model, cfg))["step"]  # intact: it loads
    assert 1 <= step < 399 and (step + 1) % 2 == 0
    finish = ["--steps", str(step + 5), "--resume"]
    shutil.copytree(out, tmp_path / "alone")
    rc, output, _ = launch((3, FINETUNE + finish + ["--out", str(out)]))
    assert rc == 0, output
    assert f"resumed from {ckpt} at step {step + 1}" in output
    assert cli.main(FINETUNE[2:] + finish + ["--out", str(tmp_path / "alone")]) == 0
    assert max_relative_difference(adapter(out), adapter(tmp_path / "alone")) < 1e-4
    history = json.loads((out / "history.json").read_text())
    assert [s["step"] for s in history["steps"]] == list(range(step + 5))


@pytest.mark.parametrize("case", ["different seeds", "batch does not divide", "bad flag on one rank",
                                  "non-finite steps"])
def test_a_failure_on_some_rank_ends_the_job_with_a_message(case, tmp_path):
    base = FINETUNE + ["--steps", "3", "--out", str(tmp_path / "run")]
    groups, message = {
        "different seeds": ([(1, base), (1, base + ["--seed", "1"])],
                            r"ranks hold different state at start: frozen base: rank\(s\) \[1\] differ"),
        "batch does not divide": ([(3, base[:-4] + ["--batch-size", "4"] + base[-4:])],
                                  r"--batch-size 4 is the global batch and must divide by the number of ranks \(3\)"),
        "bad flag on one rank": ([(1, base), (1, base + ["--data", str(tmp_path / "missing")])],
                                 r"is neither a task .* nor a folder with train.jsonl"),
        "non-finite steps": ([(2, base + ["--steps", "30", "--alpha", "1e38"])],  # scaling overflows float32
                             r"10 consecutive steps had a non-finite loss or gradient"),
    }[case]
    rc, output, _ = launch(*groups, timeout=60)
    assert rc != 0
    assert re.search(message, output), output
    assert not os.path.exists(tmp_path / "run" / "adapter")
    if case == "non-finite steps":  # every rank stopped at the same step, after rank 0 kept the evidence
        assert json.loads((tmp_path / "run" / "history.json").read_text())["bad_steps"] == list(range(10))


def test_the_example_trains_the_same_on_two_ranks_as_on_one(tmp_path):
    example = os.path.join(ROOT, "examples", "distributed_basics.py")
    rc, output, _ = launch((2, [example, str(tmp_path / "two")]))
    assert rc == 0, output
    alone = subprocess.run([sys.executable, example, str(tmp_path / "one")], env=ENV, capture_output=True, text=True,
                           timeout=120)
    assert alone.returncode == 0, alone.stderr
    losses = [[float(v) for v in re.search(r"loss per step \(global mean\): (.*)", text).group(1).split()]
              for text in (output, alone.stdout)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert re.search(r"adapter hash on every rank: \['[0-9a-f]{16}'\]", output)  # one hash for both ranks
    assert max_relative_difference(adapter(tmp_path / "two"), adapter(tmp_path / "one")) < 1e-4
    assert len(open(example).read().splitlines()) < 100
