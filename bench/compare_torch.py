"""minilora (NumPy) against torch + PEFT (+ bitsandbytes, transformers) on SmolLM2-135M, same run, same machine.

Three measurements, each with one worker process per framework (so threads are set before the
libraries load and each process's peak RSS is its own):

    lora      training step: forward + cross-entropy + backward + AdamW, batch B x T random token ids,
              LoRA r=8 (alpha 16) on every q_proj and v_proj, float32
    qlora     the same step over NF4 + double-quantized block Linears (minilora quantize_model;
              torch: bitsandbytes.nn.Linear4bit(quant_type="nf4", compress_statistics=True) on CPU)
    generate  greedy decoding with the KV cache, batch 1, N new tokens after a short prompt
              (minilora.models.generate; transformers' model.generate); tokens/s includes the prefill

Both sides load the same GGUF file (minilora.io.load_pretrained; transformers' from_pretrained with
gguf_file=, which dequantizes to float32). The parent alternates the two workers (order swapped every
round) through one warm-up and --steps timed repetitions, and reports medians, the ratio
minilora / torch, and peak RSS: "rss_peak" is the process's lifetime peak (getrusage ru_maxrss, loading
included), "rss_run_peak" the peak while timing (VmHWM after resetting it via /proc/self/clear_refs).
Each run also records the worker's CPU time (time.process_time, all its threads): on a machine that
other jobs load, wall time measures the scheduler too, CPU time less so (spinning BLAS threads count).

Needs torch, transformers, peft, bitsandbytes (the .venv-ref environment):
    .venv-ref/bin/python bench/compare_torch.py [--steps 5] [--quick] [--tasks lora,qlora,generate]
    .venv-ref/bin/python bench/compare_torch.py --profile lora     # where minilora's step spends its time
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("lora", "qlora", "generate")
GOALS = {"lora": ("time", 0.85), "qlora": ("time", 0.85), "qlora_rss": ("rss", 0.5), "generate": ("speed", 2.0)}
PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was built"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed repetitions per framework after one warm-up (median)")
    p.add_argument("--quick", action="store_true", help="3 timed repetitions instead of --steps (same real model)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--threads", type=int, default=2, help="threads per framework (BLAS / torch intra-op)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--malloc-tuning", action="store_true",
                   help="minilora workers use bench_step.tune_malloc (glibc keeps freed arrays; default: off)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "compare_torch.json"))
    p.add_argument("--profile", choices=("lora", "qlora", "generate"),
                   help="instead of comparing: cProfile one minilora run of this task after a warm-up, in this process")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "TASK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps = 3
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        p.error(f"--tasks: unknown {bad}; expected a subset of {TASKS}")
    for name in ("steps", "threads", "batch", "seq", "new_tokens"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


# ------------------------------------------------------------------ worker side

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _tokens(vocab: int, batch: int, seq: int):
    import numpy as np
    tokens = np.random.default_rng(0).integers(0, vocab, (batch, seq + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _prompt_ids():
    from minilora.io import load_tokenizer
    return load_tokenizer("smollm2-135m").encode(PROMPT)


def minilora_setup(task: str, args):
    """-> run() returning a dict with at least "seconds"."""
    from minilora.io import load_pretrained
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.models import generate, lm_loss
    from minilora.optim import AdamW
    from minilora.quant import quantize_model
    from minilora.tensor import no_grad

    model, _ = load_pretrained("smollm2-135m")
    if task == "generate":
        model.eval()
        prompt = _prompt_ids()

        def run():
            t0 = time.perf_counter()
            with no_grad():
                out = generate(model, prompt, args.new_tokens)
            return {"seconds": time.perf_counter() - t0, "tokens": [int(t) for t in out[len(prompt):]]}
        return run
    if task == "qlora":
        quantize_model(model, quant_type="nf4", double_quant=True)
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    lora.train()
    optimizer = AdamW(lora.trainable_parameters(), lr=1e-4)
    ids, targets = _tokens(model.config.vocab_size, args.batch, args.seq)

    def run():
        t0 = time.perf_counter()
        optimizer.zero_grad()
        loss = lm_loss(lora, ids, targets)
        loss.backward()
        optimizer.step()
        return {"seconds": time.perf_counter() - t0, "loss": float(loss.item())}
    return run


def _bnb_quantize_blocks(model):
    """Every Linear inside the decoder blocks -> bitsandbytes Linear4bit NF4 with double quantization."""
    import bitsandbytes as bnb
    import torch
    for layer in model.model.layers:
        for path, module in list(layer.named_modules()):
            if type(module) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(module.weight.data.clone(), requires_grad=False,
                                         compress_statistics=True, quant_type="nf4")
            if module.bias is not None:
                q.bias = torch.nn.Parameter(module.bias.data.clone(), requires_grad=False)
            parent, _, name = path.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, name, q.to("cpu"))  # .to quantizes


def torch_setup(task: str, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from minilora.io import smollm2_gguf_path
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    if task == "generate":
        model.eval()
        prompt = torch.tensor([_prompt_ids()])

        def run():
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, use_cache=True)
            return {"seconds": time.perf_counter() - t0, "tokens": out[0, prompt.shape[1]:].tolist()}
        return run
    if task == "qlora":
        _bnb_quantize_blocks(model)
    model.config.use_cache = False
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora.train()
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
    ids, targets = (torch.from_numpy(a) for a in _tokens(model.config.vocab_size, args.batch, args.seq))

    def run():
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = lora(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return {"seconds": time.perf_counter() - t0, "loss": float(loss.item())}
    return run


def worker(framework: str, task: str, args) -> None:
    """Line protocol on stdin/stdout: after setup send {"ready"}; "run" -> one timing; "done" -> RSS, exit."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not mix with the protocol
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    tuned = False
    if framework == "minilora" and args.malloc_tuning:
        sys.path.insert(0, HERE)
        from bench_step import tune_malloc
        tuned = tune_malloc()

    def send(msg):
        out.write("@@" + json.dumps(msg) + "\n")
        out.flush()

    t0 = time.perf_counter()
    run = (minilora_setup if framework == "minilora" else torch_setup)(task, args)
    send({"ready": True, "setup_seconds": time.perf_counter() - t0, "rss_after_setup_kib": _rss_kib("VmRSS"),
          "malloc_tuned": tuned})
    reset = _reset_peak_rss()
    for line in sys.stdin:
        if line.strip() == "run":
            c0 = time.process_time()
            r = run()
            send(dict(r, cpu_seconds=time.process_time() - c0))
        else:
            import resource
            send({"rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "rss_run_peak_kib": _rss_kib("VmHWM") if reset else None})
            return


# ------------------------------------------------------------------ parent side

class Worker:
    def __init__(self, framework: str, task: str, args, log_dir: str):
        self.name = framework
        self.log = os.path.join(log_dir, f"{framework}-{task}.log")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, task, "--threads", str(args.threads),
               "--batch", str(args.batch), "--seq", str(args.seq), "--new-tokens", str(args.new_tokens)]
        if args.malloc_tuning:
            cmd.append("--malloc-tuning")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         cwd=os.path.dirname(HERE))

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        with open(self.log) as fh:
            tail = fh.read()[-3000:]
        raise RuntimeError(f"{self.name} worker exited (status {self.proc.wait()}); its log ends:\n{tail}")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.receive()


