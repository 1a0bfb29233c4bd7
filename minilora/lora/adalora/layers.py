"""SVDLinear: a frozen Linear-like base plus AdaLoRA adapters in SVD form (arXiv 2303.10512, eq. 3).

For every active adapter a, with P = B (d_out, r), Lambda = diag(E), Q = A (r, d_in):

    y = base(x) + (dropout(x) (A * E)^T) B^T * scaling / (ranknum + 1e-5)     x (..., d_in) -> (..., d_out)
    delta W = B (A * E) * scaling / (ranknum + 1e-5)                          (d_out, d_in)

E (r, 1) holds the singular values (A * E scales row i of A by E_i), scaling = lora_alpha, and
ranknum is the *initial* rank, kept fixed when triplets are pruned or the layer is resized, so the
scale of the kept triplets never jumps. Init (PEFT): A, B ~ N(0, 0.02), E = 0, so the adapter starts
as a no-op. Triplet i is pruned by E_i = 0; a layer resized to rank k keeps k rows of A and E and k
columns of B, and k = 0 is allowed (the layer computes its base alone).

Built on LoRALinear, so a float ``Linear`` and a 4-bit ``Linear4bit`` base work alike, and merge,
unmerge, merge_and_unload and disable_adapter come from the LoRA layer. Parameter paths are PEFT's:
``lora_A.<adapter>``, ``lora_B.<adapter>``, ``lora_E.<adapter>`` (no ``.weight``).
"""
from __future__ import annotations

from ... import backend, functional as F
from ...errors import ConfigError
from ...nn import Parameter
from ...tensor import Tensor
from ..layers import LoRALinear
from .config import adalora_scaling

INIT_STD = 0.02  # PEFT's reset_lora_parameters: A, B ~ N(0, 0.02), E = 0
RANKNUM_EPS = 1e-5


class SVDLinear(LoRALinear):
    """A frozen Linear-like base (in_features, out_features, __call__) plus AdaLoRA adapters."""

    adapter_param_names = ("lora_A", "lora_B", "lora_E")
    adapter_tables = LoRALinear.adapter_tables + ("ranknum",)
    factor_type = Parameter
    min_rank = 0
    peft_type = "ADALORA"

    @classmethod
    def adapter_shapes(cls, base, r: int) -> dict:
        return {"lora_A": (r, base.in_features), "lora_E": (r, 1), "lora_B": (base.out_features, r)}

    def update_layer(self, name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights=True, use_rslora: bool = False, seed: int = 0, *, ranknum=None) -> None:
        """Add (or replace) adapter ``name`` at rank r >= 0: A (r, d_in), E (r, 1), B (d_out, r).

        init_lora_weights True: A, B ~ N(0, 0.02), E = 0 (a no-op). False: E ~ N(0, 1) as well, so
        the adapter changes the output (for tests). ranknum: the divisor of the scale (default r).
        use_rslora has no meaning here (the scale is lora_alpha / ranknum) and must stay False.
        """
        self.check_new_adapter(name, r)
        if use_rslora:
            raise ConfigError("SVDLinear.update_layer: use_rslora does not apply to AdaLoRA "
                              "(its scale is lora_alpha / ranknum)")
        rng = backend.Random(seed, xp=self.xp)
        dtype = self.dtype
        a = rng.normal((r, self.in_features), std=INIT_STD, dtype=dtype)
        b = rng.normal((self.out_features, r), std=INIT_STD, dtype=dtype)
        e = rng.normal((r, 1), dtype=dtype) if init_lora_weights is False else self.xp.zeros((r, 1), dtype=dtype)
        self.put_factors(name, lora_A=a, lora_B=b, lora_E=e)
        self.lora_dropout[name] = float(lora_dropout)
        self.r[name], self.lora_alpha[name] = r, lora_alpha
        self.scaling[name] = adalora_scaling(lora_alpha, r)
        self.ranknum[name] = float(r if ranknum is None else ranknum)

    def scale(self, name: str) -> float:
        """scaling / (ranknum + 1e-5): the factor in front of B (A * E)."""
        return self.scaling[name] / (self.ranknum[name] + RANKNUM_EPS)

    def triplet(self, name: str) -> tuple:
        """(A (r, d_in), E (r, 1), B (d_out, r)) arrays of adapter ``name``."""
        return self.lora_A[name].data, self.lora_E[name].data, self.lora_B[name].data

    def factors(self, name: str) -> tuple:
        """(A * E, B): the LoRA-form factors, delta W = scale * B (A * E)."""
        a, e, b = self.triplet(name)
        return a * e, b

    def delta_weight(self, name: str):
        """B (A * E) * scaling / (ranknum + 1e-5), (d_out, d_in)."""
        a_e, b = self.factors(name)
        return self.xp.matmul(b, a_e) * self.scale(name)

    def resize(self, name: str, keep) -> None:
        """Keep only the triplets whose ``keep`` entry is True (a list of bools, length r); rank may
        become 0. ranknum, hence the scale, is unchanged (PEFT's resize_modules_by_rank_pattern)."""
        if len(keep) != self.r[name]:
            raise ValueError(f"SVDLinear.resize: keep has {len(keep)} entries, adapter {name!r} has rank {self.r[name]}")
        xp = self.xp
        idx = xp.asarray([i for i, k in enumerate(keep) if k], dtype=xp.int64)
        a, e, b = self.triplet(name)
        self.lora_A[name].data = xp.take(a, idx, axis=0)  # (k, d_in)
        self.lora_E[name].data = xp.take(e, idx, axis=0)  # (k, 1)
        self.lora_B[name].data = xp.take(b, idx, axis=1)  # (d_out, k)
        self.r[name] = int(idx.shape[0])

    def set_factors(self, name, a, b, scaling) -> None:
        raise TypeError("SVDLinear holds SVD-form adapters; convert with to_lora() to set LoRA factors")

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., d_out)
        for name in self._active_unmerged():
            if self.r[name] == 0:
                continue  # pruned to nothing: the base alone
            h = F.dropout(x, self.lora_dropout[name], self.rng, training=self.training)
            a_e = self.lora_A[name] * self.lora_E[name]  # (r, d_in): row i scaled by E_i
            low = F.linear(h, a_e)  # (..., r)
            y = y + F.linear(low, self.lora_B[name]) * self.scale(name)  # (..., d_out)
        return y

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, adapters={self.adapter_names}, r={self.r}, "
                f"ranknum={self.ranknum}")
