"""Optimizer base: parameter groups, zero_grad, and a state that can be saved and restored.

``params`` is a list of Parameters or a list of group dicts ``{"params": [...], "lr": ..., ...}``,
as in PyTorch; each group inherits the optimizer's defaults for the keys it does not set.
"""
from __future__ import annotations

import math

from ..nn.module import Parameter


class Optimizer:
    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        seen: set[int] = set()
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise ValueError(f"optimizer params must be Parameters, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one optimizer group")
                seen.add(id(p))
            lr = group.get("lr")
            if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
                raise ValueError(f"optimizer lr must be a finite number >= 0, got {lr!r}")
            group.setdefault("initial_lr", group["lr"])
            self.param_groups.append(group)

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ saving and restoring
    def state_dict(self) -> dict:
        """{"groups": [hyper-parameters of each group], "state": {"g.i": {name: array or number}}}.

        Parameters are named by position (group g, index i), so a state loads into an optimizer
        built over the same parameter list in the same order.
        """
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        state = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if id(p) in self.state:
                    state[f"{gi}.{pi}"] = dict(self.state[id(p)])
        return {"groups": groups, "state": state}

    def load_state_dict(self, saved: dict) -> None:
        if len(saved["groups"]) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(saved['groups'])} groups, this optimizer has "
                             f"{len(self.param_groups)}")
        for group, hyper in zip(self.param_groups, saved["groups"]):
            group.update(hyper)
        self.state = {}
        for key, entry in saved["state"].items():
            gi, pi = (int(s) for s in key.split("."))
            p = self.param_groups[gi]["params"][pi]
            for name, value in entry.items():
                if hasattr(value, "shape") and tuple(value.shape) != p.shape:
                    raise ValueError(f"optimizer state {key}.{name}: expected shape {p.shape}, "
                                     f"found {tuple(value.shape)}")
            self.state[id(p)] = dict(entry)