def measure(task: str, args, log_dir: str) -> dict:
    """Both workers set up side by side, then warm-up + args.steps rounds, alternating who goes first."""
    workers = [Worker("minilora", task, args, log_dir), Worker("torch", task, args, log_dir)]
    result = {w.name: {"setup": w.receive(), "runs": []} for w in workers}
    loads = []
    for i in range(args.steps + 1):
        order = workers if i % 2 == 0 else workers[::-1]
        for w in order:
            r = w.ask("run")
            if i:  # round 0 is the warm-up
                result[w.name]["runs"].append(r)
        loads.append(os.getloadavg()[0])
        print(f"  {task} round {i}{' (warm-up)' if not i else ''}: " +
              ", ".join(f"{w.name} {result[w.name]['runs'][-1]['seconds']:.3f} s" if i else w.name for w in workers),
              flush=True)
    for w in workers:
        result[w.name]["memory"] = w.ask("done")
        w.proc.wait(timeout=60)
    result["load_average_1min"] = loads
    return result


def summarize(task: str, res: dict, args) -> dict:
    import statistics
    row = {"task": task}
    for fw in ("minilora", "torch"):
        secs = [r["seconds"] for r in res[fw]["runs"]]
        row[f"{fw}_s"] = statistics.median(secs)
        if all("cpu_seconds" in r for r in res[fw]["runs"]):
            row[f"{fw}_cpu_s"] = statistics.median(r["cpu_seconds"] for r in res[fw]["runs"])
        row[f"{fw}_rss_gib"] = res[fw]["memory"]["rss_peak_kib"] / 2**20
        run_peak = res[fw]["memory"]["rss_run_peak_kib"]
        row[f"{fw}_run_rss_gib"] = run_peak / 2**20 if run_peak else None
    row["time_ratio"] = row["minilora_s"] / row["torch_s"]
    if "minilora_cpu_s" in row and "torch_cpu_s" in row:
        row["cpu_ratio"] = row["minilora_cpu_s"] / row["torch_cpu_s"]
    row["rss_ratio"] = row["minilora_rss_gib"] / row["torch_rss_gib"]
    if task == "generate":
        row["minilora_tok_s"] = args.new_tokens / row["minilora_s"]
        row["torch_tok_s"] = args.new_tokens / row["torch_s"]
        row["speed_ratio"] = row["minilora_tok_s"] / row["torch_tok_s"]
        ours, theirs = res["minilora"]["runs"][0]["tokens"], res["torch"]["runs"][0]["tokens"]
        row["same_tokens"] = ours == theirs
        # transformers' min_new_tokens suppresses end-of-sequence; minilora (no eos_token_id) does not
        row["agreeing_prefix"] = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    else:
        row["loss_minilora"], row["loss_torch"] = res["minilora"]["runs"][0]["loss"], res["torch"]["runs"][0]["loss"]
    return row


