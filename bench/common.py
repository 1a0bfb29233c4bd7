"""Helpers shared by the bench scripts: machine facts, medians, and an atomic JSON write."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def set_blas_threads_env(threads: int) -> None:
    """BLAS threads for this process and the ones it starts. BLAS reads these variables once, when
    NumPy loads, so setting them later would be silently ignored: that raises instead."""
    if "numpy" in sys.modules:
        raise RuntimeError("set_blas_threads_env: NumPy is already loaded, its BLAS would ignore the thread count")
    for var in BLAS_THREAD_VARS:
        os.environ[var] = str(threads)


SETTLE_SECONDS = 0.5


def settle(seconds: float = SETTLE_SECONDS) -> None:
    """A pause before a timed step that follows another framework's (or another kind of) step.

    OpenBLAS's workers busy-wait after each GEMM (OPENBLAS_THREAD_TIMEOUT, 2^28 cycles, about 0.1 s
    here) and torch's OpenMP threads after each parallel region, so a step started at once would
    share the cores with the spin-down of the one before; after the pause each starts on idle
    cores, as it would alone. (Measured 2026-12-03: the effect is within the machine's noise, see
    docs/speed.md, but the pause costs nothing that is timed.)"""
    time.sleep(seconds)


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def median(values) -> float:
    return float(statistics.median(values))


def write_json(path: str, data: dict) -> None:
    """The results as indented JSON, written atomically (minilora's one writer: io/atomic.py)."""
    from minilora.io.atomic import write_text_atomic
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2))


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def proc_status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


def reset_peak_rss() -> bool:
    """Start VmHWM afresh from the current RSS (Linux /proc/self/clear_refs); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_free_heap() -> bool:
    """glibc malloc_trim(0): hand freed heap pages back to the system (e.g. float weights that
    quantizing replaced), so that RSS shows what is alive. False off glibc."""
    import ctypes
    import ctypes.util
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0))
    except (OSError, AttributeError, TypeError):
        return False


def load_smollm2(quantized: bool):
    """-> (Transformer, how it was loaded). quantized: NF4 + double quantization of every block Linear,
    read straight into 4 bits when load_pretrained offers it (quantize=QuantSpec), else loaded in
    float32 and converted with quantize_model (the same bytes)."""
    import inspect

    from minilora import quant
    from minilora.io import load_pretrained
    if not quantized:
        return load_pretrained("smollm2-135m")[0], "float32"
    spec = getattr(quant, "QuantSpec", None)
    if spec is not None and "quantize" in inspect.signature(load_pretrained).parameters:
        return (load_pretrained("smollm2-135m", quantize=spec(quant_type="nf4", double_quant=True))[0],
                "nf4 + double quant while reading the GGUF")
    model = load_pretrained("smollm2-135m")[0]
    quant.quantize_model(model, quant_type="nf4", double_quant=True)
    return model, "float32 load, then quantize_model (nf4 + double quant)"


# ------------------------------------------------------------------ paired training steps

def add_paired_arguments(parser, json_name: str, rounds: int) -> None:
    """--rounds/--batch/--seq/--threads/--json of a bench that alternates training steps between copies."""
    parser.add_argument("--rounds", type=int, default=rounds, help="timed steps per copy after one warm-up (paired)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (set before NumPy loads)")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                       json_name))


def check_positive(parser, args, names) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")


def lora_training_copy(quantized: bool = False, checkpointing: bool = False, prepare=None):
    """(LoRA model, AdamW) over a fresh SmolLM2-135M as compare_torch's rows train it: LoRA r=8 on q/v,
    alpha 16, lr 1e-4; the NF4 base when quantized. prepare(model) runs on the base first."""
    from minilora.lora import LoraConfig, get_lora_model
    from minilora.optim import AdamW
    model, _ = load_smollm2(quantized)
    if prepare is not None:
        prepare(model)
    model.gradient_checkpointing = checkpointing
    lora = get_lora_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    lora.train()
    return lora, AdamW(lora.trainable_parameters(), lr=1e-4)


def paired_steps(copies: dict, rounds: int, batch: int, seq: int, before_step=None) -> dict:
    """Training steps (zero_grad, lm_loss on random tokens, backward, AdamW step) alternating between
    copies {name: (model, optimizer)}: one warm-up each, then ``rounds`` rounds, the order reversed every
    round, so that each round's pair sees the same machine state. before_step(name) runs before each.

    -> {"seconds": {name: [...]}, "losses": {name: [...]}, "paired_ratio": median of first / second
    copy per round, "same_losses": bool}."""
    import numpy as np

    from minilora.models.transformer import lm_loss
    tokens = np.random.default_rng(0).integers(0, 49152, (batch, seq + 1))
    ids, targets = tokens[:, :-1], tokens[:, 1:]

    def step(name):
        if before_step is not None:
            before_step(name)
        model, optimizer = copies[name]
        optimizer.zero_grad()
        t0 = time.perf_counter()
        loss = lm_loss(model, ids, targets)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, float(loss.data)

    for name in copies:
        step(name)  # warm-up
    names = list(copies)
    seconds, losses = {n: [] for n in names}, {n: [] for n in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            dt, loss = step(name)
            seconds[name].append(dt)
            losses[name].append(loss)
    first, second = names[0], names[1]
    ratios = [a / b for a, b in zip(seconds[first], seconds[second])]
    return dict(seconds=seconds, losses=losses, paired_ratio=statistics.median(ratios),
                same_losses=losses[first] == losses[second])
