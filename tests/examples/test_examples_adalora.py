"""examples/adalora_basics.py runs and shows what it claims: pruning to the budget, learning, exact files."""
from __future__ import annotations

import pytest

from example_runner import example_path, load_example, run_example

EXAMPLE = example_path("adalora_basics")


def test_adalora_basics_prunes_learns_reloads_and_converts(capsys):
    result = load_example("adalora_basics").main()
    assert sum(result["ranks"].values()) == result["target"] == 20
    assert result["after"] < result["before"] - 0.1
    assert result["gap_reload"] < 1e-5 and result["gap_lora"] < 1e-5  # float32 round-off at most
    assert "kept 20 of 40 triplets" in capsys.readouterr().out
    assert len(EXAMPLE.read_text().splitlines()) < 100


@pytest.mark.slow
def test_adalora_basics_runs_as_a_script_and_saves_the_picture(tmp_path):
    pytest.importorskip("matplotlib")
    image = tmp_path / "ranks.png"
    done = run_example("adalora_basics", "--plot", str(image))
    assert done.returncode == 0, done.stderr
    assert "max |LoRA - AdaLoRA|" in done.stdout and image.stat().st_size > 1000
