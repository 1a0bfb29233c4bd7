"""One config-driven decoder: GPT-2 style and Llama style, with Hugging Face module names.

    h_0 = E[ids] (+ P[positions] for GPT-2)                          (B, T, C)
    for each layer:  h = h + Attn(Norm_1(h));   h = h + MLP(Norm_2(h))
    logits = Norm_f(h) W_head^T                                       (B, T, V)

Llama style: RMSNorm, RoPE inside attention, SwiGLU MLP down(silu(gate(x)) * up(x)), grouped-query
heads. GPT-2 style: LayerNorm, learned positions ``model.embed_positions``, MLP down(gelu(up(x))).
Names (what a PEFT ``target_modules`` list refers to):

    model.embed_tokens, model.embed_positions (gpt2), model.layers.{i}.input_layernorm,
    model.layers.{i}.self_attn.{q,k,v,o}_proj, model.layers.{i}.post_attention_layernorm,
    model.layers.{i}.mlp.{gate,up,down}_proj (gate: llama only), model.norm, lm_head

With ``tie_word_embeddings`` lm_head.weight IS model.embed_tokens.weight (one Parameter).
"""
from __future__ import annotations

from .. import backend, functional as F
from .. import ops
from ..lm_head_loss import DEFAULT_CHUNK_ROWS, linear_cross_entropy
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, RMSNorm
from ..tensor import Tensor
from .attention import Attention
from .checkpoint import checkpoint, is_recomputing
from .config import ModelConfig
from .fused import fused_linears
from .init import INIT_STD, Zeros, init_linear


class MLP(Module):
    """Llama: down(silu(gate(x)) * up(x)); GPT-2: down(gelu(up(x))).  x (B, T, C) -> (B, T, C)."""

    def __init__(self, config: ModelConfig, dtype, rng):
        c, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gated = config.style == "llama"
        if self.gated:
            self.gate_proj = init_linear(c, f, bias, dtype, rng, INIT_STD)
        self.up_proj = init_linear(c, f, bias, dtype, rng, INIT_STD)
        self.down_proj = init_linear(f, c, bias, dtype, rng, INIT_STD)

    def forward(self, x: Tensor, output_discarded: bool = False) -> Tensor:
        """output_discarded: the caller throws the value away and backpropagates through the graph
        only (a checkpointed recompute), so a plain down_proj skips its product (Linear's value=False)."""
        if self.gated:  # without gradients, plain gate/up Linears run as one stacked product
            gate, up = fused_linears(x, (self.gate_proj, self.up_proj)) or (self.gate_proj(x), self.up_proj(x))
            h = F.swiglu(gate, up)  # (B, T, F)
        else:
            h = F.gelu(self.up_proj(x))
        if output_discarded and getattr(self.down_proj, "value_optional", False):
            return self.down_proj(h, value=False)
        return self.down_proj(h)  # (B, T, F) -> (B, T, C)


class DecoderLayer(Module):
    """Pre-norm block: h + drop(Attn(norm1(h))), then + drop(MLP(norm2(h)))."""

    def __init__(self, config: ModelConfig, layer_idx: int, dtype, rng, dropout_rng):
        self.input_layernorm = _norm(config, dtype, rng.xp)
        self.self_attn = Attention(config, layer_idx, dtype, rng, INIT_STD)
        self.post_attention_layernorm = _norm(config, dtype, rng.xp)
        self.mlp = MLP(config, dtype, rng)
        self.dropout = Dropout(config.dropout, dropout_rng)

    def forward(self, h: Tensor, rope=None, cache=None, output_discarded: bool = False) -> Tensor:
        """output_discarded: only the graph of the result is used (see MLP.forward)."""
        h = h + self.dropout(self.self_attn(self.input_layernorm(h), rope=rope, cache=cache))
        return h + self.dropout(self.mlp(self.post_attention_layernorm(h), output_discarded=output_discarded))


