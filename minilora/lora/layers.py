"""LoRA layers: a frozen base layer plus named low-rank adapters, by composition.

LoRALinear (LoRA, arXiv 2106.09685, eq. 3), for every active adapter a:

    y = base(x) + sum_a scaling_a * (dropout(x) A_a^T) B_a^T        x (..., d_in) -> (..., d_out)

A_a (r, d_in), B_a (d_out, r), scaling_a = alpha / r (rsLoRA: alpha / sqrt(r)). The adapter path is
two thin products (N x d_in x r, then N x r x d_out); B A (d_out x d_in) is formed only to merge.
The base layer is only *called* (and asked for in_features / out_features), so the same wrapper
serves a float ``Linear`` and a 4-bit ``Linear4bit``: that composition is QLoRA (2305.14314).

LoRAEmbedding (embedding.py) holds PEFT's embedding layout on the same LoRALayer. Variants of
LoRALinear by composition: DoRA (dora.py: a magnitude vector, its own forward increment and merge
step) and the weight-aware inits (init_methods.py); mixed-adapter batches (mixed_batch.py) give
every forward a plan of (adapter, rows).

One adapter's state, the same for every layer class: its tensors are one entry under its name in
each AdapterDict attribute (``lora_A``, ``lora_B``, ...), its settings one entry in each dict named
by ``adapter_tables`` (``r``, ``lora_alpha``, ``scaling``, ``lora_dropout``). An entry follows PEFT's
paths: a LoRAFactor in LoRALinear (``lora_A.<adapter>.weight``), a bare Parameter in LoRAEmbedding
and SVDLinear (``lora_embedding_A.<adapter>``). Generic code never looks at entries: it asks
``adapter_parameters(name)`` and writes through ``put_factors``. A variant adds a tensor by assigning
one more AdapterDict, a setting by naming one more table; saving, loading, freezing and deleting
pick both up.
"""
from __future__ import annotations

import math

from .. import backend, functional as F
from ..errors import UnsafePathError
from ..nn import Module, Parameter
from ..tensor import Tensor
from . import dora
from .base_weight import base_weight, dtype_and_xp, is_quantized, set_base_weight
from .config import lora_scaling
from .init_methods import WEIGHT_AWARE, init_from_base, parse_init
from .mixed_batch import row_masks, rows_only


def check_adapter_name(name) -> str:
    """Adapter names become path parts and folder names: no dots, separators or '..'.

    Names of AdapterDict's own attributes (``keys``, ``training``, ``forward``, ...) are refused too.
    """
    if not isinstance(name, str) or not name or name.startswith("_") or hasattr(AdapterDict, name) \
            or any(c in name for c in "./\\") or not name.isprintable():
        raise UnsafePathError(f"adapter_name must be a non-empty name without '.', '/', '\\' or a leading '_', "
                              f"and not an attribute of AdapterDict; got {name!r}")
    return name


class AdapterDict(Module):
    """adapter name -> Module or Parameter, stored as attributes so paths read ``lora_A.default.weight``."""

    def __getitem__(self, name):
        if name not in self:
            raise KeyError(f"no adapter {name!r} (have {self.keys()})")
        return vars(self)[name]

    def __setitem__(self, name, value):
        vars(self)[check_adapter_name(name)] = value

    def __delitem__(self, name):
        del vars(self)[name]

    def __contains__(self, name):
        return name in vars(self) and isinstance(vars(self)[name], (Module, Parameter))

    def keys(self):
        return [k for k, v in vars(self).items() if isinstance(v, (Module, Parameter))]

    def items(self):
        return [(k, vars(self)[k]) for k in self.keys()]

    def __len__(self):
        return len(self.keys())


class LoRAFactor(Module):
    """One factor of a LoRALinear adapter, held as ``weight`` (d_out, d_in) so its path is PEFT's."""

    def __init__(self, weight):
        self.weight = Parameter(weight)


