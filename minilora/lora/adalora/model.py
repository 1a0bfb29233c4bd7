"""AdaLoraModel: a LoraModel whose adapters are SVDLinear triplets, pruned by a RankAllocator.

``get_lora_model(model, AdaLoraConfig(...))`` builds one (AdaLoraConfig is registered with
get_lora_model). The training loop (minilora.train) adds ``regularization_loss()`` to the loss and
calls ``update_and_allocate(step)`` after optimizer.step() and before zero_grad(), so the ranks are
pruned without any user code. Only one AdaLoRA adapter may train at a time (inference_mode=False);
others are frozen (PEFT's rule). For adapter files it overrides LoraModel's adapter_state_dict,
expected_adapter_shapes and load_adapter_state_dict, which slice and resize the triplets to the
rank pattern as PEFT does; lora/save_load.py writes and reads the files.
"""
from __future__ import annotations

from ... import backend, ops
from ...nn import Module
from ...tensor import Tensor, no_grad
from ..adapter_state import PREFIX, AdapterLoadError, adapter_parameters, host_arrays
from ..inject import add_modules_to_save, check_layer_kinds, find_targets, is_linear_like, layer_seed, lora_layers
from ..model import LoraModel, register_model_class
from .allocator import RankAllocator
from .config import AdaLoraConfig
from .layers import SVDLinear


