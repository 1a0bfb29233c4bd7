"""Helpers shared by the bench scripts: machine facts, medians, and an atomic JSON write."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time


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
