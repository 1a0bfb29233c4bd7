"""The no-grad forward of a Llama-style Transformer on bare arrays, for generation with a KV cache.

Per layer, with n(.) = RMSNorm, x (B, T, C) and positions start .. start+T-1:

    q | k | v = n_1(h) [Wq; Wk; Wv]^T          (B, T, nh*hs | nkv*hs | nkv*hs)   one stacked GEMM
    q, k      = RoPE(q), RoPE(k);   K, V = cache[layer] ++ (k, v)                 (B, nkv, S+T, hs)
    h         = h + attention(q, K, V) Wo^T
    g | u     = n_2(h) [Wg; Wu]^T;  h = h + swiglu(g, u) Wd^T                    one stacked GEMM
    logits    = n_f(h[:, -1]) W_head^T                                          (B, V)

The module path (Transformer.forward) computes exactly this; here each step calls the same kernel
forwards (kernels.py, ops.py) directly on arrays: no Tensor wrappers, no Module calls, no graph
checks. A decoding step is about 15 array calls per layer instead of about 25 wrapped ones, which
matters when a step's 121 matrix-vector products take milliseconds and each Python-level call
microseconds. The result equals the module path's bit for bit (tests/models/test_decode.py).

``Decoder.for_model`` returns None (and callers take the module path) unless the model is a
Llama-style Transformer (or a wrapper of one, such as a LoraModel) whose projections compute plain
Linears and whose norms are RMSNorms. A LoRA layer counts as its base Linear when it adds nothing
(its adapters merged, disabled or inactive): a merged model decodes exactly like the base. An
unmerged adapter, a 4-bit layer, GPT-2 style or gradients being recorded take the module path.
The stacked q/k/v and gate/up weights are the ones models/fused.py shares with the module path;
o_proj, down_proj and lm_head go through ``stacked`` alone, which lays each out as its product
streams fastest (input-major when the output is at least as wide as the input, see models/fused.py).
"""
from __future__ import annotations

from .. import backend, functional as F
from .. import kernels, ops
from ..nn import Embedding, Linear, RMSNorm
from ..tensor import is_grad_enabled
from .fused import split_outputs, stacked
from .transformer import Transformer, _language_model


def _call(op, *arrays, **options):
    """A primitive's forward value on arrays (the VJP it also returns is dropped)."""
    return op.primitive.forward(*arrays, **options)[0]


class Decoder:
    """Array-level forward of one Transformer (see the module doc).

    The arrays are looked up once, when the Decoder is made (one generation call): weights updated
    in place are seen, a weight rebound later needs a new Decoder.
    """

    def __init__(self, model):
        self.model, self.config = model, model.config
        lm = model.model
        self.head = stacked((as_linear(model.lm_head),)).weight  # before the embedding: they may be tied
        self.embed = lm.embed_tokens.weight.data
        self.norm = (lm.norm.weight.data, lm.norm.eps)
        self.layers = [_LayerArrays(layer) for layer in lm.layers]

    @classmethod
    def for_model(cls, model):
        """A Decoder for ``model`` (or the Transformer it wraps), or None when the module path must
        run (see the module doc)."""
        model = _language_model(model)
        if type(model) is not Transformer or model.config.style != "llama" or is_grad_enabled() or model.training:
            return None
        head = as_linear(model.lm_head)
        if head is None or head.bias is not None or type(model.model.norm) is not RMSNorm \
                or type(model.model.embed_tokens) is not Embedding:
            return None
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if any(type(n) is not RMSNorm for n in norms) or None in _linears(layer) \
                    or stacked(_linears(layer)[:3]) is None or stacked(_linears(layer)[4:6]) is None:
                return None
        return cls(model)

    def last_logits(self, ids, cache):
        """ids int (B, T) in the model's namespace -> logits (B, V) of the last position; fills cache."""
        cfg = self.config
        xp = backend.namespace_of(self.embed)
        t = ids.shape[1]
        start = cache.length
        if start + t > cfg.max_position_embeddings:
            raise ValueError(f"input_ids: positions up to {start + t} exceed max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        cos, sin = F.rope_tables(xp, xp.arange(start, start + t, dtype=xp.int64), cfg.head_dim,
                                 base=cfg.rope_theta, interleaved=cfg.rope_interleaved, dtype=self.embed.dtype)
        rope = (xp.reshape(cos, (t, 1, cfg.head_dim)), xp.reshape(sin, (t, 1, cfg.head_dim)))  # (T, 1, hs)
        h = _call(ops.embedding, self.embed, ids)  # (B, T, C)
        for index, layer in enumerate(self.layers):
            h = layer.forward(xp, h, rope, cache, index)
        h = _call(kernels.rms_norm, h[:, -1:, :], self.norm[0], eps=self.norm[1])  # (B, 1, C)
        return _call(kernels.linear, h, self.head)[:, 0, :]  # (B, V)


