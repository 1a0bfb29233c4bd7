"""Parameter totals count a 4-bit weight's d_out * d_in parameters: a model has one total in any format.

PEFT's get_nb_trainable_parameters counts a bitsandbytes Params4bit (uint8, two 4-bit values a
byte) as 2 x its bytes; minilora counts the true d_out * d_in, the same for every even-sized
weight. Before, a QLoRA SmolLM2 reported "trainable 460,800 of 28,807,488 parameters".
"""
from __future__ import annotations

import re

from minilora.finetune import adapt, run_finetune
from minilora.finetune_config import FinetuneConfig
from minilora.models import ModelConfig, Transformer
from minilora.nn import Linear
from minilora.quant import Linear4bit, model_memory_report, quantize_model

CONFIG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)


def test_quantizing_keeps_the_total_and_the_memory_report_keeps_its_split():
    model = Transformer(CONFIG, seed=0)
    total = model.num_parameters()
    quantized = quantize_model(model)
    assert model.num_parameters() == total
    packed = sum(model.get_submodule(p).weight.shape[0] * 2 for p in quantized)
    assert model.num_parameters(trainable_only=True) == total - packed  # 4-bit weights never train
    report = model_memory_report(model)
    assert report["quantized"]["params"] == packed and report["float"]["params"] == total - packed


def test_an_odd_sized_4bit_weight_counts_its_true_size():
    layer = Linear4bit.from_linear(Linear(5, 3, bias=True))  # 15 values in 8 bytes
    assert layer.num_parameters() == 15 + 3


def _counts(method):
    cfg = FinetuneConfig(model="tiny", method=method, r=4, targets="q_proj,v_proj")
    return adapt(Transformer(CONFIG, seed=0), cfg).get_nb_trainable_parameters()


def test_qlora_and_lora_report_the_same_total_and_trainable_count():
    lora, qlora = _counts("lora"), _counts("qlora")
    assert qlora == lora
    trainable, total = lora
    assert trainable == 2 * 2 * 4 * (32 + 32) - 2 * 4 * (32 - 16)  # A (4, 32) and B (d_out, 4) on q (32) and v (16)
    assert total == Transformer(CONFIG, seed=0).num_parameters() + trainable


def test_the_finetune_log_line_shows_the_same_total_for_qlora(tmp_path):
    totals = {}
    for method in ("lora", "qlora"):
        lines = []
        run_finetune(FinetuneConfig(model="tiny", data="sort", method=method, steps=1, eval_examples=1, n_train=4,
                                    progress=False, out=str(tmp_path / method)), log=lines.append)
        line = next(s for s in lines if s.startswith(f"method {method}: trainable"))
        trainable, total = (int(n.replace(",", "")) for n in
                            re.search(r"trainable ([\d,]+) of ([\d,]+) parameters", line).groups())
        loaded = int(re.search(r"loaded tiny: ([\d,]+) parameters", lines[0]).group(1).replace(",", ""))
        assert total == loaded + trainable, lines[:3]
        assert any(s.startswith("memory:") for s in lines)
        totals[method] = (trainable, total)
    assert totals["qlora"] == totals["lora"], totals
