"""Claim: at the same final budget AdaLoRA beats LoRA, most at small budgets, and gives more rank to
the FFN and the top layers (AdaLoRA, arXiv 2303.10512: DeBERTaV3-base GLUE at ~1.3M parameters,
e.g. CoLA 71.45 vs 69.82, RTE 88.09 vs 85.20; Fig. 1 and Fig. 4 for where the budget goes).

LoRA r=8 against AdaLoRA init_r=12 -> target_r=8 on the same modules (every linear layer of the
blocks), both lora_alpha 16, same steps, lr and seeds; AdaLoRA's schedule: tinit = 10% and
tfinal = 20% of the steps, deltaT = 1, PEFT's defaults otherwise (beta1 = beta2 = 0.85,
orth_reg_weight 0.5). The final budget is equal (8 triplets per layer on average against rank 8
everywhere); AdaLoRA trains 12-rank factors until pruned, so its trainable count during training
is higher and is reported. AdaLoRA also runs at 10x the lr: PEFT's initialisation (P, Q ~ N(0, 0.02),
E = 0) makes its update grow far more slowly than LoRA's at the same lr. Held-out Shakespeare
perplexity, dates exact match; the kept ranks of the Shakespeare runs of the better AdaLoRA lr as a
(module type x layer) heatmap and the share of the budget per module type.
"""
from __future__ import annotations

import numpy as np

from minilora.lora import AdaLoraConfig, LoraConfig

from .measure import spread
from .report import Output, parse_args, pyplot, save_figure
from .runs import by_label, grid
from .setup import Setup

NAME = "adalora_budget"
LR = 1e-3
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adalora_config(steps: int):
    return AdaLoraConfig(init_r=12, target_r=8, total_step=steps, tinit=steps // 10, tfinal=steps // 5, deltaT=1,
                         lora_alpha=16, target_modules=MODULES)


def cells() -> list:
    return [{"label": "LoRA r8", "lr": LR,
             "make_config": lambda steps: LoraConfig(r=8, lora_alpha=16, target_modules=MODULES)},
            {"label": "AdaLoRA 12->8", "lr": LR, "make_config": adalora_config},
            {"label": "AdaLoRA 12->8 lr x10", "lr": 10 * LR, "make_config": adalora_config}]


def rank_table(kept: dict) -> tuple:
    """(layers, module types, ranks (n_types, n_layers)) from {path: kept rank}."""
    layers = sorted({int(p.split("layers.")[1].split(".")[0]) for p in kept})
    grid_ = np.zeros((len(MODULES), len(layers)))
    for path, rank in kept.items():
        layer = int(path.split("layers.")[1].split(".")[0])
        grid_[MODULES.index(path.rsplit(".", 1)[1]), layers.index(layer)] = rank
    return layers, MODULES, grid_


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    setup, out = Setup(quick=args.quick), Output(args)
    b = setup.budget
    steps, seeds = args.steps or b.steps, args.seeds or b.seeds
    extra = {"lr": LR, "modules": MODULES, "adalora": {"init_r": 12, "target_r": 8, "tinit": steps // 10,
                                                       "tfinal": steps // 5, "deltaT": 1}}
    rows = grid(setup, out, NAME, cells(), seeds, steps, b.task_steps, extra)
    ppl = by_label(rows, "text", "ppl")
    shown = min((c["label"] for c in cells()[1:]), key=lambda label: spread(ppl[label])["mean"])
    kept = [r["text"]["kept_ranks"] for r in rows if r.get("label") == shown]
    layers, modules, _ = rank_table(kept[0])
    mean_grid = np.mean([rank_table(k)[2] for k in kept], axis=0)  # (module types, layers), over seeds
    share = {m: float(mean_grid[i].sum() / mean_grid.sum()) for i, m in enumerate(modules)}
    out.write(NAME, setup, {**extra, "steps": steps, "task_steps": b.task_steps, "seeds": list(seeds),
                            "complete": True, "rows": rows, "rank_figure_from": shown, "budget_share_per_module": share,
                            "mean_kept_rank": {"layers": layers, "modules": modules, "ranks": mean_grid}})
    plot(rows, layers, modules, mean_grid, share, shown, out.figure_path(NAME))


def plot(rows, layers, modules, ranks, share, shown, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 1.2, 1.2]})
    image = axes[0].imshow(ranks, aspect="auto", cmap="viridis")
    axes[0].set_yticks(range(len(modules)), modules)
    axes[0].set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
    axes[0].set_xlabel("layer")
    axes[0].set_title(f"{shown}: kept rank (mean over seeds)", fontsize=9)
    fig.colorbar(image, ax=axes[0])
    axes[1].barh(modules, [share[m] for m in modules])
    axes[1].axvline(1 / len(modules), color="k", ls="--", lw=1)
    axes[1].set_title("share of the budget")
    labels = [c["label"] for c in cells()]
    values = by_label(rows, "text", "ppl")
    stats = [spread(values.get(label, [])) for label in labels]
    axes[2].bar(range(len(labels)), [s["mean"] or 0 for s in stats], yerr=[s["std"] or 0 for s in stats], capsize=3)
    axes[2].axhline(rows[0]["ppl"], color="k", ls="--", label="base")
    axes[2].set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
    axes[2].set_title("held-out perplexity")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