class _LayerArrays:
    """One decoder layer's arrays (norm weights, stacked q/k/v and gate/up, o and down) and its forward."""

    def __init__(self, layer):
        a = layer.self_attn
        q, k, v, o, gate, up, down = _linears(layer)
        self.heads = (a.num_heads, a.num_kv_heads, a.head_dim)
        self.interleaved = a.rope_interleaved
        self.norm_1 = (layer.input_layernorm.weight.data, layer.input_layernorm.eps)
        self.norm_2 = (layer.post_attention_layernorm.weight.data, layer.post_attention_layernorm.eps)
        qkv, gate_up = stacked((q, k, v)), stacked((gate, up))
        self.qkv = (qkv.weight, qkv.bias, qkv.sizes)
        self.gate_up = (gate_up.weight, gate_up.bias, gate_up.sizes)
        o, down = stacked((o,)), stacked((down,))
        self.o = (o.weight, o.bias)
        self.down = (down.weight, down.bias)

    def forward(self, xp, h, rope, cache, index):
        """h (B, T, C) -> (B, T, C); appends this layer's keys and values to the cache."""
        b, t, _ = h.shape
        nh, nkv, hs = self.heads
        n1 = _call(kernels.rms_norm, h, self.norm_1[0], eps=self.norm_1[1])
        q, k, v = split_outputs(_call(kernels.linear, n1, self.qkv[0], self.qkv[1]), self.qkv[2])
        q = _call(kernels.rope, xp.reshape(q, (b, t, nh, hs)), *rope, interleaved=self.interleaved)
        k = _call(kernels.rope, xp.reshape(k, (b, t, nkv, hs)), *rope, interleaved=self.interleaved)
        keys, values = cache.append(index, xp.permute_dims(k, (0, 2, 1, 3)),
                                    xp.permute_dims(xp.reshape(v, (b, t, nkv, hs)), (0, 2, 1, 3)))
        y = _call(kernels.attention, xp.permute_dims(q, (0, 2, 1, 3)), keys, values, causal=True)  # (B, nh, T, hs)
        y = xp.reshape(xp.permute_dims(y, (0, 2, 1, 3)), (b, t, nh * hs))
        h = h + _call(kernels.linear, y, *self.o)
        n2 = _call(kernels.rms_norm, h, self.norm_2[0], eps=self.norm_2[1])
        gate, up = split_outputs(_call(kernels.linear, n2, self.gate_up[0], self.gate_up[1]), self.gate_up[2])
        return h + _call(kernels.linear, _call(kernels.swiglu, gate, up), *self.down)


def as_linear(module):
    """The plain Linear that computes ``module``'s output: itself, the base of a LoRA layer that adds
    nothing now (merged, disabled or inactive adapters, no mixed batch), or None."""
    if type(module) is Linear:
        return module
    plan = getattr(module, "adapter_plan", None)
    if plan is None or type(getattr(module, "base_layer", None)) is not Linear or module.row_adapters is not None:
        return None
    return module.base_layer if not plan() else None


def _linears(layer) -> list:
    """q, k, v, o, gate, up, down of a decoder layer as plain Linears (None where one is not)."""
    a, m = layer.self_attn, layer.mlp
    return [as_linear(x) for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)]
