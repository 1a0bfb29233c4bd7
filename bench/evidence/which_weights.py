"""Claim: at a fixed budget, adapting Wq and Wv together beats putting all of it on one matrix
(LoRA, arXiv 2106.09685, Table 5, GPT-3 at 18M trainable parameters, WikiSQL: Wq 70.4, Wv 73.0,
Wq+Wv 73.7, all four 73.7).

The paper's cells, by rank: Wq r8; Wk r8; Wv r8; Wo r8; Wq+Wk r4; Wq+Wv r4; Wq+Wk+Wv+Wo r2; plus
the MLP alone (gate, up, down) and all linear layers at r=1, the rank whose parameter count comes
closest to the others'. SmolLM2 uses grouped-query attention (k and v project 576 -> 192, q and o
576 -> 576), so equal ranks are not equal parameter counts here: every row reports its count.
Same steps, lr, alpha = 16 and seeds for every cell (2 seeds by default: 9 cells x 3 seeds would
not fit the 30-minute budget); Shakespeare perplexity and dates exact match.
"""
from __future__ import annotations

from minilora.lora import LoraConfig

from .report import Output, parse_args, pyplot, save_figure
from .runs import grid, metric_panels
from .setup import Setup

NAME = "which_weights"
LR = 1e-3
MLP = ["gate_proj", "up_proj", "down_proj"]
CELLS = (("Wq", ["q_proj"], 8), ("Wk", ["k_proj"], 8), ("Wv", ["v_proj"], 8), ("Wo", ["o_proj"], 8),
         ("Wq+Wk", ["q_proj", "k_proj"], 4), ("Wq+Wv", ["q_proj", "v_proj"], 4),
         ("Wq+Wk+Wv+Wo", ["q_proj", "k_proj", "v_proj", "o_proj"], 2), ("MLP", MLP, 1),
         ("all linear", ["q_proj", "k_proj", "v_proj", "o_proj"] + MLP, 1))


def cells(chosen=CELLS) -> list:
    return [{"label": f"{label} r{r}", "targets": targets, "r": r, "lr": LR,
             "make_config": lambda steps, t=targets, r=r: LoraConfig(r=r, lora_alpha=16, target_modules=t)}
            for label, targets, r in chosen]


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    setup, out = Setup(quick=args.quick), Output(args)
    b = setup.budget
    chosen = CELLS[4:6] if args.quick else CELLS
    rows = grid(setup, out, NAME, cells(chosen), args.seeds or b.seeds[:2], args.steps or b.grid_steps, b.task_steps,
                {"lr": LR, "lora_alpha": 16})
    plot(rows, [f"{label} r{r}" for label, _, r in chosen], out.figure_path(NAME))


def plot(rows, labels, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))

    def draw(ax, stats):
        ax.bar(range(len(labels)), [s["mean"] or 0 for s in stats], yerr=[s["std"] or 0 for s in stats], capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")

    metric_panels(axes, rows, labels, draw)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