class DecoderModel(Module):
    """Embeddings, the stack of DecoderLayers and the final norm (Hugging Face's ``model.``)."""

    def __init__(self, config: ModelConfig, dtype, rng, dropout_rng):
        xp = rng.xp
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype=dtype, rng=rng, std=INIT_STD)
        if config.style == "gpt2":
            self.embed_positions = Embedding(config.max_position_embeddings, config.hidden_size,
                                             dtype=dtype, rng=rng, std=INIT_STD)
        self.layers = ModuleList(DecoderLayer(config, i, dtype, rng, dropout_rng)
                                 for i in range(config.num_hidden_layers))
        self.norm = _norm(config, dtype, xp)
        self.dropout = Dropout(config.dropout, dropout_rng)
        self.dropout_rng = dropout_rng
        self.gradient_checkpointing = False

    def forward(self, ids, cache=None) -> Tensor:
        """ids int (B, T) in the parameters' namespace -> final hidden states (B, T, C)."""
        cfg = self.config
        xp = self.embed_tokens.weight.xp
        start = 0 if cache is None else cache.length
        t = ids.shape[1]
        if start + t > cfg.max_position_embeddings:
            raise ValueError(f"input_ids: positions up to {start + t} exceed max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        positions = xp.arange(start, start + t, dtype=xp.int64)  # (T,)
        h = self.embed_tokens(ids)  # (B, T, C)
        rope = None
        if cfg.style == "gpt2":
            h = h + self.embed_positions(positions)  # (T, C) broadcasts over B
        else:
            cos, sin = F.rope_tables(xp, positions, cfg.head_dim, base=cfg.rope_theta,
                                     interleaved=cfg.rope_interleaved, dtype=h.dtype)  # (T, hs)
            rope = (xp.reshape(cos, (t, 1, cfg.head_dim)), xp.reshape(sin, (t, 1, cfg.head_dim)))  # (T, 1, hs)
        h = self.dropout(h)
        rewind = self.dropout_rng if cfg.dropout > 0 else None  # dropout masks must repeat in the recompute
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                # the recompute backpropagates through the layer's graph and discards its value
                h = checkpoint(lambda x, layer=layer: layer(x, rope=rope, output_discarded=is_recomputing()),
                               h, rng=rewind)
            else:
                h = layer(h, rope=rope, cache=cache)
        return self.norm(h)


class Transformer(Module):
    """The decoder with its language-model head: forward(input_ids, cache=None) -> logits (B, T, V).

    dtype: an xp dtype or its name ("float32", "float64"); default float32. seed: the init seed.
    init: False makes every weight a read-only zero placeholder (models/init.py ``Zeros``: no random
    draws and no memory) for a load_state_dict that follows. Weights are created in the current backend
    (``minilora.use_backend``).
    """

    def __init__(self, config: ModelConfig, dtype=None, seed: int = 0, init: bool = True):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"Transformer: config must be a ModelConfig, got {type(config).__name__}")
        config.validate()
        xp = backend.default_namespace()
        dtype = xp.float32 if dtype is None else (getattr(xp, dtype) if isinstance(dtype, str) else dtype)
        rng = backend.Random(seed, xp) if init else Zeros(xp)
        self.config = config
        self.model = DecoderModel(config, dtype, rng, backend.Random(seed + 1, xp))
        if config.tie_word_embeddings:  # a (1, C) placeholder weight, replaced by the shared Parameter
            self.lm_head = init_linear(config.hidden_size, 1, False, dtype, rng, INIT_STD)
            self.lm_head.out_features = config.vocab_size
            self.lm_head.weight = self.model.embed_tokens.weight  # the same Parameter
        else:
            self.lm_head = init_linear(config.hidden_size, config.vocab_size, False, dtype, rng, INIT_STD)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.model.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, flag: bool) -> None:
        self.model.gradient_checkpointing = bool(flag)

    def forward(self, input_ids, cache=None) -> Tensor:
        """input_ids int (B, T) (array, list or Tensor) -> logits (B, T, V). See KVCache for ``cache``."""
        ids = as_token_ids(input_ids, self.model.embed_tokens.weight.xp)
        return self.lm_head(self.model(ids, cache=cache))  # (B, T, V)

    def loss(self, input_ids, targets, ignore_index: int = -100) -> Tensor:
        """Mean next-token cross entropy; targets (B, T) are already shifted (see lm_loss)."""
        return lm_loss(self, input_ids, targets, ignore_index=ignore_index)

    def extra_repr(self):
        c = self.config
        return (f"style={c.style}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}, vocab={c.vocab_size}")


