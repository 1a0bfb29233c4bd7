"""plot_rank_pattern: the AdaLoRA paper's picture (arXiv 2303.10512, fig. 3) of where rank went.

A heatmap with one row per module type (q_proj, v_proj, ...) and one column per layer index; each
cell shows the number of triplets that layer kept. Needs matplotlib (the ``plots`` extra).
"""
from __future__ import annotations

import os
import re

from ...io.atomic import atomic_path


def rank_table(rank_pattern: dict) -> tuple:
    """(module types, layer indices, {(type, layer): kept rank}) from {"<path>.lora_E": [bool]}.

    The layer index is the first integer path segment (``model.layers.3.self_attn.q_proj`` -> 3;
    paths without one go to layer 0); the module type is the last segment."""
    if not isinstance(rank_pattern, dict) or not rank_pattern:
        raise ValueError(f"plot_rank_pattern: rank_pattern must be a non-empty dict, got {rank_pattern!r}")
    cells = {}
    for key, mask in rank_pattern.items():
        path = re.sub(r"\.lora_E(\.[^.]+)?$", "", key)
        numbers = [int(s) for s in path.split(".") if s.isdigit()]
        kind = path.split(".")[-1]
        cells[(kind, numbers[0] if numbers else 0)] = int(sum(bool(m) for m in mask))
    kinds = sorted({k for k, _ in cells})
    layers = sorted({i for _, i in cells})
    return kinds, layers, cells


def plot_rank_pattern(rank_pattern, path=None, title: str = "AdaLoRA: kept ranks"):
    """Draw the kept ranks as a (module type x layer) heatmap; returns the matplotlib Figure.

    rank_pattern: a {"<path>.lora_E": [bool]} dict, or an AdaLoraModel (its trainable adapter's
    pattern). path: where to save the image (atomically), or None.
    """
    if hasattr(rank_pattern, "peft_config"):
        name = rank_pattern.trainable_adapter_name or rank_pattern.active_adapter
        rank_pattern = rank_pattern.peft_config[name].rank_pattern
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_rank_pattern needs matplotlib: pip install 'minilora[plots]'") from None
    kinds, layers, cells = rank_table(rank_pattern)
    grid = [[cells.get((k, i), float("nan")) for i in layers] for k in kinds]
    fig = Figure(figsize=(3.5 + 0.6 * len(layers), 1.5 + 0.45 * len(kinds)))
    ax = fig.add_subplot()
    top = max(cells.values()) or 1
    image = ax.imshow(grid, cmap="Greens", aspect="auto", vmin=0, vmax=top)
    for row, kind in enumerate(kinds):
        for col, layer in enumerate(layers):
            if (kind, layer) in cells:
                value = cells[(kind, layer)]
                ax.text(col, row, str(value), ha="center", va="center", fontsize=8,
                        color="white" if value > top / 2 else "black")
    ax.set_xticks(range(len(layers)), [str(i) for i in layers])
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="kept rank")
    fig.tight_layout()
    if path is not None:
        _save(fig, os.fspath(path))
    return fig


def _save(fig, path: str) -> None:
    """Save the figure atomically, in the format the file name's extension says (PNG without one)."""
    suffix = os.path.splitext(path)[1] or ".png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix.lstrip("."))