class AdaLoraModel(LoraModel):
    """A model with AdaLoRA adapters. trainable_adapter_name: the adapter the allocator prunes;
    rankallocator: its RankAllocator (PEFT's names)."""

    def __init__(self, model: Module, config: AdaLoraConfig, adapter_name: str = "default", seed: int = 0):
        self.trainable_adapter_name = None
        self.rankallocator = None
        super().__init__(model, config, adapter_name=adapter_name, seed=seed)
        if not config.inference_mode:
            self.trainable_adapter_name = adapter_name
            self.rankallocator = RankAllocator(self.model, config, adapter_name)

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: AdaLoraConfig) -> None:
        """Wrap every targeted Linear-like layer in an SVDLinear (rank init_r) holding ``adapter_name``."""
        self._check_new_adapter(adapter_name, config, AdaLoraConfig)
        trainable = [n for n, c in self.peft_config.items() if not c.inference_mode]
        if trainable and not config.inference_mode:
            raise ValueError(f"AdaLoraModel trains one adapter at a time ({trainable[0]!r} is trainable): "
                             "give the new adapter inference_mode=True")
        targets = find_targets(self.model, config)
        check_layer_kinds(targets, config)
        wrong = [p for p, m in targets if not (isinstance(m, SVDLinear) or is_linear_like(m))]
        if wrong:
            raise ValueError(f"AdaLoRA adapts Linear-like layers only; target_modules also matches {wrong}")
        for path, module in targets:
            layer = module
            if not isinstance(module, SVDLinear):
                layer = SVDLinear(module, rng_seed=layer_seed(self.seed, path, "dropout"))
                layer.train(module.training)
                self.model.set_submodule(path, layer)
            layer.update_layer(adapter_name, config.init_r, config.lora_alpha, config.lora_dropout,
                               config.init_lora_weights, seed=layer_seed(self.seed, path, adapter_name))
        add_modules_to_save(self.model, config, adapter_name)
        self.peft_config[adapter_name] = config
        self.mark_trainable()

    def svd_layers(self, adapter_name: str | None = None) -> list:
        """[(path, SVDLinear)] holding ``adapter_name`` (default: the trainable or first adapter)."""
        name = adapter_name or self.trainable_adapter_name or self.active_adapter
        return [(p, m) for p, m in lora_layers(self.model) if isinstance(m, SVDLinear) and name in m.r]

    def kept_indices(self, adapter_name: str) -> dict:
        """{layer path: indices of the triplets the rank pattern keeps}, for the layers whose rank is
        still init_r (a layer without a pattern entry, or resized to it already, keeps every row)."""
        pattern = self.peft_config[adapter_name].rank_pattern or {}
        out = {}
        for path, layer in self.svd_layers(adapter_name):
            keep = pattern.get(f"{path}.lora_E")
            if keep is None or len(keep) != layer.r[adapter_name]:
                keep = [True] * layer.r[adapter_name]
            out[path] = [i for i, k in enumerate(keep) if k]
        return out

    # ------------------------------------------------------------ adapter state (what files hold)
    overwrites_on_load = False  # a loaded adapter is resized to its file's pattern: always a new one

    def adapter_state_dict(self, adapter_name: str = "default") -> dict:
        """LoRA's tensors, with every layer's A, E rows and B columns sliced to the triplets its rank
        pattern keeps (PEFT's resize_state_dict_by_rank_pattern): A (k, d_in), E (k, 1), B (d_out, k)."""
        arrays = {k: p.data for k, p in adapter_parameters(self, adapter_name).items()}
        for path, idx in self.kept_indices(adapter_name).items():
            for attr, axis in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
                key = f"{PREFIX}{path}.{attr}"
                xp = backend.namespace_of(arrays[key])
                arrays[key] = xp.take(arrays[key], xp.asarray(idx, dtype=xp.int64), axis=axis)
        return host_arrays(arrays)

    @staticmethod
    def layer_class_for(module) -> type:
        return SVDLinear

    @classmethod
    def expected_adapter_shapes(cls, base: Module, config: AdaLoraConfig) -> dict:
        """LoRA's keys with each layer's triplet at its kept rank k = sum(rank_pattern[path]) (init_r
        where the pattern has no entry); a pattern entry must have init_r booleans."""
        pattern = config.rank_pattern or {}
        out = super().expected_adapter_shapes(base, config)
        for path, module in find_targets(base, config):
            keep = pattern.get(f"{path}.lora_E")
            if keep is None:
                continue
            if len(keep) != config.init_r:
                raise AdapterLoadError(f"rank_pattern[{path + '.lora_E'!r}] has {len(keep)} entries; "
                                       f"init_r is {config.init_r}")
            for suffix, shape in SVDLinear.adapter_shapes(module, int(sum(keep))).items():
                out[f"{PREFIX}{path}.{suffix}"] = shape
        return out

    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        """Resize every layer to its rank pattern (rank 0 allowed; the scale keeps ranknum = init_r),
        then copy the tensors in."""
        pattern = self.peft_config[adapter_name].rank_pattern or {}
        for path, layer in self.svd_layers(adapter_name):
            keep = pattern.get(f"{path}.lora_E")
            if keep is not None:
                layer.resize(adapter_name, keep)
        super().load_adapter_state_dict(adapter_name, tensors)

    def add_weighted_adapter(self, *args, **kwargs):
        raise TypeError("AdaLoraModel does not support add_weighted_adapter; convert with to_lora() first")

    # ------------------------------------------------------------ training hooks
    def regularization_loss(self) -> Tensor:
        """orth_reg_weight * R, R = mean over the 2n factors F in {A_l, B_l} of ||C(F) - I||_F,
        C(A) = A A^T (r, r), C(B) = B^T B (r, r) (AdaLoRA eq. 4; PEFT averages over A's and B's
        separately, so R = (1/2n) sum_l (||A_l A_l^T - I||_F + ||B_l^T B_l - I||_F))."""
        name = self.trainable_adapter_name
        config = self.peft_config[name] if name else None
        layers = self.svd_layers(name) if name else []
        if config is None or config.orth_reg_weight == 0 or not layers:
            xp, dtype = (layers[0][1].xp, layers[0][1].dtype) if layers else (None, None)
            return Tensor(0.0) if xp is None else Tensor(xp.zeros((), dtype=dtype))
        return orthogonal_regularizer(layers, name) * config.orth_reg_weight

    def update_and_allocate(self, global_step: int) -> None:
        """Score and mask the triplets at ``global_step`` (call after optimizer.step(), before zero_grad):
        RankAllocator.update_and_allocate does the work of each phase; the pattern it returns is kept
        in the trainable adapter's config (rank_pattern, saved with the adapter)."""
        if self.rankallocator is None:
            return
        config = self.peft_config[self.trainable_adapter_name]
        with no_grad():
            _, pattern = self.rankallocator.update_and_allocate(global_step, config.rank_pattern)
        if pattern:
            config.rank_pattern = pattern

    def kept_ranks(self, adapter_name: str | None = None) -> dict:
        """{layer path: number of kept triplets} from the rank pattern (init rank where none yet)."""
        name = adapter_name or self.trainable_adapter_name or self.active_adapter
        pattern = self.peft_config[name].rank_pattern or {}
        return {p: sum(pattern[f"{p}.lora_E"]) if f"{p}.lora_E" in pattern else m.r[name]
                for p, m in self.svd_layers(name)}


def orthogonal_regularizer(layers, adapter_name: str) -> Tensor:
    """R = mean over the factors {A_l, B_l} of ||A A^T - I||_F and ||B^T B - I||_F (a scalar Tensor)."""
    terms = []
    for _, layer in layers:
        for attr in ("lora_A", "lora_B"):
            p = getattr(layer, attr)[adapter_name]
            terms.append(_gram_distance(p, rows=attr == "lora_A"))
    if not terms:
        return Tensor(0.0)
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total / len(terms)


def _gram_distance(p, rows: bool) -> Tensor:
    """||P P^T - I||_F for rows=True (P = A (r, d_in)), ||P^T P - I||_F otherwise (P = B (d_out, r))."""
    xp = p.xp
    r = p.shape[0] if rows else p.shape[1]
    if r == 0:
        return Tensor(xp.zeros((), dtype=p.dtype))
    p_t = ops.permute(p, axes=(1, 0))
    gram = p @ p_t if rows else p_t @ p  # (r, r)
    diff = gram - Tensor(xp.eye(r, dtype=p.dtype))
    return ops.sqrt(ops.sum(diff * diff))


register_model_class(AdaLoraConfig, AdaLoraModel)
