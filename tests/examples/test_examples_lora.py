"""examples/lora_basics.py runs and shows what it claims: training helps, merging keeps outputs."""
from __future__ import annotations

from example_runner import example_path, load_example, run_example

EXAMPLE = example_path("lora_basics")


def test_lora_basics_trains_merges_and_reloads(capsys):
    result = load_example("lora_basics").main()
    assert result["last_loss"] < result["first_loss"] / 100  # the adapter learned the rank-2 change
    assert result["gap_merge"] < 1e-5 and result["gap_plain"] < 1e-5  # float32: merged == unmerged
    assert result["gap_reload"] == 0.0  # files round-trip bit for bit
    assert "trainable params: 256" in capsys.readouterr().out


def test_lora_basics_runs_as_a_script():
    done = run_example("lora_basics")
    assert done.returncode == 0, done.stderr
    assert "max |merged - unmerged|" in done.stdout
    assert len(EXAMPLE.read_text().splitlines()) < 100
