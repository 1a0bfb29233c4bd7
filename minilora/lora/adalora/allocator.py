"""RankAllocator: importance scores of singular triplets and the global rank budget (arXiv 2303.10512).

For every adapter parameter p (entries of A, E and B), after a backward pass (sec. 3.2, eqs. 8-11):

    I = |p * grad|                                   importance of each entry
    Ibar <- beta1 Ibar + (1 - beta1) I               sensitivity, smoothed
    Ubar <- beta2 Ubar + (1 - beta2) |I - Ibar|      uncertainty (with the *updated* Ibar)
    s = Ibar * Ubar                                  element score

Triplet i of a layer scores S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki). Masking is global over
all layers: with k = init_bgt - budget, the threshold is the k-th smallest S, and E_i = 0 wherever
S_i <= threshold (so at most ``budget`` triplets are kept; ties may keep fewer). These are the
formulas of PEFT's RankAllocator, entry for entry.
"""
from __future__ import annotations

from ... import backend
from ..inject import lora_layers
from .layers import SVDLinear


class RankAllocator:
    """Scores and masks the triplets of adapter ``adapter_name`` on the SVDLinear layers of ``model``.

    State: ipt / exp_avg_ipt / exp_avg_unc, each {(layer path, "lora_A"|"lora_E"|"lora_B"): array}.
    """

    def __init__(self, model, config, adapter_name: str = "default"):
        if not (0 < config.beta1 < 1 and 0 < config.beta2 < 1):
            raise ValueError(f"RankAllocator: beta1 and beta2 must be in (0, 1), got {config.beta1}, {config.beta2}")
        self.config, self.adapter_name = config, adapter_name
        self.layers = [(p, m) for p, m in lora_layers(model) if isinstance(m, SVDLinear) and adapter_name in m.r]
        self.init_bgt = sum(m.r[adapter_name] for _, m in self.layers)
        self.target_bgt = config.target_r * len(self.layers)
        self.reset_ipt()

    def reset_ipt(self) -> None:
        self.ipt, self.exp_avg_ipt, self.exp_avg_unc = {}, {}, {}

    # ------------------------------------------------------------ the schedule (a pure function)
    def budget_schedule(self, step: int) -> tuple:
        """(budget, mask_now) at ``step``: AdaLoRA's cubic schedule (arXiv 2303.10512, sec. 3.3, eq. 12).

        With T = total_step, init_bgt = n_layers * init_r, target_bgt = n_layers * target_r:

            step <= tinit:                budget = init_bgt, mask_now False         (warm-up)
            tinit < step <= T - tfinal:   budget = int((init_bgt - target_bgt) m^3 + target_bgt),
                                          m = 1 - (step - tinit) / (T - tfinal - tinit),
                                          mask_now = (step % deltaT == 0)           (pruning)
            step > T - tfinal:            budget = target_bgt, mask_now True        (final pattern fixed)

        At step = T - tfinal, m = 0: the budget reaches target_bgt (update_and_allocate masks there
        whatever mask_now says, and keeps that pattern from then on).
        """
        c = self.config
        if step <= c.tinit:
            return self.init_bgt, False
        if step > c.total_step - c.tfinal:
            return self.target_bgt, True
        m = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_bgt - self.target_bgt) * m ** 3 + self.target_bgt)
        return budget, step % c.deltaT == 0

    # ------------------------------------------------------------ scores
    def _params(self):
        for path, layer in self.layers:
            for attr in SVDLinear.adapter_param_names:
                yield (path, attr), getattr(layer, attr)[self.adapter_name]

    def update_ipt(self) -> None:
        """One EMA update of sensitivity and uncertainty; parameters without a gradient are skipped."""
        b1, b2 = self.config.beta1, self.config.beta2
        for key, p in self._params():
            if p.grad is None:
                continue
            xp = p.xp
            if key not in self.exp_avg_ipt or self.exp_avg_ipt[key].shape != p.data.shape:
                self.exp_avg_ipt[key] = xp.zeros_like(p.data)
                self.exp_avg_unc[key] = xp.zeros_like(p.data)
            ipt = xp.abs(p.data * p.grad)
            self.ipt[key] = ipt
            self.exp_avg_ipt[key] = b1 * self.exp_avg_ipt[key] + (1 - b1) * ipt
            self.exp_avg_unc[key] = b2 * self.exp_avg_unc[key] + (1 - b2) * xp.abs(ipt - self.exp_avg_ipt[key])

    def element_score(self, key):
        """s = Ibar * Ubar (zeros for a parameter that never had a gradient)."""
        if key not in self.exp_avg_ipt:
            path, attr = key
            layer = dict(self.layers)[path]
            p = getattr(layer, attr)[self.adapter_name]
            return p.xp.zeros_like(p.data)
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def triplet_scores(self) -> dict:
        """{layer path: S (r,)}, S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki)."""
        out = {}
        for path, layer in self.layers:
            xp = layer.xp
            s_a = xp.mean(self.element_score((path, "lora_A")), axis=1)  # (r,)
            s_b = xp.mean(self.element_score((path, "lora_B")), axis=0)  # (r,)
            s_e = xp.reshape(self.element_score((path, "lora_E")), (-1,))  # (r,)
            out[path] = s_e + s_a + s_b
        return out

    # ------------------------------------------------------------ masking
    def mask_to_budget(self, budget: int) -> dict:
        """Zero E_i for every triplet scoring <= the k-th smallest score, k = init_bgt - budget.

        Returns the rank pattern {"<path>.lora_E": [kept?]}. k <= 0 masks nothing."""
        scores = self.triplet_scores()
        k = self.init_bgt - budget
        pattern = {}
        threshold = None
        if k > 0 and scores:
            xp = self.layers[0][1].xp
            everything = xp.sort(xp.concat([xp.astype(s, xp.float64) for s in scores.values()]))
            threshold = everything[k - 1]
        for path, layer in self.layers:
            xp = layer.xp
            s = xp.astype(scores[path], xp.float64)
            keep = s > threshold if threshold is not None else xp.full(s.shape, True)
            e = layer.lora_E[self.adapter_name]
            e.data = xp.where(xp.reshape(keep, (-1, 1)), e.data, xp.zeros_like(e.data))
            pattern[f"{path}.lora_E"] = [bool(v) for v in backend.to_numpy(keep).tolist()]
        return pattern

    def mask_using_rank_pattern(self, rank_pattern: dict) -> None:
        """Re-apply a fixed pattern: E_i = 0 wherever the pattern says the triplet was pruned."""
        for path, layer in self.layers:
            keep = rank_pattern.get(f"{path}.lora_E")
            if keep is None:
                continue
            xp = layer.xp
            e = layer.lora_E[self.adapter_name]
            if len(keep) != e.shape[0]:
                raise ValueError(f"rank_pattern[{path + '.lora_E'!r}] has {len(keep)} entries, the layer has "
                                 f"rank {e.shape[0]}")
            mask = xp.reshape(xp.asarray([bool(k) for k in keep]), (-1, 1))
            e.data = xp.where(mask, e.data, xp.zeros_like(e.data))

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """{"exp_avg_ipt|<path>.<attr>" / "exp_avg_unc|...": host array}: what a resumed run needs
        (the rank pattern itself lives in the config)."""
        out = {}
        for table in ("exp_avg_ipt", "exp_avg_unc"):
            for (path, attr), value in getattr(self, table).items():
                out[f"{table}|{path}.{attr}"] = backend.to_numpy(value)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore the score EMAs saved by state_dict (arrays go to each parameter's namespace)."""
        params = dict(self._params())
        self.reset_ipt()
        for key, value in state.items():
            table, _, name = key.partition("|")
            path, _, attr = name.rpartition(".")
            if table not in ("exp_avg_ipt", "exp_avg_unc") or (path, attr) not in params:
                raise ValueError(f"RankAllocator.load_state_dict: unexpected key {key!r}")
            p = params[(path, attr)]
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"RankAllocator.load_state_dict: {key!r} has shape {tuple(value.shape)}, "
                                 f"the parameter has {tuple(p.shape)}")
            getattr(self, table)[(path, attr)] = backend.to_namespace(value, p.xp, p.dtype)

    def update_and_allocate(self, step: int, rank_pattern: dict | None = None) -> tuple:
        """AdaLoRA's work after optimizer step ``step``, in its three phases (budget_schedule):

            step < T - tfinal    update the scores; mask to the scheduled budget when mask_now
            step = T - tfinal    mask to target_bgt: that is the final pattern; the scores are dropped
            step > T - tfinal    re-apply ``rank_pattern`` (the final one), so pruned triplets stay pruned

        Returns (budget, the rank pattern now in force, or None when this step masked nothing); the
        caller keeps the pattern (AdaLoraModel stores it in the adapter's config).
        """
        final = self.config.total_step - self.config.tfinal
        budget, mask_now = self.budget_schedule(step)
        if step < final:
            self.update_ipt()
            return budget, self.mask_to_budget(budget) if mask_now else None
        if step == final:
            pattern = self.mask_to_budget(budget)
            self.reset_ipt()
            return budget, pattern
        if rank_pattern:
            self.mask_using_rank_pattern(rank_pattern)
            return budget, rank_pattern
        return budget, None
