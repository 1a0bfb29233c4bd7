"""examples/gguf_roundtrip.py runs and shows what it claims: NF4 loading gives quantize_model's bytes,
the F32 GGUF export reads back bit for bit, the Q8_0 one within its rounding."""
from __future__ import annotations

from example_runner import example_path, load_example, run_example

EXAMPLE = example_path("gguf_roundtrip")


def test_gguf_roundtrip_loads_nf4_and_exports_exactly(tmp_path, capsys):
    module = load_example("gguf_roundtrip")
    result = module.main(folder=str(tmp_path))
    assert result["nf4_bytes_equal"]
    assert result["F32"] == 0.0 and result["F32_greedy_equal"]
    assert 0.0 < result["Q8_0"] < 0.05
    assert "bytes equal to quantize_model: True" in capsys.readouterr().out


def test_gguf_roundtrip_runs_as_a_script():
    done = run_example("gguf_roundtrip")
    assert done.returncode == 0, done.stderr
    assert "F32: max |logit difference| to the merged model 0.00e+00" in done.stdout
    assert len(EXAMPLE.read_text().splitlines()) < 110
