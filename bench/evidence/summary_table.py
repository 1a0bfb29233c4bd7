"""The explainer's one-line summary, measured: LoRA, LoRA+, QLoRA and AdaLoRA in one run each.

Same base, data, steps, seed and modules (every linear layer of the blocks) for all: LoRA r=8;
LoRA+ r=8 with loraplus_lr_ratio 16; QLoRA r=8 on the NF4 + DQ base; AdaLoRA init_r 12 ->
target_r 8. lr 1e-3, except AdaLoRA at 1e-2: at 1e-3 its update barely grows in this many steps
(adalora_budget.py measures both and finds 1e-2 on par with LoRA at 1e-3). Columns: trainable parameters (at the start; AdaLoRA prunes later), peak
training memory (weights at rest + traced peak of two steps), mean seconds per training step of the
run (wall time, noisy on a shared machine: compare within the table), held-out Shakespeare perplexity.
"""
from __future__ import annotations

from minilora.lora import LoraConfig

from .adalora_budget import adalora_config
from .qlora_vs_lora import ALL_LINEAR, nf4
from .report import Output, parse_args, pyplot, save_figure, say
from .runs import base_row, memory_run, text_run
from .setup import Setup

NAME = "summary_table"
LR = 1e-3


def methods() -> list:
    lora = lambda steps: LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR)  # noqa: E731
    return [{"method": "LoRA", "make_config": lora},
            {"method": "LoRA+", "make_config": lora, "loraplus_ratio": 16.0},
            {"method": "QLoRA", "make_config": lora, "prepare": nf4},
            {"method": "AdaLoRA", "make_config": adalora_config, "lr": 10 * LR}]


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    setup, out = Setup(quick=args.quick), Output(args)
    steps, seed = args.steps or setup.budget.steps, (args.seeds or [0])[0]
    rows = [{"method": "base", **base_row(setup, task=False)}]
    chosen = methods()
    for index, m in enumerate(chosen):
        kwargs = {k: m[k] for k in ("make_config", "loraplus_ratio", "prepare") if k in m}
        lr = m.get("lr", LR)
        run = text_run(setup, seed=seed, steps=steps, lr=lr, **kwargs)
        memory = memory_run(setup, steps=steps, lr=lr, **kwargs)
        rows.append({"method": m["method"], "lr": lr, "trainable": run["trainable"], "peak_mib": memory["peak_mib"],
                     "memory": memory, "step_s": run["step_s"], "ppl": run["ppl"], "losses": run["losses"]})
        say(f"{m['method']}: trainable {run['trainable']:,}, peak {memory['peak_mib']:.0f} MiB, "
            f"{run['step_s']:.2f} s/step, ppl {run['ppl']:.3f}")
        out.write(NAME, setup, {"lr": LR, "steps": steps, "seed": seed, "modules": ALL_LINEAR, "rows": rows,
                                "complete": index == len(chosen) - 1})
    plot(rows, out.figure_path(NAME))


def plot(rows, path):
    """Four panels, one bar per method: trainable parameters, peak memory, s/step, held-out ppl."""
    plt = pyplot()
    base, trained = rows[0], rows[1:]
    names = [r["method"] for r in trained]
    at = range(len(trained))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    axes[0].bar(at, [r["trainable"] / 1e6 for r in trained])
    axes[0].set_title("trainable parameters (M)")
    weights = [r["memory"]["weights_mib"] for r in trained]
    axes[1].bar(at, weights, label="weights at rest")
    axes[1].bar(at, [r["memory"]["training_peak_mib"] for r in trained], bottom=weights, label="training step peak")
    axes[1].set_title("peak training memory (MiB)")
    axes[1].legend(fontsize=7)
    axes[2].bar(at, [r["step_s"] for r in trained])
    axes[2].set_title("seconds per step (one run, noisy)")
    axes[3].bar(at, [r["ppl"] for r in trained])
    axes[3].axhline(base["ppl"], color="gray", linestyle="--", label=f"base {base['ppl']:.1f}")
    axes[3].set_title("held-out perplexity")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(at, names, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
