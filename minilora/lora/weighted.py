"""add_weighted_adapter: a new adapter whose delta is a weighted combination of existing ones.

For each layer, with delta_i = scaling_i B_i A_i and weights w_i:

  "linear" (alias "cat"): exactly  delta = sum_i w_i delta_i, by stacking the factors:
      A = [w_1 scaling_1 A_1; w_2 scaling_2 A_2; ...]  (sum r_i, n),   B = [B_1, B_2, ...]  (m, sum r_i)
      so B A = sum_i w_i scaling_i B_i A_i, and the new scaling is 1 (r = alpha = sum r_i).
      (PEFT's "linear" instead sums sqrt(w_i) scaling_i A_i and sqrt(w_i) B_i, which adds cross
      terms B_i A_j; its "cat" is the exact form used here.)
  "svd": the truncated SVD of sum_i w_i delta_i to rank k (default: the largest r_i):
      delta = U S V^T,  B = U_k S_k (m, k),  A = V_k^T (k, n),  scaling 1 -- the best rank-k
      approximation (Eckart-Young), so rank(B A) <= k.
"""
from __future__ import annotations

import dataclasses
import re

from .inject import lora_layers
from .layers import check_adapter_name

COMBINATIONS = ("linear", "cat", "svd")


def add_weighted_adapter(lora_model, adapters, weights, adapter_name: str, combination_type: str = "linear",
                         svd_rank=None) -> None:
    """Add adapter ``adapter_name`` = weighted combination of ``adapters`` (inactive until set_adapter)."""
    check_adapter_name(adapter_name)
    adapters, weights = list(adapters), [float(w) for w in weights]
    if adapter_name in lora_model.peft_config:
        raise ValueError(f"add_weighted_adapter: adapter_name {adapter_name!r} already exists")
    unknown = [a for a in adapters if a not in lora_model.peft_config]
    if unknown or not adapters:
        raise ValueError(f"add_weighted_adapter: unknown adapters {unknown or adapters}; "
                         f"have {list(lora_model.peft_config)}")
    if len(weights) != len(adapters):
        raise ValueError(f"add_weighted_adapter: {len(adapters)} adapters but {len(weights)} weights")
    if combination_type not in COMBINATIONS:
        raise ValueError(f"add_weighted_adapter: combination_type must be one of {COMBINATIONS}, "
                         f"got {combination_type!r}")
    configs = [lora_model.peft_config[a] for a in adapters]
    if svd_rank is None:
        svd_rank = max(max([c.r] + list(c.rank_pattern.values())) for c in configs)
    if isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank <= 0:
        raise ValueError(f"add_weighted_adapter: svd_rank must be a positive integer, got {svd_rank!r}")

    ranks = {}
    new_factors = []
    for path, layer in lora_layers(lora_model.model):
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.r]
        if not present:
            continue
        xp = layer.xp
        if combination_type == "svd":
            a_new, b_new = _svd_factors(layer, present, svd_rank, xp)
        else:
            a_new = xp.concat([w * layer.scaling[a] * layer.factors(a)[0] for a, w in present], axis=0)
            b_new = xp.concat([layer.factors(a)[1] for a, _ in present], axis=1)
        new_factors.append((layer, a_new, b_new))
        ranks[path] = int(a_new.shape[0])

    for layer, a_new, b_new in new_factors:
        layer.set_factors(adapter_name, a_new, b_new, scaling=1.0)
    r = max(ranks.values())
    pattern = {re.escape(p): k for p, k in ranks.items() if k != r}
    lora_model.peft_config[adapter_name] = dataclasses.replace(
        configs[0], r=r, lora_alpha=r, use_rslora=False, rank_pattern=pattern, alpha_pattern=dict(pattern),
        target_modules=sorted(ranks), exclude_modules=None, layers_to_transform=None, layers_pattern=None,
        modules_to_save=None, lora_dropout=0.0)
    lora_model.mark_trainable()


def _svd_factors(layer, present, svd_rank, xp):
    delta = None
    for a, w in present:
        fa, fb = layer.factors(a)
        term = (w * layer.scaling[a]) * xp.matmul(fb, fa)  # (m, n) = B A orientation
        delta = term if delta is None else delta + term
    u, s, vh = xp.linalg.svd(delta, full_matrices=False)  # u (m, q), s (q,), vh (q, n)
    k = min(svd_rank, s.shape[0])
    return vh[:k, :], u[:, :k] * s[None, :k]
