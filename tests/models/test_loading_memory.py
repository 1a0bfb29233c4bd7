"""Loading weights keeps one copy of the model: no random init to discard, parameters share the read arrays."""
import numpy as np

from minilora.io.pretrained import model_from_state_dict
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer

CONFIG = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)


def test_init_false_leaves_every_weight_at_zero_and_init_true_draws():
    empty = Transformer(ModelConfig(**CONFIG), init=False)
    drawn = Transformer(ModelConfig(**CONFIG), seed=0)
    for (name, p), (_, q) in zip(empty.named_parameters(), drawn.named_parameters()):
        if "norm" not in name:
            assert not np.any(p.data) and np.any(q.data), name


def test_init_false_placeholders_hold_no_memory_until_loaded():
    """Zero arrays would be made resident by calloc where the heap reuses freed space (114 MiB for
    SmolLM2 after a GGUF header); the placeholders are broadcast views of one zero instead."""
    model = Transformer(ModelConfig(**CONFIG), init=False)
    for name, p in model.named_parameters():
        if "norm" not in name:
            assert all(s == 0 for s in p.data.strides) and not p.data.flags.writeable, name
    model.load_state_dict(Transformer(ModelConfig(**CONFIG), seed=3).state_dict())  # loading rebinds them
    assert all(p.data.flags.writeable for p in model.parameters())


def test_load_state_dict_copy_false_shares_and_copy_true_copies():
    source = Transformer(ModelConfig(**CONFIG), seed=1).state_dict()
    shared, copied = Transformer(ModelConfig(**CONFIG), init=False), Transformer(ModelConfig(**CONFIG), init=False)
    shared.load_state_dict(source, copy=False)
    copied.load_state_dict(source)
    for name, p in shared.named_parameters():
        assert np.shares_memory(p.data, source[name]), name
        assert not np.shares_memory(dict(copied.named_parameters())[name].data, source[name]), name


def test_model_from_state_dict_keeps_the_read_arrays_and_makes_read_only_ones_writable():
    state = {k: v.copy() for k, v in Transformer(ModelConfig(**CONFIG), seed=2).state_dict().items()}
    frozen = "model.norm.weight"
    state[frozen].flags.writeable = False  # as a view into a memory-mapped GGUF would be
    model = model_from_state_dict(ModelConfig(**CONFIG), state)
    params = dict(model.named_parameters())
    assert np.shares_memory(params["model.layers.0.self_attn.q_proj.weight"].data,
                            state["model.layers.0.self_attn.q_proj.weight"])
    assert params[frozen].data.flags.writeable and not np.shares_memory(params[frozen].data, state[frozen])
    np.testing.assert_array_equal(params[frozen].data, state[frozen])
