"""Every FinetuneConfig field and every `minilora finetune` flag is validated before any heavy work:
a bad value fails with a message naming it, and the model is never loaded (the loader is replaced by
one that fails the test if it is called)."""
from __future__ import annotations

import dataclasses
import json

import pytest

import minilora.finetune
import minilora.io.pretrained
from minilora import backend, cli
from minilora.errors import ConfigError, DataError, FileFormatError, MiniloraError, MissingFileError
from minilora.finetune import run_finetune
from minilora.finetune_config import FinetuneConfig


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration was validated")
    monkeypatch.setattr(minilora.finetune, "load_model_and_tokenizer", forbidden)
    monkeypatch.setattr(minilora.io.pretrained, "load_pretrained", forbidden)


BAD_FIELDS = [
    ("model", "no/such/model.gguf", "model 'no/such/model.gguf' not found"), ("model", 3, "model must be"),
    ("data", "no_such_task", "neither a task"), ("data", ["sort"], "data must be"),
    ("method", "dora", "method must be one of"), ("r", 0, "r must be a positive integer"),
    ("r", "8", "r must be a positive integer"), ("r", True, "r must be"), ("alpha", -1.0, "alpha must be"),
    ("alpha", float("inf"), "alpha must be"), ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("dropout", "0.1", "dropout must be"), ("targets", "q_proj,qproj", "available module names"),
    ("targets", ",", "targets is empty"), ("targets", 5, "targets must be"), ("rslora", "yes", "rslora must be"),
    ("dora", "yes", "dora must be"), ("init", "svd", "init must be"), ("init", "loftq", "use it with --method qlora"),
    ("loraplus_ratio", 0.0, "loraplus_ratio must be"), ("loraplus_ratio", float("nan"), "loraplus_ratio must be"),
    ("steps", -5, "steps must be a positive integer"), ("steps", 2.5, "steps must be"),
    ("batch_size", 0, "batch_size must be"), ("lr", 0.0, "lr must be"), ("lr", float("nan"), "lr must be"),
    ("warmup_steps", -1, "warmup_steps must be"), ("max_seq_len", 0, "max_seq_len must be"),
    ("max_grad_norm", 0.0, "max_grad_norm must be"), ("max_grad_norm", True, "max_grad_norm must be"),
    ("grad_checkpoint", 1, "grad_checkpoint must be"), ("backend", "torch", "backend must be one of"),
    ("seed", -1, "seed must be"), ("seed", 1.5, "seed must be"), ("out", "", "out must be"),
    ("resume", True, "--resume: no checkpoint"), ("save_every", -1, "save_every must be"),
    ("eval_examples", 0, "eval_examples must be"), ("n_train", 0, "n_train must be"),
    ("target_r", 0, "target_r must be"), ("quant_type", "nf8", "quant_type must be"),
    ("progress", None, "progress must be"),
    ("epochs", 0, "epochs must be a finite number > 0"), ("epochs", float("inf"), "epochs must be"),
    ("grad_accumulation_steps", 0, "grad_accumulation_steps must be a positive integer"),
    ("lr_schedule", "step", "lr_schedule must be one of cosine, linear, constant"),
    ("optimizer", "adam", "optimizer must be one of adamw, sgd"), ("weight_decay", -0.1, "weight_decay must be"),
    ("weight_decay", float("nan"), "weight_decay must be"), ("mask_prompt", "no", "mask_prompt must be"),
    ("eval_every", -1, "eval_every must be an integer >= 0"), ("val_batches", 0, "val_batches must be"),
    ("test", True, "--test needs a data folder with test.jsonl"),
    ("distributed", "yes", "distributed must be one of auto, mpi, none"),
]


def test_every_field_has_a_bad_value_case():
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} == {name for name, _, _ in BAD_FIELDS}


@pytest.mark.parametrize("field,value,match", BAD_FIELDS, ids=[f"{n}={v!r}" for n, v, _ in BAD_FIELDS])
def test_bad_field_fails_before_the_model_is_loaded(tmp_path, field, value, match):
    cfg = FinetuneConfig(**{"model": "tiny", "data": "sort", "out": str(tmp_path / "run"), field: value})
    with pytest.raises(ConfigError, match=match):
        run_finetune(cfg, log=lambda line: None)


def test_adalora_target_r_above_r_and_unknown_targets_list_the_names(tmp_path):
    with pytest.raises(ConfigError, match=r"target_r \(9\) must not exceed r \(8\)"):
        FinetuneConfig(model="tiny", data="sort", method="adalora", target_r=9).validate()
    with pytest.raises(ConfigError) as info:
        FinetuneConfig(model="tiny", data="sort", targets="q_proj,attn").validate()
    assert "['attn']" in str(info.value) and "q_proj, k_proj, v_proj, o_proj, gate_proj" in str(info.value)


def test_cupy_without_a_gpu_says_so_and_suggests_numpy(monkeypatch):
    monkeypatch.setattr(backend, "is_available", lambda name: name != "cupy")
    with pytest.raises(ConfigError, match="backend cupy needs a CUDA GPU.*use --backend numpy"):
        FinetuneConfig(model="tiny", data="sort", backend="cupy").validate()