def lm_loss(model, input_ids, targets, ignore_index: int = -100, chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Cross entropy of logits = model(input_ids) (B, T, V) against targets (B, T) over B*T rows.

    targets[b, t] is the token that should follow input_ids[b, t] (the caller shifts: for a sequence
    s, input_ids = s[:-1] and targets = s[1:]); positions equal to ignore_index (prompt, padding) do
    not count. Returns the mean over counted positions (a scalar Tensor).

    When ``model`` is a Transformer (or a LoRA wrapper of one) whose lm_head is a plain bias-free
    Linear (tied or not), the head and the loss run fused in tiles of ``chunk_rows`` rows by
    lm_head_loss's default number of classes (lm_head_loss.linear_cross_entropy): the (B*T, V)
    logits never exist whole. ``chunk_rows=None``, or any other head (LoRA on lm_head, 4-bit,
    modules_to_save), computes the whole logits.
    """
    lm = _language_model(model)
    head = None if lm is None else lm.lm_head
    if chunk_rows is not None and type(head) is Linear and head.bias is None:
        hidden = lm.model(as_token_ids(input_ids, head.weight.xp))  # (B, T, C)
        b, t, c = hidden.shape
        tgt = _shifted_targets(targets, hidden.xp, (b, t))
        return linear_cross_entropy(ops.reshape(hidden, shape=(b * t, c)), head.weight,
                                    hidden.xp.reshape(tgt, (b * t,)), ignore_index=ignore_index,
                                    chunk_rows=chunk_rows)
    logits = model(input_ids)  # (B, T, V)
    b, t, v = logits.shape
    tgt = _shifted_targets(targets, logits.xp, (b, t))
    return F.cross_entropy(ops.reshape(logits, shape=(b * t, v)), logits.xp.reshape(tgt, (b * t,)),
                           ignore_index=ignore_index)


def _shifted_targets(targets, xp, shape):
    tgt = as_token_ids(targets, xp)
    if tuple(tgt.shape) != shape:
        raise ValueError(f"lm_loss: targets must have shape {shape} like input_ids, got {tuple(tgt.shape)}")
    return tgt


def _language_model(model):
    """The Transformer behind ``model`` (itself, or what wrappers such as LoraModel forward to), or None."""
    for _ in range(8):
        if isinstance(model, Transformer):
            return model
        if not hasattr(type(model), "get_base_model"):
            return None
        model = model.get_base_model()
    return None


def as_token_ids(ids, xp):
    """Token ids as an int64 (B, T) array of namespace xp; a list, host NumPy array or Tensor is accepted.

    Host NumPy ids are moved to xp (a few integers, on purpose); arrays of another device raise.
    """
    if isinstance(ids, Tensor):
        ids = ids.data
    if isinstance(ids, (list, tuple)):
        ids = xp.asarray(ids, dtype=xp.int64)
    elif backend.backend_name(ids) != backend.backend_name(xp):
        if backend.backend_name(ids) != "numpy":
            raise backend.BackendError(f"input_ids live in {backend.backend_name(ids)} but the model in "
                                       f"{backend.backend_name(xp)}; move them explicitly")
        ids = backend.from_numpy(ids, xp)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be a 2-D (batch, time) integer array, got shape {tuple(ids.shape)}")
    if not xp.isdtype(ids.dtype, "integral"):
        raise ValueError(f"input_ids must be integers, got dtype {ids.dtype}")
    return ids


def _norm(config: ModelConfig, dtype, xp) -> Module:
    if config.style == "llama":
        return RMSNorm(config.hidden_size, eps=config.norm_eps, dtype=dtype, xp=xp)
    return LayerNorm(config.hidden_size, eps=config.norm_eps, dtype=dtype, xp=xp)
