"""Claim: the update has a very low intrinsic rank (LoRA, arXiv 2106.09685, section 7 and Fig. 3:
the top directions of r=8 and r=64 adapters overlap strongly, the rest is mostly noise).

(a) LoRA r=8 and r=64 on q_proj and v_proj, trained on Shakespeare from the same base, with
    different seeds: from one seed the two draws of A share a stream, so r=64's initial A would
    hold r=8's as its first 8 rows and the subspaces would overlap by construction. For the
    right singular vectors of A (A = U S V^T, V_r: the top-r rows of V^T as columns (d_in, r)):
        phi(i, j) = ||V_8[:, :i]^T V_64[:, :j]||_F^2 / min(i, j)   in [0, 1]
    (1: the top-i subspace of one lies in the top-j subspace of the other), for q and v in LAYERS.
    The same phi over the left singular vectors of B (d_out, r), the output directions of the
    update: B starts at zero, so all of it is learned, while A starts random and after a short run
    may still be mostly its initialisation; ||A_T - A_0||_F / ||A_0||_F says how far A moved.
(b) Full fine-tuning of q_proj and v_proj (every other weight frozen) on the same data and steps:
    the singular values of dW = W_ft - W_0 against those of the LoRA r=8 update (alpha / r) B A,
    and the share of ||dW||_F^2 in the top 8 directions. Peak training memory of both, measured.

STEPS (4x the few-run budget of the other experiments) lets A move away from its random start;
three training runs of that length still fit the 30-minute budget.
"""
from __future__ import annotations

import os

import numpy as np

from minilora import backend
from minilora.lora import LoraConfig, adapter_state_dict

from .measure import peak_training_memory, perplexity, train_run, trainable_count
from .report import Output, parse_args, pyplot, save_figure, say
from .runs import adapted_model, memory_run, text_run
from .setup import Setup

NAME = "intrinsic_rank"
LR_LORA, LR_FULL = 1e-3, 1e-4
MODULES = ("q_proj", "v_proj")
STEPS = 160


def lora_config(r: int):
    return lambda steps: LoraConfig(r=r, lora_alpha=16, target_modules=list(MODULES))


def factor(state: dict, layer: int, module: str, which: str) -> np.ndarray:
    """lora_A (r, d_in) or lora_B (d_out, r) of one layer from a PEFT-format adapter state dict."""
    key = next(k for k in state if f"layers.{layer}.self_attn.{module}.lora_{which}." in k)
    return state[key].astype(np.float64)


def subspace_similarity(a_small: np.ndarray, a_large: np.ndarray) -> np.ndarray:
    """phi (r_small, r_large) from two A matrices (r, d_in) (see module doc; min(r, d_in) directions)."""
    v_small = np.linalg.svd(a_small, full_matrices=False)[2].T  # (d_in, r_small)
    v_large = np.linalg.svd(a_large, full_matrices=False)[2].T  # (d_in, r_large)
    return _cumulative_overlap(v_small, v_large)


def output_similarity(b_small: np.ndarray, b_large: np.ndarray) -> np.ndarray:
    """phi (r_small, r_large) over the left singular vectors of two B matrices (d_out, r)."""
    u_small = np.linalg.svd(b_small, full_matrices=False)[0]  # (d_out, r_small)
    u_large = np.linalg.svd(b_large, full_matrices=False)[0]  # (d_out, r_large)
    return _cumulative_overlap(u_small, u_large)


def moved(start: np.ndarray, end: np.ndarray) -> float:
    """||end - start||_F / ||start||_F: how far training took a matrix from its initialisation."""
    return float(np.linalg.norm(end - start) / np.linalg.norm(start))


