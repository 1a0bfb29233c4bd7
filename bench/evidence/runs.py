"""One fine-tuning run of an experiment: fresh base, adapters, train, score; and the base row.

A run trains on Shakespeare (held-out perplexity) and, when asked, separately on the generated task
(exact match of greedy completions on fixed held-out prompts); both from the same fresh base model.
``make_config(steps)`` returns the adapter config (AdaLoRA needs the step count); ``prepare(model)``
may change the base first (QLoRA quantizes it). Results of an experiment are written after every run
with "complete": false until the last, so an interrupted experiment keeps what it measured.
"""
from __future__ import annotations

from minilora.lora import get_lora_model

from .measure import peak_training_memory, perplexity, spread, task_accuracy, train_run, trainable_count
from .report import say


def base_row(setup, task: bool = True) -> dict:
    """The base model's held-out perplexity (and task exact match): the first row of every table."""
    model = setup.base()
    row = {"name": "base", **perplexity(model, setup.eval_windows)}
    if task:
        _, eval_set = setup.task_batches(0)
        row["exact_match"] = task_accuracy(model, setup.tokenizer, eval_set)
    say(f"base: {row}")
    return row


def adapted_model(setup, make_config, steps: int, seed: int, prepare=None):
    model = setup.base()
    if prepare is not None:
        prepare(model)
    return get_lora_model(model, make_config(steps), seed=seed)


def text_run(setup, make_config, seed: int, steps: int, lr: float, loraplus_ratio=None, prepare=None,
             keep_model: bool = False) -> dict:
    model = adapted_model(setup, make_config, steps, seed, prepare)
    trained = train_run(model, setup.text_batches(seed), steps, lr, loraplus_ratio=loraplus_ratio)
    row = {"trainable": trainable_count(model), **trained, **perplexity(model, setup.eval_windows)}
    if hasattr(model, "kept_ranks"):  # AdaLoRA: where the budget went
        row["kept_ranks"] = model.kept_ranks()
    if keep_model:
        row["model"] = model
    return row


def task_run(setup, make_config, seed: int, steps: int, lr: float, loraplus_ratio=None, prepare=None) -> dict:
    model = adapted_model(setup, make_config, steps, seed, prepare)
    batches, eval_set = setup.task_batches(seed)
    trained = train_run(model, batches, steps, lr, loraplus_ratio=loraplus_ratio)
    return {"trainable": trainable_count(model), **trained,
            "exact_match": task_accuracy(model, setup.tokenizer, eval_set)}


def memory_run(setup, make_config, steps: int, lr: float, loraplus_ratio=None, prepare=None) -> dict:
    """Peak training memory of a fresh adapted model (two steps on Shakespeare batches)."""
    model = adapted_model(setup, make_config, steps, 0, prepare)
    return peak_training_memory(model, setup.text_batches(0), lr=lr, loraplus_ratio=loraplus_ratio)


def grid(setup, out, name: str, cells: list, seeds, steps: int, task_steps: int | None, extra: dict) -> list:
    """Run every (cell, seed): cell = {"label", "make_config", "lr", "loraplus_ratio"?, "prepare"?, ...}.

    Writes <name>.json after each run; returns the rows (one per cell and seed, text and task metrics).
    """
    rows = [{"label": "base", **base_row(setup, task=task_steps is not None)}]
    keys = ("make_config", "lr", "loraplus_ratio", "prepare")
    total = len(cells) * len(seeds)
    for index, (cell, seed) in enumerate(((c, s) for s in seeds for c in cells), start=1):
        kwargs = {k: cell[k] for k in keys if k in cell}
        info = {k: v for k, v in cell.items() if k not in keys}
        row = {**info, "seed": seed, "lr": cell["lr"], "loraplus_ratio": cell.get("loraplus_ratio"),
               "text": text_run(setup, seed=seed, steps=steps, **kwargs)}
        if task_steps is not None:
            row["task"] = task_run(setup, seed=seed, steps=task_steps, **kwargs)
        rows.append(row)
        say(f"{name} {index}/{total}: {cell['label']} seed {seed}: ppl {row['text']['ppl']:.3f}"
            + (f", exact match {row['task']['exact_match']:.2f}" if "task" in row else ""))
        out.write(name, setup, {**extra, "steps": steps, "task_steps": task_steps, "seeds": list(seeds),
                                "complete": index == total, "rows": rows})
    return rows


def by_label(rows: list, part: str, metric: str) -> dict:
    """{label: [metric of each seed]} over the trained rows (part "text" or "task")."""
    grouped: dict = {}
    for row in rows:
        if part in row:
            grouped.setdefault(row["label"], []).append(row[part][metric])
    return grouped


PANELS = (("text", "ppl", "held-out perplexity (Shakespeare)"), ("task", "exact_match", "dates exact match"))


def metric_panels(axes, rows: list, labels: list, draw) -> None:
    """One panel per metric of PANELS: ``draw(ax, stats)`` with the spread per label, the base line."""
    for ax, (part, metric, title) in zip(axes, PANELS):
        values = by_label(rows, part, metric)
        draw(ax, [spread(values.get(label, [])) for label in labels])
        if rows[0].get(metric) is not None:
            ax.axhline(rows[0][metric], color="k", ls="--", label="base model")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.grid(alpha=0.3)
