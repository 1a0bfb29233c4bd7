"""A tiny adapted model, its optimizer and batches: what the checkpoint and resume tests train."""
from minilora.data import Batches, CharTokenizer, encode_example, task_splits
from minilora.lora import LoraConfig, get_lora_model
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer
from minilora.optim import AdamW


def tiny_run(adapter=None):
    """A tiny adapted model, its optimizer and batches; adapter: the adapter config (default LoRA r=4)."""
    tok = CharTokenizer()
    train_set, _ = task_splits("sort", n_train=100, n_eval=5)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32)
    adapter = adapter or LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"])
    model = get_lora_model(Transformer(config, seed=1), adapter, seed=2)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    batches = Batches([encode_example(tok, p, c, 31) for p, c in train_set], 4, tok.pad_token_id, seed=3)
    return model, optimizer, batches


def trainable_arrays(model):
    return {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}