def _cumulative_overlap(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """phi(i, j) = ||small[:, :i]^T large[:, :j]||_F^2 / min(i, j) for orthonormal columns."""
    overlap = (small.T @ large) ** 2  # (r_small, r_large)
    cum = overlap.cumsum(0).cumsum(1)
    i, j = np.meshgrid(np.arange(1, cum.shape[0] + 1), np.arange(1, cum.shape[1] + 1), indexing="ij")
    return cum / np.minimum(i, j)


def full_finetune(setup, seed: int, steps: int) -> tuple:
    """(model, row): q_proj and v_proj weights trained in full, everything else frozen."""
    model = setup.base()
    for name, p in model.named_parameters():
        p.requires_grad = any(name.endswith(f"{m}.weight") for m in MODULES)
    row = {"trainable": trainable_count(model), **train_run(model, setup.text_batches(seed), steps, LR_FULL)}
    row.update(perplexity(model, setup.eval_windows))
    return model, row


def weights(model, module: str) -> dict:
    return {n: backend.to_numpy(p.data).astype(np.float64) for n, p in model.named_parameters()
            if n.endswith(f"{module}.weight")}


def spectrum(delta: np.ndarray, top: int = 8) -> dict:
    s = np.linalg.svd(delta, compute_uv=False)
    return {"singular_values": s[:64].tolist(), "energy_top": float((s[:top] ** 2).sum() / (s ** 2).sum())}


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    setup, out = Setup(quick=args.quick), Output(args)
    seed, steps = (args.seeds or [0])[0], args.steps or (setup.budget.steps if args.quick else STEPS)
    n_layers = setup.base().config.num_hidden_layers
    layers = sorted({0, n_layers // 2, n_layers - 1})
    seeds = {8: seed, 64: seed + 1}  # one seed would start r=64's A with r=8's A as its first rows
    runs = {r: text_run(setup, lora_config(r), seeds[r], steps, LR_LORA, keep_model=True) for r in seeds}
    states = {r: adapter_state_dict(runs[r].pop("model")) for r in runs}
    initial = {r: adapter_state_dict(adapted_model(setup, lora_config(r), steps, seeds[r])) for r in runs}
    say(f"LoRA r=8 ppl {runs[8]['ppl']:.3f}, r=64 ppl {runs[64]['ppl']:.3f}")
    phi = {f"{m} layer {i}": subspace_similarity(factor(states[8], i, m, "A"), factor(states[64], i, m, "A"))
           for m in MODULES for i in layers}
    phi_b = {f"{m} layer {i}": output_similarity(factor(states[8], i, m, "B"), factor(states[64], i, m, "B"))
             for m in MODULES for i in layers}
    a_moved = {f"r={r} {m} layer {i}": moved(factor(initial[r], i, m, "A"), factor(states[r], i, m, "A"))
               for r in runs for m in MODULES for i in layers}
    full_model, full_row = full_finetune(setup, seed, steps)
    say(f"full fine-tune of q, v: ppl {full_row['ppl']:.3f}")
    base = setup.base()
    spectra = {}
    for m in MODULES:
        w0, wft = weights(base, m), weights(full_model, m)
        for i in layers:
            name = next(n for n in w0 if f"layers.{i}." in n)
            lora_delta = (16 / 8) * factor(states[8], i, m, "B") @ factor(states[8], i, m, "A")
            spectra[f"{m} layer {i}"] = {"full": spectrum(wft[name] - w0[name]), "lora_r8": spectrum(lora_delta)}
    del full_model
    full_memory_model = setup.base()
    for name, p in full_memory_model.named_parameters():
        p.requires_grad = any(name.endswith(f"{m}.weight") for m in MODULES)
    memory = {"full_qv": peak_training_memory(full_memory_model, setup.text_batches(0), lr=LR_FULL),
              "lora_r8": memory_run(setup, lora_config(8), steps, LR_LORA)}
    say(f"memory: {memory}")
    out.write(NAME, setup, {"seed": seed, "seeds": seeds, "steps": steps, "lr_lora": LR_LORA, "lr_full": LR_FULL,
                            "layers": layers, "lora": runs, "full": full_row, "phi": phi, "phi_b": phi_b, "a_moved": a_moved,
                            "spectra": spectra, "memory": memory})
    plot_phi(phi, out.figure_path(f"{NAME}_subspace"))
    plot_phi(phi_b, out.figure_path(f"{NAME}_subspace_b"))
    plot_spectra(spectra, out.figure_path(f"{NAME}_spectrum"))


def plot_phi(phi, path):
    plt = pyplot()
    fig, axes = plt.subplots(2, len(phi) // 2, figsize=(3.4 * (len(phi) // 2), 5.4), squeeze=False,
                             constrained_layout=True)
    for ax, (name, values) in zip(axes.ravel(), phi.items()):
        values = np.asarray(values)
        image = ax.imshow(values, aspect="auto", vmin=0, vmax=1, cmap="viridis", origin="lower",
                          extent=(0.5, values.shape[1] + 0.5, 0.5, values.shape[0] + 0.5))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("j (r=64)")
        ax.set_ylabel("i (r=8)")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="phi(i, j)")
    save_figure(fig, path)


def plot_spectra(spectra, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(spectra), figsize=(2.8 * len(spectra), 3.2), squeeze=False,
                             constrained_layout=True)
    for ax, (name, s) in zip(axes.ravel(), spectra.items()):
        for key, style in (("full", "-"), ("lora_r8", "--")):
            values = np.asarray(s[key]["singular_values"])[: None if key == "full" else 8]  # rank 8: the rest is 0
            ax.semilogy(np.arange(1, len(values) + 1), values / values[0], style,
                        label=f"{key} (top-8 energy {s[key]['energy_top']:.2f})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("index")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("sigma_i / sigma_1")
    save_figure(fig, path)


def replot(path: str, out_dir: str) -> None:
    """Redraw both figures from a results JSON (after a change to the plotting only)."""
    import json
    with open(path) as f:
        data = json.load(f)
    plot_phi(data["phi"], os.path.join(out_dir, f"{NAME}_subspace.png"))
    plot_phi(data["phi_b"], os.path.join(out_dir, f"{NAME}_subspace_b.png"))
    plot_spectra(data["spectra"], os.path.join(out_dir, f"{NAME}_spectrum.png"))


if __name__ == "__main__":
    main()
