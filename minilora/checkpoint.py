"""Training checkpoints: one safetensors file, written atomically, that resumes a run bit for bit.

The file holds
    param/<name>            every trainable parameter (the adapter, plus whatever else trains)
    optim/<g.i>/<key>       the optimizer's per-parameter arrays (AdamW: exp_avg, exp_avg_sq)
and, in the safetensors metadata (strings only), JSON for
    step                    the last finished step (training resumes at step + 1)
    optimizer               hyper-parameters per group and per-parameter scalars (AdamW's step count)
    rng                     the state of every backend.Random the model owns (dropout masks)
    rank_pattern            AdaLoRA only: the kept triplets so far (its score EMAs go in alloc/<key>)
    history                 the training history so far
    extra                   the caller's own JSON (e.g. the run's configuration)
Data order needs no state: batches are a function of (seed, step). Nothing is pickled.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import backend
from .errors import FileFormatError
from .io.safetensors_io import load_safetensors, save_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = "1"


def random_generators(model) -> dict:
    """Every backend.Random held by a module of ``model``, by "<module path>.<attribute>"."""
    found = {}
    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, backend.Random):
                found[f"{path}.{attr}" if path else attr] = value
    return found


def save_checkpoint(path, model, optimizer, step: int, history=None, extra: dict | None = None) -> None:
    """Write the checkpoint file ``path`` atomically (a crash leaves the previous file intact)."""
    tensors = {f"param/{name}": backend.to_numpy(p.data) for name, p in model.named_parameters()
               if p.requires_grad}
    allocator = getattr(model, "rankallocator", None)
    if allocator is not None:  # AdaLoRA's importance EMAs: a resumed run must mask exactly the same
        tensors.update({f"alloc/{k}": v for k, v in allocator.state_dict().items()})
    saved = optimizer.state_dict()
    scalars = {}
    for key, entry in saved["state"].items():
        for name, value in entry.items():
            if hasattr(value, "shape"):
                tensors[f"optim/{key}/{name}"] = backend.to_numpy(value)
            else:
                scalars.setdefault(key, {})[name] = value
    metadata = {
        "format": "minilora-checkpoint", "version": FORMAT_VERSION, "step": str(int(step)),
        "optimizer": json.dumps({"groups": _jsonable(saved["groups"]), "scalars": scalars}),
        "rng": json.dumps({name: gen.state for name, gen in random_generators(model).items()
                           if backend.backend_name(gen.xp) != "cupy"}),
        "history": json.dumps(history.to_dict() if hasattr(history, "to_dict") else history),
        "extra": json.dumps(extra or {}),
        "rank_pattern": json.dumps(_rank_pattern(model)),
    }
    save_safetensors(path, tensors, metadata=metadata)
    remove_stale_temporaries(path)


def remove_stale_temporaries(path) -> list:
    """Delete temporary files a killed writer left beside ``path`` (``.<name>.*.tmp``); returns them.

    Called right after a complete write, so every such file belongs to an earlier, interrupted one.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stale = [os.path.join(folder, f) for f in os.listdir(folder)
             if f.startswith(f".{name}.") and f.endswith(".tmp")]
    for leftover in stale:
        try:
            os.remove(leftover)
        except OSError:  # another process removed it first
            pass
    return stale


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore parameters, optimizer state and RNG states from ``path``.

    Returns {"step", "history", "extra"}. Every name, shape, dtype and metadata field is checked
    before anything changes; any problem is a FileFormatError naming the file.
    """
    tensors, metadata = load_safetensors(path)
    if metadata.get("format") != "minilora-checkpoint":
        raise FileFormatError(path, "not a minilora checkpoint (metadata 'format' is missing or different)")
    try:
        step = int(metadata["step"])
        opt_meta = json.loads(metadata["optimizer"])
        rng_states = json.loads(metadata["rng"])
        history = json.loads(metadata["history"])
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise FileFormatError(path, f"checkpoint metadata is incomplete or not JSON ({exc})") from None
    _check_metadata(path, step, opt_meta, rng_states, history, extra)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved_params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    problems = [f"missing parameter {n!r}" for n in params if n not in saved_params]
    problems += [f"unexpected parameter {n!r}" for n in saved_params if n not in params]
    problems += [f"parameter {n!r}: expected shape {params[n].shape}, found {tuple(v.shape)}"
                 for n, v in saved_params.items() if n in params and tuple(v.shape) != params[n].shape]
    problems += [f"parameter {n!r}: expected dtype {backend.dtype_name(params[n].dtype)}, found {v.dtype}"
                 for n, v in saved_params.items() if n in params and str(v.dtype) != backend.dtype_name(params[n].dtype)]
    problems += [f"unexpected tensor {k!r}" for k in tensors if not k.startswith(("param/", "optim/", "alloc/"))]
    if problems:
        raise FileFormatError(path, "checkpoint does not fit the model: " + "; ".join(problems))
    state, groups = _optimizer_state(path, tensors, opt_meta, optimizer)
    generators = random_generators(model)
    old_rng = {name: gen.state for name, gen in generators.items() if name in rng_states}
    old_optimizer = optimizer.state_dict()
    try:
        for name, value in rng_states.items():
            if name in generators:
                generators[name].state = value
        optimizer.load_state_dict({"groups": groups, "state": state})
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # put back what was set, then report
        for name, value in old_rng.items():
            generators[name].state = value
        optimizer.load_state_dict(old_optimizer)
        raise FileFormatError(path, f"checkpoint optimizer or RNG state is invalid ({type(exc).__name__}: {exc})") \
            from None
    for name, p in params.items():
        p.data = backend.to_namespace(saved_params[name], p.xp, p.dtype)
    _restore_adalora(path, model, tensors, metadata)
    return {"step": step, "history": history, "extra": extra}


def _rank_pattern(model):
    name = getattr(model, "trainable_adapter_name", None)
    return model.peft_config[name].rank_pattern if name else None


def _restore_adalora(path, model, tensors: dict, metadata: dict) -> None:
    """AdaLoRA: restore the allocator's score EMAs and the rank pattern, so masking resumes exactly."""
    allocator = getattr(model, "rankallocator", None)
    if allocator is None:
        return
    try:
        allocator.load_state_dict({k[len("alloc/"):]: v for k, v in tensors.items() if k.startswith("alloc/")})
        pattern = json.loads(metadata.get("rank_pattern", "null"))
    except ValueError as exc:
        raise FileFormatError(path, f"checkpoint AdaLoRA state does not fit the model ({exc})") from None
    if pattern:
        model.peft_config[model.trainable_adapter_name].rank_pattern = pattern


