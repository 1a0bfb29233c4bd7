"""Claim: a merged LoRA adapter adds no inference latency (LoRA, arXiv 2106.09685, section 4.1).

Three models with the same base weights: the base; LoRA r=8 on q_proj and v_proj unmerged
(y = W0 x + (alpha / r) B A x, adapters drawn at random with init_lora_weights=False so B != 0);
the same adapter after merge_adapter() (W = W0 + (alpha / r) B A, one matmul). Timed interleaved,
the order rotated every round, medians over rounds:
    decode:  batch 1, greedy generation of DECODE_TOKENS tokens after a PROMPT-token prompt (KV cache),
             reported per generated token;
    prefill: one forward of a (8, seq_len) batch under no_grad.
Exactness: logits of the merged model against the unmerged one on the held-out windows (max and
mean |difference|, argmax agreement), and both perplexities.
"""
from __future__ import annotations

import time

import numpy as np

from minilora import no_grad
from minilora.lora import LoraConfig, get_lora_model
from minilora.models import generate

from .measure import perplexity
from .report import Output, parse_args, pyplot, save_figure, say
from .setup import Setup

NAME = "merge_latency"
PROMPT, DECODE_TOKENS = 8, 16


def adapted(setup, seed: int):
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_lora_model(setup.base(), config, seed=seed)


def logits(model, ids):
    with no_grad():
        return np.asarray(model(ids).data, dtype=np.float64)


def time_decode(model, prompt) -> float:
    tic = time.perf_counter()
    generate(model, prompt, DECODE_TOKENS)
    return (time.perf_counter() - tic) / DECODE_TOKENS


def time_prefill(model, ids) -> float:
    tic = time.perf_counter()
    with no_grad():
        model(ids)
    return time.perf_counter() - tic


OPTIONS = (("--rounds", {"type": int, "default": None, "help": "timing rounds (default 15; quick 3)"}),
           ("--no-ppl", {"action": "store_true", "help": "skip the three held-out perplexities"}),
           ("--prefill-tokens", {"type": int, "default": None, "help": "prefill length (default: seq_len)"}))


def exactness(setup, models, ids, with_ppl: bool) -> dict:
    """Merge the "merged" copy and compare its logits with the unmerged copy's (and the base's)."""
    before = logits(models["merged"], ids)
    models["merged"].merge_adapter()
    unmerged, merged = logits(models["unmerged"], ids), logits(models["merged"], ids)
    if not np.array_equal(before, unmerged):
        raise RuntimeError("the two adapted copies differ before merging: the comparison would mean nothing")
    base_logits = logits(models["base"], ids)
    exact = {"max_abs_diff": float(np.abs(merged - unmerged).max()),
             "mean_abs_diff": float(np.abs(merged - unmerged).mean()),
             "logit_scale_max_abs": float(np.abs(unmerged).max()),
             "argmax_agreement": float((merged.argmax(-1) == unmerged.argmax(-1)).mean()),
             "adapter_changes_logits_by_max": float(np.abs(unmerged - base_logits).max())}
    if with_ppl:
        exact["ppl"] = {k: perplexity(m, setup.eval_windows)["ppl"] for k, m in models.items()}
    return exact


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, extra=OPTIONS)
    setup, out = Setup(quick=args.quick), Output(args)
    rounds = args.rounds or (3 if args.quick else 15)
    seed = (args.seeds or [0])[0]
    models = {"base": setup.base(), "unmerged": adapted(setup, seed), "merged": adapted(setup, seed)}
    ids = setup.eval_windows[:8, :-1][:, :args.prefill_tokens]  # (8, T)
    exact = exactness(setup, models, ids, not args.no_ppl)
    say(f"exactness: {exact}")
    prompt = setup.eval_windows[0, :PROMPT]
    names = list(models)
    for name in names:  # warm-up
        time_decode(models[name], prompt)
        time_prefill(models[name], ids)
    times = {name: {"decode_s_per_token": [], "prefill_s": []} for name in names}
    for r in range(rounds):
        for name in names[r % 3:] + names[:r % 3]:
            times[name]["decode_s_per_token"].append(time_decode(models[name], prompt))
            times[name]["prefill_s"].append(time_prefill(models[name], ids))
        medians = {n: {k: float(np.median(v)) for k, v in t.items()} for n, t in times.items()}
        ratios = {n: {k: medians[n][k] / medians["base"][k] for k in medians[n]} for n in names}
        say(f"round {r + 1}/{rounds}: ratios to base {ratios}")
        out.write(NAME, setup, {"rounds": r + 1, "complete": r + 1 == rounds, "prompt_tokens": PROMPT,
                                "decode_tokens": DECODE_TOKENS, "prefill_shape": list(ids.shape),
                                "adapter": "LoRA r=8 alpha=16 on q_proj, v_proj", "exactness": exact,
                                "times": times, "medians": medians, "ratio_to_base": ratios})
    plot(times, out.figure_path(NAME))


def plot(times, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in zip(axes, ("decode_s_per_token", "prefill_s"),
                              ("batch 1 decode (ms / token)", "batch 8 prefill (ms)")):
        names = list(times)
        ax.boxplot([np.asarray(times[n][key]) * 1e3 for n in names])
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
