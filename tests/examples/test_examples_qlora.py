"""examples/qlora_basics.py runs and shows what it claims: adapters learn on a 4-bit base, the float
merge keeps outputs, the re-quantized merge reports what survived, ~4.13 bits per parameter."""
from __future__ import annotations

from example_runner import example_path, load_example, run_example

EXAMPLE = example_path("qlora_basics")


def test_qlora_basics_trains_merges_and_reports(capsys):
    result = load_example("qlora_basics").main(steps=120)
    assert result["last_loss"] < result["first_loss"] / 10  # the adapters learned on the 4-bit base
    assert result["gap_float"] < 1e-5  # float merge == unmerged QLoRA output (float32 rounding)
    assert all(b <= 4.13 for b in result["bits"])
    assert sorted(result["requant"]) == ["q_proj", "v_proj"]
    assert all(0 < row["relative_error"] < 0.2 for row in result["requant"].values())
    out = capsys.readouterr().out
    assert "bits/param" in out and "update cosine" in out


def test_qlora_basics_runs_as_a_script():
    done = run_example("qlora_basics")
    assert done.returncode == 0, done.stderr
    assert "float merge: Linear" in done.stdout and "requantized q_proj" in done.stdout
    assert len(EXAMPLE.read_text().splitlines()) < 110
