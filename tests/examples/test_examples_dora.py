"""examples/dora_basics.py runs and shows what it claims: exact at init, beats LoRA on a rescaled
teacher, merges, reloads, and mixes adapters per row."""
from __future__ import annotations

from example_runner import example_path, load_example, run_example

EXAMPLE = example_path("dora_basics")


def test_dora_basics_claims(capsys):
    module = load_example("dora_basics")
    result = module.main()
    assert result["at_init"] == 0.0
    assert result["dora_loss"] < result["lora_loss"] / 1000  # the magnitude vector holds diag(c)
    assert result["gap_merge"] < 1e-5 and result["gap_reload"] == 0.0 and result["gap_rows"] < 1e-5
    assert "lora_magnitude_vector" in capsys.readouterr().out


def test_dora_basics_runs_as_a_script():
    done = run_example("dora_basics")
    assert done.returncode == 0, done.stderr
    assert "max |merged - unmerged|" in done.stdout
    assert len(EXAMPLE.read_text().splitlines()) < 100
