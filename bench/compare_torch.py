"""minilora (NumPy) against torch + PEFT (+ bitsandbytes, transformers) on SmolLM2-135M, same run, same machine.

Measurements, each with one worker process per framework (so threads are set before the libraries
load and each process's peak RSS is its own); every row's settings are in SETTINGS (compare_tasks.py, which
also builds each framework's model for each task) and in the JSON:

    lora        training step: forward + cross-entropy + backward + AdamW, batch B x T random token
                ids, LoRA r=8 (alpha 16) on every q_proj and v_proj, float32 base, no checkpointing
    lora_ckpt   the same with gradient checkpointing of every decoder layer (torch:
                model.gradient_checkpointing_enable() before get_peft_model, PEFT's documented way)
    qlora       the step over NF4 + double-quantized block Linears, no checkpointing (minilora
                quantize_model; torch: from_pretrained(quantization_config=BitsAndBytesConfig(nf4,
                double quant, float32 compute)) + prepare_model_for_kbit_training(
                use_gradient_checkpointing=False))
    qlora_ckpt  PEFT's QLoRA recipe as its users run it: the same 4-bit load, then
                prepare_model_for_kbit_training(model) (checkpointing on, its default); minilora:
                quantize_model + gradient checkpointing of every decoder layer
    generate    greedy decoding with the KV cache, batch 1, N new tokens after a short prompt
                (minilora.models.generate; transformers' model.generate); tokens/s includes the prefill

minilora loads the GGUF file (minilora.io.load_pretrained); transformers loads the same GGUF with
gguf_file= (float32) for lora, lora_ckpt and generate, and for the 4-bit rows a float32 safetensors
copy of it that the parent writes once (transformers refuses quantization_config with gguf_file).
minilora's lm_loss runs lm_head + cross entropy in tiles of rows x classes; the torch side computes
the whole logits and cross_entropy, as the PEFT recipe does. After setup both workers return freed heap to
the system (glibc malloc_trim), so "run peak" measures the step, not what loading left behind.

The parent alternates the two workers (order swapped every round, a pause before each step so that
the other's threads have gone idle: common.settle) through one warm-up and --steps timed
repetitions, and reports medians, the ratio minilora / torch (of the medians: what the goals read;
"paired_ratio" is the median of the per-round ratios beside it), and peak RSS: "rss_peak" is the
process's lifetime peak (the larger of VmHWM read before the reset below and getrusage ru_maxrss at
the end: resetting VmHWM also resets ru_maxrss), "rss_run_peak" the peak while timing (VmHWM after
resetting it via /proc/self/clear_refs).
Each run also records the worker's CPU time (time.process_time, all its threads): on a machine that
other jobs load, wall time measures the scheduler too, CPU time less so (spinning BLAS threads count).

Needs torch, transformers, peft, bitsandbytes (the .venv-ref environment):
    .venv-ref/bin/python bench/compare_torch.py [--steps 5] [--quick] [--tasks lora,lora_ckpt,qlora,...]
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
sys.path.insert(0, HERE)  # bench/common.py and compare_tasks.py, also in the workers
from compare_tasks import PROMPT, SETTINGS, TASKS, minilora_setup, torch_setup, write_hf_copy  # noqa: E402


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
    p.add_argument("--profile", choices=TASKS,
                   help="instead of comparing: cProfile one minilora run of this task after a warm-up, in this process")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "TASK"), help=argparse.SUPPRESS)
    p.add_argument("--hf-dir", help=argparse.SUPPRESS)  # the float32 safetensors copy for the 4-bit torch rows
    p.add_argument("--write-hf", metavar="DIR", help=argparse.SUPPRESS)
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

def worker(framework: str, task: str, args) -> None:
    """Line protocol on stdin/stdout: after setup send {"ready"}; "run" -> one timing; "done" -> RSS, exit."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not mix with the protocol
    from common import set_blas_threads_env
    set_blas_threads_env(args.threads)
    tuned = False
    if framework == "minilora" and args.malloc_tuning:
        from bench_step import tune_malloc
        tuned = tune_malloc()

    def send(msg):
        out.write("@@" + json.dumps(msg) + "\n")
        out.flush()

    from common import proc_status_bytes, release_free_heap, reset_peak_rss
    t0 = time.perf_counter()
    run = (minilora_setup if framework == "minilora" else torch_setup)(task, args)
    import gc
    gc.collect()
    rss_setup = proc_status_bytes("VmRSS") // 1024
    trimmed = release_free_heap()
    send({"ready": True, "setup_seconds": time.perf_counter() - t0, "rss_after_setup_kib": rss_setup,
          "rss_after_trim_kib": proc_status_bytes("VmRSS") // 1024, "trimmed": trimmed, "malloc_tuned": tuned})
    setup_peak_kib = proc_status_bytes("VmHWM") // 1024  # read first: the reset below also resets ru_maxrss
    reset = reset_peak_rss()
    for line in sys.stdin:
        if line.strip() == "run":
            c0 = time.process_time()
            r = run()
            send(dict(r, cpu_seconds=time.process_time() - c0))
        else:
            import resource
            send({"rss_peak_kib": max(setup_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
                  "rss_setup_peak_kib": setup_peak_kib,
                  "rss_run_peak_kib": proc_status_bytes("VmHWM") // 1024 if reset else None})
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
        if args.hf_dir:
            cmd += ["--hf-dir", args.hf_dir]
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
    from common import settle
    workers = [Worker("minilora", task, args, log_dir), Worker("torch", task, args, log_dir)]
    result = {w.name: {"setup": w.receive(), "runs": []} for w in workers}
    loads = []
    for i in range(args.steps + 1):
        order = workers if i % 2 == 0 else workers[::-1]
        for w in order:
            settle()  # the other worker's threads have gone idle (common.settle)
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
    # each round runs the two back to back: the median of the per-round ratios, beside the goals' ratio
    # of medians, shows how much of a run-to-run swing is the machine's (both move) and how much ours
    row["paired_ratio"] = statistics.median(m["seconds"] / t["seconds"]
                                            for m, t in zip(res["minilora"]["runs"], res["torch"]["runs"]))
    if "minilora_cpu_s" in row and "torch_cpu_s" in row:
        row["cpu_ratio"] = row["minilora_cpu_s"] / row["torch_cpu_s"]
    row["rss_ratio"] = row["minilora_rss_gib"] / row["torch_rss_gib"]
    if row["minilora_run_rss_gib"] and row["torch_run_rss_gib"]:
        row["run_rss_ratio"] = row["minilora_run_rss_gib"] / row["torch_run_rss_gib"]
    row["settings"] = SETTINGS[task]
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


def _goal(goal: str, value: float, limit: float, below: bool = True) -> dict:
    return dict(goal=goal, value=value, limit=limit, met=value <= limit if below else value >= limit)


def goals(rows: dict) -> list[dict]:
    """The issue's goals, each on rows at the same settings (lifetime and run peak RSS both checked)."""
    out = []
    if "lora" in rows:
        out.append(_goal("LoRA step <= 0.8x torch+PEFT (no checkpointing)", rows["lora"]["time_ratio"], 0.8))
    for task in ("qlora", "qlora_ckpt"):
        if task not in rows:
            continue
        r, label = rows[task], "checkpointing" if SETTINGS[task]["checkpointing"] else "no checkpointing"
        out.append(_goal(f"QLoRA step <= 0.85x torch+bnb ({label})", r["time_ratio"], 0.85))
        out.append(_goal(f"QLoRA peak RSS <= 0.5x torch+bnb ({label})", r["rss_ratio"], 0.5))
        if r.get("run_rss_ratio") is not None:
            out.append(_goal(f"QLoRA run peak RSS <= 0.5x torch+bnb ({label})", r["run_rss_ratio"], 0.5))
        lora_task = "lora_ckpt" if SETTINGS[task]["checkpointing"] else "lora"
        if lora_task in rows:
            own = rows[lora_task]
            out.append(_goal(f"QLoRA peak RSS <= 0.5x minilora's LoRA ({label})",
                             r["minilora_rss_gib"] / own["minilora_rss_gib"], 0.5))
            if r["minilora_run_rss_gib"] and own["minilora_run_rss_gib"]:
                out.append(_goal(f"QLoRA run peak RSS <= 0.5x minilora's LoRA ({label})",
                                 r["minilora_run_rss_gib"] / own["minilora_run_rss_gib"], 0.5))
    if "generate" in rows:
        out.append(_goal("generation >= 2x transformers tok/s", rows["generate"]["speed_ratio"], 2.0, below=False))
    return out


def profile(args, top: int = 25) -> dict:
    """cProfile of one minilora run (after a warm-up) with the worker's settings; prints the top by tottime."""
    import cProfile
    import io
    import pstats
    from common import set_blas_threads_env
    set_blas_threads_env(args.threads)
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
    if args.write_hf:
        write_hf_copy(args.write_hf)
        return {}
    if args.profile:
        return profile(args)
    from common import machine, table, write_json
    info = dict(machine(), load_average_start=os.getloadavg())
    for task in args.tasks:
        print(f"  {task}: {SETTINGS[task]}")
    print(f"SmolLM2-135M, batch {args.batch} x {args.seq}, LoRA r=8 q/v, {args.threads} threads each, "
          f"{args.steps} timed rounds after a warm-up; load average {info['load_average_start']}", flush=True)
    raw, rows = {}, {}
    with tempfile.TemporaryDirectory() as log_dir:
        if any(t.startswith("qlora") for t in args.tasks) and not args.hf_dir:
            args.hf_dir = os.path.join(log_dir, "smollm2-hf")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--write-hf", args.hf_dir], check=True,
                           cwd=os.path.dirname(HERE), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for task in args.tasks:
            raw[task] = measure(task, args, log_dir)
            rows[task] = summarize(task, raw[task], args)
    columns = ["task", "minilora_s", "torch_s", "time_ratio", "paired_ratio", "minilora_cpu_s", "torch_cpu_s",
               "cpu_ratio", "minilora_rss_gib", "torch_rss_gib", "rss_ratio",
               "minilora_run_rss_gib", "torch_run_rss_gib", "run_rss_ratio"]
    print(table(list(rows.values()), columns))
    if "generate" in rows:
        g = rows["generate"]
        print(f"generation: minilora {g['minilora_tok_s']:.2f} tok/s, transformers {g['torch_tok_s']:.2f} tok/s "
              f"({g['speed_ratio']:.2f}x); the first {g['agreeing_prefix']} of {args.new_tokens} tokens agree")
    checked = goals(rows)
    for g in checked:
        print(f"goal {g['goal']}: {g['value']:.3f} (limit {g['limit']}) -> {'met' if g['met'] else 'NOT met'}")
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