def test_data_folder_missing_or_with_a_bad_line_is_found_first(tmp_path):
    with pytest.raises(ConfigError, match="train.jsonl not found"):
        run_finetune(FinetuneConfig(model="tiny", data=str(tmp_path / "nowhere")))
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    (tmp_path / "valid.jsonl").write_text('{"text": "ok"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: 'prompt' and 'completion' must both be strings"):
        run_finetune(FinetuneConfig(model="tiny", data=str(tmp_path), out=str(tmp_path / "run")))


def test_resume_from_a_broken_checkpoint_and_out_that_is_a_file(tmp_path):
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(FileFormatError, match="checkpoint.safetensors"):
        FinetuneConfig(model="tiny", data="sort", out=str(tmp_path), resume=True).validate()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        FinetuneConfig(model="tiny", data="sort", out=str(tmp_path / "file")).validate()


# ---------------------------------------------------------------- the command line

def _finetune_flags():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return {flag for action in sub.choices["finetune"]._actions for flag in action.option_strings} - {"-h", "--help"}


# (flags, message on stderr); argparse rejects types and choices, FinetuneConfig the rest.
BAD_FLAGS = [
    (["--model", "nowhere.gguf"], "model 'nowhere.gguf' not found"), (["--data", "nowhere"], "neither a task"),
    (["--method", "dora"], "invalid choice: 'dora'"), (["--r", "eight"], "invalid int value: 'eight'"),
    (["--r", "0"], "r must be a positive integer"), (["--alpha", "-2"], "alpha must be"),
    (["--dropout", "1.5"], "dropout must be"), (["--targets", "nothing"], "available module names"),
    (["--rslora", "yes"], "unrecognized arguments: yes"), (["--loraplus-ratio", "-1"], "loraplus_ratio must be"),
    (["--dora", "yes"], "unrecognized arguments: yes"), (["--init", "lora_ga"], "init must be"),
    (["--steps", "0"], "steps must be"), (["--batch-size", "-1"], "batch_size must be"),
    (["--lr", "nan"], "lr must be"), (["--max-seq-len", "0"], "max_seq_len must be"),
    (["--grad-checkpoint", "1"], "unrecognized arguments: 1"), (["--backend", "cupy"], "use --backend numpy"),
    (["--seed", "-3"], "seed must be"), (["--out", "FILE"], "exists and is not a folder"),
    (["--resume"], "--resume: no checkpoint"), (["--save-every", "-2"], "save_every must be"),
    (["--eval-examples", "0"], "eval_examples must be"), (["--target-r", "0"], "target_r must be"),
    (["--config", "nowhere.json"], "nowhere.json: config file not found"),
    (["--no-progress", "x"], "unrecognized arguments: x"),
    (["--epochs", "0"], "epochs must be"), (["--epochs", "2", "--steps", "5"], "give steps (5) or epochs (2.0)"),
    (["--grad-accumulation-steps", "0"], "grad_accumulation_steps must be"),
    (["--lr-schedule", "step"], "invalid choice: 'step'"), (["--warmup-steps", "-1"], "warmup_steps must be"),
    (["--optimizer", "adam"], "invalid choice: 'adam'"), (["--weight-decay", "-1"], "weight_decay must be"),
    (["--no-mask-prompt", "x"], "unrecognized arguments: x"), (["--eval-every", "-1"], "eval_every must be"),
    (["--val-batches", "0"], "val_batches must be"), (["--test"], "--test needs a data folder"),
    (["--distributed", "yes"], "invalid choice: 'yes'"),
]


def test_every_flag_has_a_bad_value_case():
    assert _finetune_flags() == {args[0] for args, _ in BAD_FLAGS}


@pytest.mark.parametrize("args,match", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_fails_with_a_message_before_loading(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.setattr(backend, "is_available", lambda name: name != "cupy")
    (tmp_path / "FILE").write_text("x")
    monkeypatch.chdir(tmp_path)
    base = ["finetune", "--model", "tiny", "--data", "sort", "--out", "run"]
    try:
        code = cli.main(base + args)
    except SystemExit as exc:  # argparse: usage line and the problem
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_config_files_are_validated_like_flags(tmp_path, capsys):
    def run(name, text):
        (tmp_path / name).write_text(text)
        return cli.main(["finetune", "--config", str(tmp_path / name), "--out", str(tmp_path / "run")])
    assert run("bad.json", '{"model": "tiny", "r": 8,}') == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err
    assert run("bad.yaml", "model: [tiny\n") == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err
    assert run("types.json", json.dumps({"model": "tiny", "data": "sort", "r": "8"})) == 2
    assert "r must be a positive integer, got '8'" in capsys.readouterr().err
    assert run("list.json", "[1, 2]") == 2
    assert "expected a mapping" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(json.dumps({"model": "tiny", "batch-size": 3, "colour": "red"}))
    with pytest.warns(UserWarning, match="unknown config keys \\['colour'\\]"):
        cfg = FinetuneConfig.from_file(str(tmp_path / "x.json"), overrides={"steps": 7})
    assert (cfg.batch_size, cfg.steps) == (3, 7)  # "batch-size" as on the command line
    with pytest.raises(MissingFileError):
        FinetuneConfig.from_file(str(tmp_path / "missing.json"))


def test_every_validation_error_is_a_minilora_error():
    for exc in (ConfigError, DataError, FileFormatError, MissingFileError):
        assert issubclass(exc, MiniloraError)
