"""Numerical faults through the main job: skipped steps reach history.json, the log and summary.json;
K bad steps in a row stop the command with a clear message and keep the last good checkpoint;
clipping is on by default (0.3 for QLoRA). The loop itself is tested in test_train.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

import minilora.finetune
import minilora.train
from minilora import cli
from minilora.checkpoint import load_checkpoint
from minilora.errors import MiniloraError
from minilora.finetune import adapt, load_model_and_tokenizer, make_optimizer, run_finetune
from minilora.finetune_config import FinetuneConfig
from minilora.train import History, TrainingStopped


def _nan_on(monkeypatch, bad):
    """lm_loss returns NaN on the training steps (calls) listed in ``bad``."""
    real, calls = minilora.train.lm_loss, {"n": 0}

    def faulty(model, ids, labels):
        loss = real(model, ids, labels)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] - 1 in bad else loss
    monkeypatch.setattr(minilora.train, "lm_loss", faulty)


def _cfg(out, **kw):
    return FinetuneConfig(**{**dict(model="tiny", data="sort", steps=10, eval_examples=3, n_train=50, progress=False,
                                    out=str(out)), **kw})


def test_skipped_steps_are_in_history_json_the_log_and_the_summary(tmp_path, monkeypatch):
    _nan_on(monkeypatch, {2, 3})
    lines = []
    summary = run_finetune(_cfg(tmp_path), log=lines.append)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["bad_steps"] == [2, 3]
    assert [r["step"] for r in history["steps"]] == [0, 1, 4, 5, 6, 7, 8, 9]
    assert all(np.isfinite(r["loss"]) for r in history["steps"])
    assert summary["skipped_steps"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_steps"] == 2
    assert any(line.startswith("step 10/10") and "skipped=2" in line for line in lines), lines


def test_consecutive_bad_steps_stop_the_command_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_on(monkeypatch, set(range(4, 100)))
    argv = ["finetune", "--model", "tiny", "--data", "sort", "--steps", "30", "--save-every", "2",
            "--eval-examples", "3", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 2  # a message, not a traceback
    err = capsys.readouterr().err
    assert "10 consecutive steps had a non-finite loss or gradient (last at step 13)" in err
    assert f"the last checkpoint is {tmp_path / 'checkpoint.safetensors'}" in err
    assert issubclass(TrainingStopped, MiniloraError)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["bad_steps"] == list(range(4, 14))
    cfg = _cfg(tmp_path)
    model = adapt(load_model_and_tokenizer(cfg)[0], cfg)
    state = load_checkpoint(tmp_path / "checkpoint.safetensors", model, make_optimizer(model, cfg))
    assert state["step"] == 3  # the last checkpoint written before the faults
    assert all(np.isfinite(p.data).all() for p in model.parameters())


@pytest.mark.parametrize("method,expected", [("lora", 1.0), ("qlora", 0.3)])
def test_gradient_clipping_is_on_by_default_and_0_3_for_qlora(tmp_path, monkeypatch, method, expected):
    seen = {}

    def fake_train(model, optimizer, batches, config, **kw):
        seen["max_grad_norm"] = config.max_grad_norm
        return kw["history"] or History()
    monkeypatch.setattr(minilora.finetune, "train", fake_train)
    run_finetune(_cfg(tmp_path, method=method, steps=2), log=lambda line: None)
    assert seen["max_grad_norm"] == expected
