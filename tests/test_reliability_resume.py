"""Crashes mid-save and exact resume.

- A child process saves checkpoints in a loop and is killed with SIGKILL at seeded random moments (22
  times); after every kill the checkpoint file loads and holds exactly one of the states that were
  written, and the next child resumes from it. The last child runs to its end.
- The real command is killed once at a random moment during `minilora finetune`; `--resume` finishes
  the run, and the adapter and the losses are bit-identical to an uninterrupted run.
- Exact resume through the CLI: N steps vs N/2 steps + stop + `--resume`, dropout on.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import minilora.checkpoint
import minilora.finetune
from minilora import backend, cli
from minilora.checkpoint import load_checkpoint, save_checkpoint
from minilora.nn import Dropout, Linear, Module
from minilora.optim import AdamW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ---------------------------------------------------------------- the saver child

class SaverModel(Module):
    def __init__(self):
        rng = backend.Random(7)
        self.a, self.b = Linear(256, 256, rng=rng), Linear(256, 128, rng=rng)
        self.dropout = Dropout(0.1, rng=backend.Random(8))


def saver_state():
    model = SaverModel()
    return model, AdamW(list(model.parameters()), lr=1e-2)


def advance(model, optimizer, step: int) -> None:
    """One deterministic 'training step': gradients from the step number and the dropout generator."""
    noise = float(model.dropout.rng.uniform((1,), dtype=np.float64)[0])
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        p.grad = np.full(p.shape, np.sin(step + i) + noise, dtype=np.float32)
    optimizer.step()
    optimizer.zero_grad()


def digest(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode() + np.ascontiguousarray(p.data).tobytes())
    h.update(json.dumps(model.dropout.rng.state, sort_keys=True).encode())
    return h.hexdigest()


def run_saver(path: str, end: int) -> None:
    """Resume from ``path`` when it exists, then advance and save after each step up to ``end``."""
    model, optimizer = saver_state()
    start = load_checkpoint(path, model, optimizer)["step"] + 1 if os.path.exists(path) else 0
    print(f"start {start}", flush=True)
    for step in range(start, end):
        advance(model, optimizer, step)
        save_checkpoint(path, model, optimizer, step)
    print("done", flush=True)


def _child(path, end):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_reliability_resume import run_saver; "
            "run_saver(sys.argv[2], int(sys.argv[3]))")
    return subprocess.Popen([sys.executable, "-c", code, os.path.dirname(__file__), str(path), str(end)],
                            stdout=subprocess.PIPE, text=True, env=ENV)


def test_sigkill_during_saves_never_loses_the_last_complete_checkpoint(tmp_path, capsys):
    path = tmp_path / "checkpoint.safetensors"
    rng = random.Random(20240305)
    reference, model, optimizer = [], *saver_state()  # reference[s]: the state after step s

    def expected(step):
        while len(reference) <= step:
            advance(model, optimizer, len(reference))
            reference.append(digest(model))
        return reference[step]

    last, kills, mid_write = -1, 0, 0
    for _ in range(22):
        child = _child(path, 100_000)
        assert child.stdout.readline().strip() == f"start {last + 1}"  # resumed from the last checkpoint
        time.sleep(rng.uniform(0.0, 0.12))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        kills += child.returncode == -signal.SIGKILL
        leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
        mid_write += bool(leftovers)
        for f in leftovers:  # the killed writer's temporary file: never read, safe to delete
            os.remove(tmp_path / f)
        if not path.exists():  # killed before its first save completed
            assert last == -1
            continue
        loaded, loaded_opt = saver_state()
        step = load_checkpoint(path, loaded, loaded_opt)["step"]
        assert step >= last
        assert digest(loaded) == expected(step), f"checkpoint of step {step} is not the state written at step {step}"
        last = step
    assert kills >= 20
    child = _child(path, last + 4)  # the last one is left to finish
    assert child.communicate(timeout=60)[0].split() == ["start", str(last + 1), "done"]
    loaded, loaded_opt = saver_state()
    assert load_checkpoint(path, loaded, loaded_opt)["step"] == last + 3
    assert digest(loaded) == expected(last + 3)
    with capsys.disabled():
        print(f"\nkill-during-save: {kills} SIGKILLs, {mid_write} left a temporary file (killed mid-write), "
              f"last checkpoint step {last}; every one loaded as a state that was written")


# ---------------------------------------------------------------- the real command

STEPS = 20
ARGS = ["finetune", "--model", "tiny", "--data", "sort", "--steps", str(STEPS), "--save-every", "2",
        "--dropout", "0.1", "--seed", "3", "--eval-examples", "4", "--no-progress"]


def _cli(out, *extra, check=True):
    result = subprocess.run([sys.executable, "-m", "minilora", *ARGS, "--out", str(out), *extra], env=ENV,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _outcome(out):
    """The adapter tensors and every deterministic number of history.json."""
    history = json.loads((out / "history.json").read_text())
    steps = [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "trained_tokens")} for r in history["steps"]]
    return load_file(out / "adapter" / "adapter_model.safetensors"), steps, history["bad_steps"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    _cli(out)
    return _outcome(out)


def _assert_same(outcome, expected):
    tensors, steps, bad = outcome
    assert sorted(tensors) == sorted(expected[0])
    for key, value in expected[0].items():
        np.testing.assert_array_equal(tensors[key], value, err_msg=key)
    assert steps == expected[1] and bad == expected[2]
    assert [r["step"] for r in steps] == list(range(STEPS))


class Stop(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_half_run_stop_and_resume_through_the_cli_is_bit_identical(uninterrupted, tmp_path, monkeypatch):
    real_save = minilora.checkpoint.save_checkpoint

    def save_then_stop(path, model, optimizer, step, *args, **kwargs):
        real_save(path, model, optimizer, step, *args, **kwargs)
        if step == STEPS // 2 - 1:
            raise Stop
    monkeypatch.setattr(minilora.finetune, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        cli.main([*ARGS, "--out", str(tmp_path)])
    monkeypatch.undo()
    assert not (tmp_path / "adapter").exists()
    result = _cli(tmp_path, "--resume")
    assert f"resumed from {tmp_path / 'checkpoint.safetensors'} at step {STEPS // 2}" in result.stdout
    _assert_same(_outcome(tmp_path), uninterrupted)


def test_sigkill_of_the_real_command_then_resume_finishes_bit_identical(uninterrupted, tmp_path):
    rng = random.Random(7)
    ckpt = tmp_path / "checkpoint.safetensors"
    child = subprocess.Popen([sys.executable, "-m", "minilora", *ARGS, "--out", str(tmp_path)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ckpt.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    child.send_signal(signal.SIGKILL)
    child.wait()
    from minilora.finetune import adapt, load_model_and_tokenizer, make_optimizer
    from minilora.finetune_config import FinetuneConfig
    cfg = FinetuneConfig(model="tiny", data="sort", dropout=0.1, seed=3)
    model = adapt(load_model_and_tokenizer(cfg)[0], cfg)
    step = load_checkpoint(ckpt, model, make_optimizer(model, cfg))["step"]
    assert step % 2 == 1 and step < STEPS  # a periodic checkpoint (--save-every 2) that loads
    result = _cli(tmp_path, "--resume")
    assert f"at step {step + 1}" in result.stdout
    _assert_same(_outcome(tmp_path), uninterrupted)
