"""Claim: 4-bit QLoRA matches 16-bit LoRA fine-tuning (QLoRA, arXiv 2305.14314, section 5: NF4 with
double quantization recovers 16-bit full fine-tuning and 16-bit LoRA performance) at far less memory.

LoRA r=8 alpha=16 on every linear layer of the blocks (QLoRA's recipe: all linear layers), same
steps, lr, schedule and seeds for both; QLoRA's base is the NF4 + double-quantized model (blocksize
64, lm_head/embedding kept in float32) while LoRA's stays float32 (our 16-bit stand-in: minilora
trains in float32). Held-out Shakespeare perplexity and dates exact match per seed; peak training
memory (weights at rest + traced peak of two steps) of each, as a bar chart.
"""
from __future__ import annotations

from minilora.lora import LoraConfig
from minilora.quant import quantize_model

from .measure import perplexity
from .report import Output, parse_args, pyplot, save_figure, say
from .runs import grid, memory_run, metric_panels
from .setup import Setup

NAME = "qlora_vs_lora"
LR = 1e-3
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def nf4(model) -> None:
    quantize_model(model, quant_type="nf4", blocksize=64, double_quant=True)


def cells() -> list:
    config = lambda steps: LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR)  # noqa: E731
    return [{"label": "LoRA (float32 base)", "lr": LR, "make_config": config},
            {"label": "QLoRA (NF4 + DQ base)", "lr": LR, "make_config": config, "prepare": nf4}]


OPTIONS = (("--memory-only", {"action": "store_true",
                               "help": "only the peak training memory of each (no training runs)"}),)


def measure_memory(setup, steps: int) -> dict:
    """Peak training memory of LoRA and QLoRA (fresh models, two steps each)."""
    memory = {c["label"]: memory_run(setup, c["make_config"], steps, LR, prepare=c.get("prepare")) for c in cells()}
    say(f"memory {memory}")
    return memory


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, extra=OPTIONS)
    setup, out = Setup(quick=args.quick), Output(args)
    b = setup.budget
    steps, seeds = args.steps or b.steps, args.seeds or b.seeds
    if args.memory_only:
        memory = measure_memory(setup, steps)
        out.write(f"{NAME}_memory", setup, {"lr": LR, "r": 8, "lora_alpha": 16, "targets": ALL_LINEAR,
                                            "memory": memory})
        return
    quantized = setup.base()
    nf4(quantized)
    quantized_base = perplexity(quantized, setup.eval_windows)
    del quantized
    say(f"NF4 + DQ base before training: ppl {quantized_base['ppl']:.3f}")
    extra = {"lr": LR, "r": 8, "lora_alpha": 16, "targets": ALL_LINEAR, "quantized_base": quantized_base}
    rows = grid(setup, out, NAME, cells(), seeds, steps, b.task_steps, extra)
    memory = measure_memory(setup, steps)
    out.write(NAME, setup, {**extra, "steps": steps, "task_steps": b.task_steps, "seeds": list(seeds),
                            "complete": True, "rows": rows, "memory": memory})
    plot(rows, memory, out.figure_path(NAME))


def plot(rows, memory, path):
    plt = pyplot()
    labels = [c["label"] for c in cells()]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))

    def draw(ax, stats):
        ax.bar(range(2), [s["mean"] or 0 for s in stats], yerr=[s["std"] or 0 for s in stats], capsize=3)
        ax.set_xticks(range(2), ["LoRA", "QLoRA"])

    metric_panels(axes[:2], rows, labels, draw)
    weights = [memory[label]["weights_mib"] for label in labels]
    training = [memory[label]["training_peak_mib"] for label in labels]
    axes[2].bar(range(2), weights, label="weights at rest")
    axes[2].bar(range(2), training, bottom=weights, label="training step peak")
    axes[2].set_xticks(range(2), ["LoRA", "QLoRA"])
    axes[2].set_ylabel("MiB")
    axes[2].set_title("peak training memory")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
