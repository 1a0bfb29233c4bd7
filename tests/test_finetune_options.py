"""The fine-tune job's validation loss, test loss, new flags and resume, and `minilora eval`, on the tiny model."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import minilora.checkpoint
import minilora.finetune
from minilora import cli
from minilora.finetune import load_model_and_tokenizer, run_finetune
from minilora.finetune_config import FinetuneConfig
from minilora.tiny import TINY_PRESET, tiny_model

QUIET = dict(model="tiny", progress=False, eval_examples=4, seed=3)


def _folder(tmp_path, test=True):
    def sort(numbers):
        return [{"prompt": f"sort {n} =", "completion": " " + "".join(sorted(str(n)))} for n in numbers]
    rows = {"train": sort(range(1000, 1040)), "valid": sort(range(5000, 5012)),
            "test": [{"text": "sort 4321 = 1234"}, {"prompt": "sort 97 =", "completion": " 79"}]}
    data = tmp_path / "data"
    data.mkdir()
    for split, lines in rows.items():
        if split != "test" or test:
            (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return data


def test_validation_loss_is_logged_stored_plotted_and_summarised(tmp_path):
    lines = []
    out = tmp_path / "run"
    summary = run_finetune(FinetuneConfig(data=str(_folder(tmp_path)), steps=20, out=str(out), val_batches=1,
                                          batch_size=4, test=True, lr=1e-2, **QUIET), log=lines.append)
    history = json.loads((out / "history.json").read_text())
    evals = history["evals"]
    assert [e["step"] for e in evals] == list(range(1, 20, 2))  # about 10 evaluations by default
    assert all(np.isfinite(e["val_loss"]) for e in evals)
    best = min(evals, key=lambda e: e["val_loss"])
    assert summary["val_loss"]["best"] == {"step": best["step"], "val_loss": best["val_loss"]}
    assert summary["val_loss"]["final"]["val_loss"] == evals[-1]["val_loss"]
    assert summary["val_loss"]["best"]["val_loss"] < summary["val_loss"]["before"]
    assert json.loads((out / "summary.json").read_text())["val_loss"] == summary["val_loss"]
    assert sum("val_loss=" in line for line in lines) == 10
    assert "validation: 12 examples, 1 batches" in "\n".join(lines)  # --val-batches 1 of 3
    assert summary["test"]["tokens"] == 16 + 4  # every token but the first of the text line + eos; " 79" + eos
    assert summary["test"]["perplexity"] == pytest.approx(np.exp(summary["test"]["loss"]))
    assert any(line.startswith("test loss ") for line in lines)
    pytest.importorskip("matplotlib")
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_no_mask_prompt_trains_on_the_prompt_tokens_too(tmp_path):
    data = str(_folder(tmp_path, test=False))
    masked = run_finetune(FinetuneConfig(data=data, steps=1, out=str(tmp_path / "a"), **QUIET), log=lambda s: None)
    unmasked = run_finetune(FinetuneConfig(data=data, steps=1, out=str(tmp_path / "b"), mask_prompt=False, **QUIET),
                            log=lambda s: None)
    tokens = [json.loads((tmp_path / d / "history.json").read_text())["steps"][0]["trained_tokens"] for d in "ab"]
    assert tokens[0] == 8 * (len(" 0001") + 1)  # batch 8: the completion and eos, the prompt masked
    assert tokens[1] == 8 * len("sort 1000 = 0001")  # 17 tokens with eos: every one but the first is a target
    assert masked["val_loss"]["before"] != unmasked["val_loss"]["before"]


ARGS = ["finetune", "--model", "tiny", "--data", "sort", "--steps", "6", "--save-every", "1", "--dropout", "0.1",
        "--seed", "3", "--eval-examples", "4", "--no-progress", "--grad-accumulation-steps", "2", "--batch-size", "3",
        "--optimizer", "sgd", "--lr-schedule", "linear", "--warmup-steps", "2", "--weight-decay", "0.01",
        "--no-mask-prompt", "--eval-every", "2", "--val-batches", "1"]


class Stop(Exception):
    pass


def test_resume_with_the_new_options_is_bit_identical(tmp_path, monkeypatch):
    assert cli.main(ARGS + ["--out", str(tmp_path / "full")]) == 0
    real_save = minilora.checkpoint.save_checkpoint

    def save_then_stop(path, model, optimizer, step, *args, **kwargs):
        real_save(path, model, optimizer, step, *args, **kwargs)
        if step == 2:
            raise Stop
    monkeypatch.setattr(minilora.finetune, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        cli.main(ARGS + ["--out", str(tmp_path / "half")])
    monkeypatch.undo()
    assert cli.main(ARGS + ["--out", str(tmp_path / "half"), "--resume"]) == 0
    full, half = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("full", "half"))
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in half["steps"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full["steps"]]
    assert half["evals"] == full["evals"] and [e["step"] for e in full["evals"]] == [1, 3, 5]
    a, b = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("full", "half"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_flag_equal_to_its_default_still_overrides_the_config_file(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(minilora.finetune, "run_finetune", seen.append)
    (tmp_path / "c.json").write_text(json.dumps({"model": "tiny", "data": "sort", "r": 4, "lr_schedule": "linear",
                                                 "mask_prompt": False, "epochs": 2}))
    assert cli.main(["finetune", "--config", str(tmp_path / "c.json"), "--r", "8", "--out", str(tmp_path)]) == 0
    assert (seen[0].r, seen[0].lr_schedule, seen[0].mask_prompt, seen[0].epochs) == (8, "linear", False, 2)
    assert cli.main(["finetune", "--config", str(tmp_path / "c.json"), "--lr-schedule", "cosine",
                     "--out", str(tmp_path)]) == 0
    assert (seen[1].r, seen[1].lr_schedule) == (4, "cosine")
    assert cli.main(["finetune", "--model", "tiny", "--out", str(tmp_path)]) == 0
    assert seen[2] == FinetuneConfig(model="tiny", out=str(tmp_path))  # nothing else set


def test_finetune_tiny_and_the_tiny_job_share_one_preset():
    model, _ = load_model_and_tokenizer(FinetuneConfig(model="tiny", seed=5))
    assert model.config == tiny_model(5)[0].config and model.config.hidden_size == TINY_PRESET["hidden_size"]


# ---------------------------------------------------------------- minilora eval

def test_eval_reports_the_same_nll_as_the_fine_tunes_validation_loss(tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_finetune(FinetuneConfig(data="sort", steps=4, out=str(out), lr=1e-2, **QUIET), log=lambda s: None)
    capsys.readouterr()
    args = ["eval", "--model", "tiny", "--seed", "3", "--data", "sort", "--eval-examples", "4"]
    assert cli.main(args + ["--adapter", str(out / "adapter"), "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("tiny: mean NLL ") and printed[1].startswith(f"tiny + {out / 'adapter'}: mean NLL")
    results = json.loads((tmp_path / "e.json").read_text())
    assert results["base"]["loss"] == pytest.approx(summary["val_loss"]["before"], rel=1e-5)
    assert results["adapter"]["loss"] == pytest.approx(summary["val_loss"]["final"]["val_loss"], rel=1e-5)


def test_eval_reads_a_text_file_and_a_jsonl_split(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("sort 4321 = 1234\n" * 20)
    assert cli.main(["eval", "--model", "tiny", "--data", str(tmp_path / "t.txt"), "--max-seq-len", "64"]) == 0
    assert "(339 tokens of" in capsys.readouterr().out  # 340 characters, all but the first scored
    data = _folder(tmp_path)
    assert cli.main(["eval", "--model", "tiny", "--data", str(data), "--split", "test"]) == 0
    assert "(20 tokens of" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--data", "nowhere"], "neither a task"), (["--data", "DIR", "--split", "test"], "test.jsonl"),
    (["--data", "sort", "--adapter", "nowhere"], "--adapter 'nowhere' is not a folder"),
    (["--data", "sort", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--data", "BIN"], "not UTF-8 text")])
def test_eval_bad_input_is_one_line_on_stderr(tmp_path, monkeypatch, capsys, args, match):
    (tmp_path / "DIR").mkdir()
    (tmp_path / "DIR" / "valid.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "BIN").write_bytes(b"\xff\xfe\x00")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "--model", "tiny", *args]) == 2
    assert match in capsys.readouterr().err


def test_epochs_set_the_number_of_steps(tmp_path):
    summary = run_finetune(FinetuneConfig(data=str(_folder(tmp_path, test=False)), epochs=0.5, batch_size=4,
                                          grad_accumulation_steps=2, out=str(tmp_path / "run"), **QUIET),
                           log=lambda s: None)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["steps"] == 3 == len(history["steps"])  # ceil(0.5 * 40 / (4 * 2))
