"""Training checkpoints: one safetensors file, written atomically, that resumes a run bit for bit.

The file holds
    param/<name>            every trainable parameter (the adapter, plus whatever else trains)
    optim/<g.i>/<key>       the optimizer's per-parameter arrays (AdamW: exp_avg, exp_avg_sq)
and, in the safetensors metadata (strings only), JSON for
    step                    the last finished step (training resumes at step + 1)
    optimizer               hyper-parameters per group and per-parameter scalars (AdamW's step count)
    rng                     the state of every backend.Random the model owns (dropout masks)
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
                           if backend.name_of_namespace(gen.xp) != "cupy"}),
        "history": json.dumps(history.to_dict() if hasattr(history, "to_dict") else history),
        "extra": json.dumps(extra or {}),
    }
    save_safetensors(path, tensors, metadata=metadata)


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore parameters, optimizer state and RNG states from ``path``.

    Returns {"step", "history", "extra"}. Every name and shape is checked before anything changes.
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
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(path, f"checkpoint metadata is incomplete or not JSON ({exc})") from exc
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved_params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    problems = [f"missing parameter {n!r}" for n in params if n not in saved_params]
    problems += [f"unexpected parameter {n!r}" for n in saved_params if n not in params]
    problems += [f"parameter {n!r}: expected shape {params[n].shape}, found {tuple(v.shape)}"
                 for n, v in saved_params.items() if n in params and tuple(v.shape) != params[n].shape]
    if problems:
        raise FileFormatError(path, "checkpoint does not fit the model: " + "; ".join(problems))
    state = {}
    for key, name_value in _optimizer_arrays(tensors).items():
        state[key] = dict(name_value)
    for key, scalars in opt_meta.get("scalars", {}).items():
        state.setdefault(key, {}).update(scalars)
    for key, entry in state.items():
        xp_arrays = {}
        gi, pi = (int(s) for s in key.split("."))
        xp = optimizer.param_groups[gi]["params"][pi].xp
        for name, value in entry.items():
            xp_arrays[name] = backend.from_numpy(value, xp) if isinstance(value, np.ndarray) else value
        state[key] = xp_arrays
    groups = opt_meta["groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"groups": groups, "state": state})
    for name, p in params.items():
        p.data = backend.from_numpy(np.ascontiguousarray(saved_params[name]), p.xp)
    generators = random_generators(model)
    for name, value in rng_states.items():
        if name in generators:
            generators[name].state = value
    return {"step": step, "history": history, "extra": extra}


def _optimizer_arrays(tensors: dict) -> dict:
    out: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, slot, name = key.split("/", 2)
            out.setdefault(slot, {})[name] = value
    return out


def _jsonable(groups: list) -> list:
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]


def checkpoint_path(out_dir) -> str:
    return os.path.join(os.fspath(out_dir), CHECKPOINT_FILE)