def _check_metadata(path, step, opt_meta, rng_states, history, extra) -> None:
    """The JSON fields have the types save_checkpoint writes (so nothing fails later, half-way)."""
    problems = []
    if step < 0:
        problems.append(f"step {step} is negative")
    if not (isinstance(opt_meta, dict) and isinstance(opt_meta.get("groups"), list)
            and all(isinstance(g, dict) for g in opt_meta["groups"])
            and isinstance(opt_meta.get("scalars", {}), dict)
            and all(isinstance(v, dict) for v in opt_meta.get("scalars", {}).values())):
        problems.append("'optimizer' must be {\"groups\": [dicts], \"scalars\": {slot: dict}}")
    if not (isinstance(rng_states, dict) and all(isinstance(v, dict) for v in rng_states.values())):
        problems.append("'rng' must map generator names to state dicts")
    if history is not None and not (isinstance(history, dict)
                                    and set(history) <= {"steps", "evals", "bad_steps"}
                                    and all(isinstance(v, list) for v in history.values())):
        problems.append("'history' must be null or {steps, evals, bad_steps: lists}")
    if not isinstance(extra, dict):
        problems.append("'extra' must be a JSON object")
    if problems:
        raise FileFormatError(path, "checkpoint metadata is invalid: " + "; ".join(problems))


def _same_kind(saved, current) -> bool:
    """A saved hyper-parameter may replace the current one: same JSON kind (numbers, lists of numbers...)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if number(current):
        return number(saved)
    if isinstance(current, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(current) and all(number(v) for v in saved)
    return type(saved) is type(current)


def _optimizer_state(path, tensors: dict, opt_meta: dict, optimizer) -> tuple:
    """(state, groups) for optimizer.load_state_dict, checked against ``optimizer``'s parameters."""
    problems, state = [], {}
    groups = opt_meta["groups"]
    if len(groups) != len(optimizer.param_groups):
        problems.append(f"optimizer has {len(optimizer.param_groups)} parameter groups, the file {len(groups)}")
    for gi, (saved, current) in enumerate(zip(groups, optimizer.param_groups)):
        hyper = {k: v for k, v in current.items() if k != "params"}
        if set(saved) != set(hyper):
            problems.append(f"optimizer group {gi}: keys {sorted(saved)} differ from {sorted(hyper)}")
        problems += [f"optimizer group {gi}: {k!r} = {saved[k]!r} has the wrong type"
                     for k in hyper if k in saved and not _same_kind(saved[k], hyper[k])]
    entries = [(key[len("optim/"):].partition("/"), value) for key, value in tensors.items()
               if key.startswith("optim/")]
    entries += [((slot, "/", name), value) for slot, scalars in opt_meta.get("scalars", {}).items()
                for name, value in scalars.items()]
    for (slot, _, name), value in entries:
        p = _slot_parameter(optimizer, slot)
        if p is None or not name:
            problems.append(f"optimizer state {slot}/{name}: no such parameter slot")
        elif isinstance(value, np.ndarray):
            if tuple(value.shape) != p.shape or str(value.dtype) != backend.dtype_name(p.dtype):
                problems.append(f"optimizer state {slot}/{name}: expected {p.shape} {backend.dtype_name(p.dtype)}, "
                                f"found {tuple(value.shape)} {value.dtype}")
            else:
                state.setdefault(slot, {})[name] = backend.to_namespace(value, p.xp)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            state.setdefault(slot, {})[name] = value
        else:
            problems.append(f"optimizer state {slot}/{name}: {value!r} is not a number")
    names = {frozenset(entry) for entry in state.values()}
    current = {frozenset(entry) for entry in optimizer.state_dict()["state"].values()}
    if len(names | current) > 1:  # every parameter's state has the same fields (AdamW: step, exp_avg, exp_avg_sq)
        problems.append(f"optimizer state fields differ between parameters: {sorted(map(sorted, names | current))}")
    if problems:
        raise FileFormatError(path, "checkpoint does not fit the optimizer: " + "; ".join(problems[:10]))
    groups = [dict(g) for g in groups]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return state, groups


def _slot_parameter(optimizer, slot: str):
    """The parameter named "g.i" (group g, index i), or None when there is none."""
    parts = slot.split(".")
    if len(parts) != 2 or not all(part.isdigit() and len(part) < 6 for part in parts):
        return None
    gi, pi = int(parts[0]), int(parts[1])
    if gi >= len(optimizer.param_groups) or pi >= len(optimizer.param_groups[gi]["params"]):
        return None
    return optimizer.param_groups[gi]["params"][pi]


def _jsonable(groups: list) -> list:
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]


def checkpoint_path(out_dir) -> str:
    return os.path.join(os.fspath(out_dir), CHECKPOINT_FILE)