class LoRALayer(Module):
    """What every LoRA layer shares: adapters by name, active set, merge bookkeeping, the checks.

    A subclass states its shape with class attributes and a few hooks:
      base_dims            integer attributes the base must have; they are copied onto the layer
      adapter_param_names  the AdapterDicts holding the factors, in the order ``factors`` returns them
      adapter_tables       per-adapter settings, each a dict {adapter name: value}
      factor_type          what an AdapterDict entry is built from an array (Parameter or LoRAFactor)
      min_rank             the smallest rank ``update_layer`` accepts
      peft_type            the adapter method whose adapters the layer holds ("LORA", "ADALORA")
      adapter_shapes(base, r), update_layer(...), delta_weight(name), forward(...)
    """

    base_dims: tuple = ()
    adapter_param_names = ("lora_A", "lora_B")
    adapter_tables = ("r", "lora_alpha", "scaling", "lora_dropout")
    factor_type = Parameter
    min_rank = 1
    peft_type = "LORA"

    def __init__(self, base, rng_seed: int = 0):
        for attr in self.base_dims:
            if not isinstance(getattr(base, attr, None), int):
                raise ValueError(f"{type(self).__name__}: base {type(base).__name__} has no integer {attr}")
            setattr(self, attr, getattr(base, attr))
        self.base_layer = base
        for table in self.adapter_tables:
            setattr(self, table, {})
        for attr in self.adapter_param_names:
            setattr(self, attr, AdapterDict())
        self.active_adapters: list = []
        self.row_adapters = None  # one adapter name per batch row, set only by mixed_batch()
        self.merged_adapters: list = []  # in merge order; unmerge pops from the end (LIFO)
        self.adapters_disabled = False
        dtype, xp = dtype_and_xp(base)
        self.dtype, self._rng_seed = dtype, rng_seed
        self.rng = backend.Random(rng_seed, xp=xp)  # dropout masks

    @classmethod
    def adapter_shapes(cls, base, r: int) -> dict:
        """{suffix PEFT saves: shape} of one adapter of rank r on ``base`` (before any is made)."""
        raise NotImplementedError

    def check_new_adapter(self, name, r) -> None:
        """The checks every ``update_layer`` makes first: a safe name and an integer rank >= min_rank."""
        check_adapter_name(name)
        if isinstance(r, bool) or not isinstance(r, int) or r < self.min_rank:
            wanted = "a positive integer" if self.min_rank == 1 else f"an integer >= {self.min_rank}"
            raise ValueError(f"{type(self).__name__}.update_layer: r must be {wanted}, got {r!r}")

    def put_factors(self, name: str, **arrays) -> None:
        """Store adapter ``name``'s factors, {AdapterDict attribute: array}, as this layer holds them."""
        for attr, value in arrays.items():
            getattr(self, attr)[name] = self.factor_type(value)

    def adapter_dicts(self) -> list:
        """[(attribute, AdapterDict)] of every adapter tensor this layer holds, variants' ones included."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, AdapterDict)]

    def adapter_parameters(self, name: str) -> dict:
        """{suffix: Parameter} of adapter ``name``: its parameter paths with ``.<name>`` taken out,
        i.e. the suffixes PEFT saves (``lora_A.weight``, ``lora_embedding_A``, ``lora_E``)."""
        out = {}
        for attr, holders in self.adapter_dicts():
            for path, p in holders.named_parameters():
                head, _, rest = path.partition(".")
                if head == name:
                    out[f"{attr}.{rest}" if rest else attr] = p
        return out

    @property
    def xp(self):
        return self.rng.xp

    @property
    def weight(self):
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    @property
    def adapter_names(self) -> list:
        return list(self.r)

    def set_scale(self, name: str, alpha: float, r: int, use_rslora: bool) -> None:
        self.r[name], self.lora_alpha[name] = r, alpha
        self.scaling[name] = lora_scaling(alpha, r, use_rslora)

    # ------------------------------------------------------------ merging
    def delta_weight(self, name: str):
        """scaling * (B A) in the base's weight orientation (the merge increment), an array."""
        raise NotImplementedError

    def merge(self, names=None, safe_merge: bool = False) -> list:
        """W0 += delta for each adapter in ``names`` (default: active) not merged yet.

        Returns the names that were already merged (skipped). safe_merge: a merged weight with
        NaN/Inf raises, and W0 is left bit-identical (the arrays before the call are put back).
        """
        names = list(self.active_adapters if names is None else names)
        skipped = [n for n in names if n in self.merged_adapters]
        state = self.snapshot()
        try:
            unmerged = self.unmerged_weight()
            for name in names:
                if name in skipped or name not in self.r:
                    continue
                merged = self.merge_step(name, base_weight(self.base_layer), unmerged)
                if safe_merge and not bool(self.xp.all(self.xp.isfinite(merged))):
                    raise ValueError(f"safe_merge: merging adapter {name!r} gives NaN or Inf weights; "
                                     "the base weight was left unchanged")
                set_base_weight(self.base_layer, merged)
                self.merged_adapters.append(name)
        except ValueError:
            self.restore(state)
            raise
        return skipped

    def snapshot(self):
        """The base weight array and merged list as they are now (merging never mutates an array in
        place, so keeping the reference is enough to restore W0 bit for bit)."""
        weight = None if is_quantized(self.base_layer) else self.base_layer.weight.data
        return weight, list(self.merged_adapters)

    def restore(self, state) -> None:
        weight, merged = state
        if weight is not None:
            self.base_layer.weight.data = weight
        self.merged_adapters = list(merged)

    def unmerge(self, keep: int = 0) -> None:
        """W0 -= delta for every merged adapter, last merged first (LIFO), until ``keep`` remain."""
        while len(self.merged_adapters) > keep:
            name = self.merged_adapters[-1]
            set_base_weight(self.base_layer, self.unmerge_step(name, base_weight(self.base_layer)))
            self.merged_adapters.pop()

    def merge_step(self, name: str, weight, unmerged):
        """The weight after merging adapter ``name`` into ``weight``; ``unmerged`` is the base weight
        with no adapter merged (variants whose merge depends on it, DoRA, read it). LoRA: W + delta."""
        return weight + self.delta_weight(name)

    def unmerge_step(self, name: str, weight):
        """The inverse of merge_step (no state changes). LoRA: W - delta."""
        return weight - self.delta_weight(name)

    def unmerged_weight(self):
        """The base weight with every merged adapter taken out again (the current array if none)."""
        weight = base_weight(self.base_layer)
        for name in reversed(self.merged_adapters):
            weight = self.unmerge_step(name, weight)
        return weight

    def merged_base(self, names=None, safe_merge: bool = False) -> Module:
        """A plain layer with ``names`` (default: active) merged in, for merge_and_unload."""
        if not is_quantized(self.base_layer):
            self.merge(names, safe_merge=safe_merge)
            return self.base_layer
        return self._dequantized_merged(names, safe_merge)

    def _dequantized_merged(self, names, safe_merge):
        raise ValueError(f"{type(self).__name__} cannot merge into a quantized base")

    # ------------------------------------------------------------ factors as plain arrays
    def factors(self, name: str) -> tuple:
        """(A, B) arrays of adapter ``name``, shapes (r, n_A) and (m_B, r) as stored."""
        params = self.adapter_parameters(name)
        return tuple(p.data for attr in self.adapter_param_names[:2]
                     for key, p in params.items() if key.partition(".")[0] == attr)

    def set_factors(self, name: str, a, b, scaling: float) -> None:
        """Create or overwrite adapter ``name`` with the given A, B arrays and scaling."""
        self.put_factors(name, **dict(zip(self.adapter_param_names, (a, b))))
        self.r[name], self.lora_alpha[name], self.scaling[name] = int(a.shape[0]), float(a.shape[0]), scaling
        self.lora_dropout.setdefault(name, 0.0)

    # ------------------------------------------------------------ adapter management
    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the base weight: unmerge it before deleting")
        for _, holders in self.adapter_dicts():
            if name in holders:
                del holders[name]
        for table in self.adapter_tables:
            getattr(self, table).pop(name, None)
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def adapter_plan(self) -> list:
        """[(adapter, rows)] this forward adds: the active unmerged adapters with rows None (every row),
        or, inside ``mixed_batch`` (mixed_batch.py), each named adapter with the mask of its rows."""
        if self.row_adapters is None or self.adapters_disabled:
            return [(name, None) for name in self._active_unmerged()]
        return row_masks(self, self.row_adapters)

    def _active_unmerged(self):
        if self.adapters_disabled:
            if self.merged_adapters:
                self.unmerge()  # a disabled layer computes the base alone (PEFT does the same)
            return []
        return [a for a in self.active_adapters if a in self.r and a not in self.merged_adapters]


