"""bench/speed_table.py: a training goal is marked by the median over runs, not by the latest run."""
from __future__ import annotations

from bench.speed_table import train_rows


def _run(qlora_ratio: float, rss_gib: float = 0.8) -> dict:
    """A compare_torch summary with a LoRA row and a QLoRA row whose step ratio is ``qlora_ratio``."""
    lora = {"time_ratio": 0.78, "minilora_s": 2.3, "torch_s": 2.95, "minilora_rss_gib": 1.125,
            "torch_rss_gib": 1.5}
    qlora = {"time_ratio": qlora_ratio, "minilora_s": 3.0 * qlora_ratio, "torch_s": 3.0,
             "minilora_rss_gib": rss_gib, "torch_rss_gib": 2.0}
    return {"lora": lora, "qlora": qlora}


def _row(lines: list, start: str) -> list:
    (line,) = [x for x in lines if x.startswith(f"| {start}")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_one_run_that_meets_a_goal_among_runs_that_miss_it_is_not_met():
    lines = train_rows([_run(0.92), _run(0.94), _run(0.96), _run(0.79)])
    row = _row(lines, "QLoRA step, no checkpointing")
    assert row[1:] == ["2.79 s", "3.00 s", "0.93", "<= 0.85", "not met (1 of 4 runs)"]
    assert _row(train_rows([_run(0.79)]), "QLoRA step, no checkpointing")[5] == "**met**"  # one run: its own mark


def test_memory_rows_take_the_median_ratio_over_runs():
    lines = train_rows([_run(0.9, rss_gib=0.5), _run(0.9, rss_gib=1.5), _run(0.9, rss_gib=0.7)])
    assert _row(lines, "QLoRA peak RSS, no checkpointing (lifetime) vs torch+bnb")[3:] == \
        ["0.35", "<= 0.5", "**met** (2 of 3 runs)"]
    own = _row(lines, "QLoRA peak RSS, no checkpointing (lifetime) vs minilora's LoRA")
    assert own[3] == f"{0.7 / 1.125:.2f}" and own[5] == "not met (1 of 3 runs)"
    assert _row(lines, "LoRA step, no checkpointing")[5] == "**met** (3 of 3 runs)"
    assert _row(lines, "QLoRA peak RSS, checkpointing")[1] == "not measured"


def test_the_default_runs_are_those_the_results_folder_lists(tmp_path):
    from bench.speed_table import listed_train_runs
    assert listed_train_runs(str(tmp_path)) == ["compare_torch_train.json"]
    (tmp_path / "goals_train_runs.txt").write_text("# the table's runs\nrun_a.json\n\nrun_b.json  # last\n")
    assert listed_train_runs(str(tmp_path)) == ["run_a.json", "run_b.json"]


def test_every_listed_run_exists():
    """The lists docs/speed.md's tables are printed from (bench/results and each machine's folder in it)
    name only files that are there."""
    import glob
    import os
    from bench.speed_table import HERE, RUN_LIST, listed_train_runs
    lists = glob.glob(os.path.join(HERE, "results", "**", RUN_LIST), recursive=True)
    assert len(lists) >= 2
    for folder in map(os.path.dirname, lists):
        assert all(os.path.exists(os.path.join(folder, name)) for name in listed_train_runs(folder)), folder


def test_the_memory_table_names_how_each_run_computed_the_loss(tmp_path):
    """Runs before the tiles record chunk_rows alone (row chunks over the whole vocabulary)."""
    import json
    from bench.speed_table import memory_rows
    parts = dict.fromkeys(("weights", "adapters_and_optimizer", "activations", "logits", "backward_transient",
                           "rest"), 1.0)
    configs = [dict(quantized=False, checkpointing=False, chunk_rows=None),
               dict(quantized=False, checkpointing=True, chunk_rows=128),
               dict(quantized=True, checkpointing=True, chunk_rows=512, chunk_classes=4096)]
    for c in configs:
        c.update(parts_MiB=parts, rss_peak_MiB=6.0, lifetime_rss_peak_MiB=7.0)
    (tmp_path / "bench_memory.json").write_text(json.dumps({"configs": configs}))
    labels = [line.split(" | ")[0] for line in memory_rows(str(tmp_path))[2:]]
    assert labels == ["| LoRA, no checkpointing, whole logits", "| LoRA, checkpointing, chunks of 128 rows",
                      "| QLoRA, checkpointing, tiles of 512 x 4096, keep recompute"]