def goals(rows: dict) -> list[dict]:
    out = []
    if "lora" in rows:
        out.append(dict(goal="LoRA step <= 0.85x torch", value=rows["lora"]["time_ratio"],
                        met=rows["lora"]["time_ratio"] <= 0.85))
    if "qlora" in rows:
        out.append(dict(goal="QLoRA step <= 0.85x torch+bnb", value=rows["qlora"]["time_ratio"],
                        met=rows["qlora"]["time_ratio"] <= 0.85))
        out.append(dict(goal="QLoRA peak RSS <= 0.5x torch+bnb", value=rows["qlora"]["rss_ratio"],
                        met=rows["qlora"]["rss_ratio"] <= 0.5))
    if "generate" in rows:
        out.append(dict(goal="generation >= 2x transformers tok/s", value=rows["generate"]["speed_ratio"],
                        met=rows["generate"]["speed_ratio"] >= 2.0))
    return out


def profile(args, top: int = 25) -> dict:
    """cProfile of one minilora run (after a warm-up) with the worker's settings; prints the top by tottime."""
    import cProfile
    import io
    import pstats
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # effective only if NumPy is not loaded yet (it is not, here)
    run = minilora_setup(args.profile, args)
    run()
    profiler = cProfile.Profile()
    c0 = time.process_time()
    profiler.enable()
    seconds = run()["seconds"]
    profiler.disable()
    cpu = time.process_time() - c0
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    print(f"minilora {args.profile}: {seconds:.3f} s wall, {cpu:.3f} s CPU (under the profiler)")
    print(text.getvalue())
    return {"seconds": seconds, "cpu_seconds": cpu}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for name in ("numpy", "torch", "transformers", "peft", "bitsandbytes", "minilora"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker, args)
        return {}
    if args.profile:
        return profile(args)
    sys.path.insert(0, HERE)
    from common import machine, table, write_json
    info = dict(machine(), load_average_start=os.getloadavg())
    print(f"SmolLM2-135M, batch {args.batch} x {args.seq}, LoRA r=8 q/v, {args.threads} threads each, "
          f"{args.steps} timed rounds after a warm-up; load average {info['load_average_start']}", flush=True)
    raw, rows = {}, {}
    with tempfile.TemporaryDirectory() as log_dir:
        for task in args.tasks:
            raw[task] = measure(task, args, log_dir)
            rows[task] = summarize(task, raw[task], args)
    columns = ["task", "minilora_s", "torch_s", "time_ratio", "minilora_cpu_s", "torch_cpu_s", "cpu_ratio",
               "minilora_rss_gib", "torch_rss_gib", "rss_ratio",
               "minilora_run_rss_gib", "torch_run_rss_gib"]
    print(table(list(rows.values()), columns))
    if "generate" in rows:
        g = rows["generate"]
        print(f"generation: minilora {g['minilora_tok_s']:.2f} tok/s, transformers {g['torch_tok_s']:.2f} tok/s "
              f"({g['speed_ratio']:.2f}x); the first {g['agreeing_prefix']} of {args.new_tokens} tokens agree")
    checked = goals(rows)
    for g in checked:
        print(f"goal {g['goal']}: {g['value']:.3f} -> {'met' if g['met'] else 'NOT met'}")
    result = dict(benchmark="compare_torch", machine=info, versions=versions(), load_average_end=os.getloadavg(),
                  settings=dict(batch=args.batch, seq=args.seq, threads=args.threads, steps=args.steps,
                                new_tokens=args.new_tokens, lora=dict(r=8, lora_alpha=16,
                                                                      target_modules=["q_proj", "v_proj"]),
                                minilora_malloc_tuning=args.malloc_tuning, prompt=PROMPT),
                  summary=rows, goals=checked, raw=raw)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