class LoRALinear(LoRALayer):
    """A frozen Linear-like base (needs in_features, out_features, __call__) plus LoRA adapters."""

    base_dims = ("in_features", "out_features")
    factor_type = LoRAFactor

    @classmethod
    def adapter_shapes(cls, base, r: int, use_dora: bool = False) -> dict:
        shapes = {"lora_A.weight": (r, base.in_features), "lora_B.weight": (base.out_features, r)}
        if use_dora:
            shapes[dora.MAGNITUDE_KEY] = (base.out_features,)
        return shapes

    def update_layer(self, name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights=True, use_rslora: bool = False, seed: int = 0, *,
                     use_dora: bool = False, loftq_config=None) -> None:
        """Add adapter ``name``: A (r, d_in), B (d_out, r), initialised per ``init_lora_weights``.

        True: A ~ U(+-1/sqrt(d_in)) (PyTorch's kaiming_uniform(a=sqrt(5)) = PEFT's default), B = 0.
        "gaussian": A ~ N(0, std=1/r), B = 0.  False: A as for True, B ~ U(+-1/sqrt(r)).
        "pissa", "pissa_niter_K", "olora", "loftq": A and B from the base weight, which keeps the
        residual (init_methods.py). use_dora: adds the magnitude vector m = ||W0 + s B A||_c (dora.py).
        """
        kind, _ = parse_init(init_lora_weights)
        self.check_new_adapter(name, r)
        rng = backend.Random(seed, xp=self.xp)
        d_in, d_out, dtype = self.in_features, self.out_features, self.dtype
        if init_lora_weights == "gaussian":
            a = rng.normal((r, d_in), std=1.0 / r, dtype=dtype)
        else:
            bound = 1.0 / math.sqrt(d_in)
            a = rng.uniform((r, d_in), -bound, bound, dtype=dtype)
        if init_lora_weights is False:
            b = rng.uniform((d_out, r), -1.0 / math.sqrt(r), 1.0 / math.sqrt(r), dtype=dtype)
        else:
            b = self.xp.zeros((d_out, r), dtype=dtype)
        self.put_factors(name, lora_A=a, lora_B=b)
        self.lora_dropout[name] = float(lora_dropout)
        self.set_scale(name, lora_alpha, r, use_rslora)
        if kind in WEIGHT_AWARE:
            init_from_base(self, name, init_lora_weights, loftq_config, seed)
        if use_dora:
            dora.add_magnitude(self, name)

    def delta_weight(self, name: str):
        """scaling * B @ A, (d_out, d_in)."""
        xp = self.xp
        return self.scaling[name] * xp.matmul(self.lora_B[name].weight.data, self.lora_A[name].weight.data)

    def merge_step(self, name: str, weight, unmerged):
        if dora.is_dora(self, name):
            return dora.merge_step(self, name, weight, unmerged)
        return super().merge_step(name, weight, unmerged)

    def unmerge_step(self, name: str, weight):
        if dora.is_dora(self, name):
            return dora.unmerge_step(self, name, weight)
        return super().unmerge_step(name, weight)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., d_out)
        for name, rows in self.adapter_plan():
            if dora.is_dora(self, name):
                y = y + rows_only(dora.increment(self, name, x, y), rows)
                continue
            h = F.dropout(x, self.lora_dropout[name], self.rng, training=self.training)
            low = F.linear(h, self.lora_A[name].weight)  # (..., r)
            y = y + rows_only(F.linear(low, self.lora_B[name].weight) * self.scaling[name], rows)  # (..., d_out)
        return y

    def _dequantized_merged(self, names, safe_merge):
        from ..nn import Linear
        names = list(self.active_adapters if names is None else names)
        weight = unmerged = base_weight(self.base_layer)  # (d_out, d_in), float
        for name in names:
            if name in self.r:
                weight = self.merge_step(name, weight, unmerged)
        if safe_merge and not bool(self.xp.all(self.xp.isfinite(weight))):
            raise ValueError("safe_merge: the merged weight has NaN or Inf; the base was left unchanged")
        bias = getattr(self.base_layer, "bias", None)
        out = Linear(self.in_features, self.out_features, bias=bias is not None,
                     dtype=weight.dtype, rng=backend.Random(0, xp=self.xp))
        out.weight = Parameter(weight, requires_grad=False)
        if bias is not None:
            out.bias = Parameter(bias.data if isinstance(bias, Tensor) else bias, requires_grad=False)
        return out

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, adapters={self.adapter_names}, r={self.r}"
