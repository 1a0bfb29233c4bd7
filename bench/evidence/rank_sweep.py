"""Claim: a very low rank suffices; q,v adapters are flat from r=1 to r=64 (LoRA, arXiv 2106.09685,
Table 6: WikiSQL 73.4 / 73.3 / 73.7 / 73.8 / 73.5 for r = 1, 2, 4, 8, 64 on GPT-3).

LoRA on q_proj and v_proj with r in RANKS, lora_alpha fixed at 16 (the paper keeps alpha fixed
rather than tuning it per rank), the same steps, learning rate and cosine schedule for every rank;
per seed, one run on Shakespeare (held-out perplexity) and one on the dates task (exact match).
"""
from __future__ import annotations

from minilora.lora import LoraConfig

from .report import Output, parse_args, pyplot, save_figure
from .runs import grid, metric_panels
from .setup import Setup

NAME = "rank_sweep"
RANKS = (1, 2, 4, 8, 16, 64)
LR = 1e-3


def cells(ranks=RANKS) -> list:
    return [{"label": f"r={r}", "r": r, "lr": LR,
             "make_config": lambda steps, r=r: LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj"])}
            for r in ranks]


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    setup, out = Setup(quick=args.quick), Output(args)
    b = setup.budget
    ranks = RANKS[:2] if args.quick else RANKS
    rows = grid(setup, out, NAME, cells(ranks), args.seeds or b.seeds, args.steps or b.grid_steps, b.task_steps,
                {"lr": LR, "lora_alpha": 16, "targets": ["q_proj", "v_proj"], "ranks": list(ranks)})
    plot(rows, ranks, out.figure_path(NAME))


def plot(rows, ranks, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))

    def draw(ax, stats):
        ax.errorbar(ranks, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r (q_proj, v_proj)")

    metric_panels(axes, rows, [f"r={r}" for r in ranks], draw)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
