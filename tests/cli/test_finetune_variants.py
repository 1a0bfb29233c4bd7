"""`minilora finetune --dora --init ...`: the flags reach the adapter (config and file), for lora and qlora."""
from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from minilora import cli


@pytest.mark.parametrize("extra,use_dora,init", [
    (["--method", "lora", "--dora", "--init", "pissa"], True, "pissa"),
    (["--method", "qlora", "--dora"], True, True),
    (["--method", "qlora", "--init", "loftq"], False, "loftq"),
])
def test_dora_and_init_flags_reach_the_saved_adapter(tmp_path, extra, use_dora, init):
    out = tmp_path / "run"
    argv = ["finetune", "--model", "tiny", "--data", "sort", "--steps", "2", "--eval-examples", "2",
            "--no-progress", "--out", str(out), *extra]
    assert cli.main(argv) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["use_dora"], config["init_lora_weights"]) == (use_dora, init)
    keys = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_magnitude_vector") for k in keys) == use_dora
    if init == "loftq":
        assert config["loftq_config"] == {"loftq_bits": 4, "loftq_iter": 1}
