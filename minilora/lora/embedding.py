"""LoRAEmbedding: a frozen Embedding plus LoRA adapters in PEFT's layout.

    A (r, V) = 0, B (C, r) ~ N(0, 1),   y = base(ids) + scaling * A^T[ids] B^T      ids (...,) -> (..., C)

The rows are gathered from A^T (V, r), so merging adds scaling * (B A)^T (V, C) to the table. Paths:
``lora_embedding_A.<adapter>``, ``lora_embedding_B.<adapter>`` (bare Parameters, PEFT's saved keys).
"""
from __future__ import annotations

from .. import backend, functional as F, ops
from ..tensor import Tensor
from .layers import LoRALayer
from .mixed_batch import rows_only


class LoRAEmbedding(LoRALayer):
    """A frozen Embedding plus adapters in PEFT's layout: A (r, V), B (C, r)."""

    base_dims = ("num_embeddings", "embedding_dim")
    adapter_param_names = ("lora_embedding_A", "lora_embedding_B")

    @classmethod
    def adapter_shapes(cls, base, r: int) -> dict:
        return {"lora_embedding_A": (r, base.num_embeddings), "lora_embedding_B": (base.embedding_dim, r)}

    def update_layer(self, name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights=True, use_rslora: bool = False, seed: int = 0) -> None:
        """Add adapter ``name``. True / "gaussian": A = 0, B ~ N(0, 1); False: A, B ~ N(0, 1).

        Dropout does not apply to embedding adapters (their input is integer ids)."""
        self.check_new_adapter(name, r)
        rng = backend.Random(seed, xp=self.xp)
        v, c, dtype = self.num_embeddings, self.embedding_dim, self.dtype
        a = rng.normal((r, v), dtype=dtype) if init_lora_weights is False else self.xp.zeros((r, v), dtype=dtype)
        self.put_factors(name, lora_embedding_A=a, lora_embedding_B=rng.normal((c, r), dtype=dtype))
        self.lora_dropout[name] = float(lora_dropout)
        self.set_scale(name, lora_alpha, r, use_rslora)

    def delta_weight(self, name: str):
        """scaling * (B A)^T, (V, C): the embedding table's orientation."""
        xp = self.xp
        ba = xp.matmul(self.lora_embedding_B[name].data, self.lora_embedding_A[name].data)  # (C, V)
        return self.scaling[name] * ba.mT

    def forward(self, ids) -> Tensor:
        ids = ids.data if isinstance(ids, Tensor) else ids
        y = self.base_layer(ids)  # (..., C)
        for name, rows in self.adapter_plan():
            a_t = ops.permute(self.lora_embedding_A[name], axes=(1, 0))  # (V, r)
            low = ops.embedding(a_t, ids)  # (..., r)
            y = y + rows_only(F.linear(low, self.lora_embedding_B[name]) * self.scaling[name], rows)  # (..., C)
        return y

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, adapters={self.adapter_names}, r={self.r}"
