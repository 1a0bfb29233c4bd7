"""The demo configuration, timed: LoRA and QLoRA steps on SmolLM2-135M, peak RSS, generation speed.

Each method runs in its own process (so peak RSS is its own): load SmolLM2-135M-Instruct, quantize
the base to NF4 with double quantization (QLoRA only), inject LoRA r=8 on q_proj/v_proj, then time
training steps (forward + loss + backward + AdamW) on batches of the default 'dates' task, batch 8,
median over steps after a warm-up step. The LoRA process also times greedy generation with the KV
cache (64 new tokens from a chat prompt, batch 1).

Usage: python bench/bench_finetune.py [--steps 5] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, median, table, write_json  # noqa: E402


def demo_setup(method: str = "lora"):
    """(model, tokenizer, optimizer, batches) of the demo configuration (SmolLM2-135M, 'dates', batch 8)."""
    from minilora.data import Batches, encode_example, task_splits
    from minilora.finetune import adapt, make_optimizer
    from minilora.finetune_config import FinetuneConfig
    from minilora.io import load_pretrained
    from minilora.runtime import tune_allocator

    tune_allocator()  # as the minilora command does
    cfg = FinetuneConfig(method=method)
    model, tok = load_pretrained(cfg.model)
    model = adapt(model, cfg)
    optimizer = make_optimizer(model, cfg)
    train_set, _ = task_splits(cfg.data, n_train=200, n_eval=5)
    batches = Batches([encode_example(tok, p, c, cfg.max_seq_len) for p, c in train_set], cfg.batch_size,
                      tok.eos_token_id, seed=0)
    return model, tok, optimizer, batches


def child(method: str, steps: int) -> dict:
    from minilora.models.generate import stream_generate
    from minilora.models.transformer import lm_loss

    model, tok, optimizer, batches = demo_setup(method)
    times, tokens = [], 0
    for step in range(steps + 1):
        ids, labels = batches(step)
        tic = time.perf_counter()
        loss = lm_loss(model, ids, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # step 0 is the warm-up
            times.append(time.perf_counter() - tic)
            tokens = ids.size
    result = {"method": method, "step_s": median(times), "tokens_per_step": tokens,
              "tokens_per_s": tokens / median(times)}
    if method == "lora":
        prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Tell me about Paris."}]))
        tic = time.perf_counter()
        n = sum(1 for _ in stream_generate(model, [prompt], 64))
        result["generate_tokens_per_s"] = n / (time.perf_counter() - tic)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--child", choices=["lora", "qlora"], help=argparse.SUPPRESS)
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_finetune.json"))
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return None
    rows = []
    for method in ("lora", "qlora"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(table(rows, ["method", "step_s", "tokens_per_step", "tokens_per_s", "peak_rss_mib",
                       "generate_tokens_per_s"]))
    result = {"machine": machine(), "load_average": os.getloadavg(), "steps": args.steps, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
