"""End to end: minilora.train drives AdaLoRA on the toy sort task; ranks end on the budget, the task is learned."""
from __future__ import annotations

import numpy as np

from minilora.data import Batches, CharTokenizer, encode_example, task_splits
from minilora.lora import get_lora_model
from minilora.lora.adalora import AdaLoraConfig
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer, lm_loss
from minilora.optim import AdamW
from minilora.tensor import no_grad
from minilora.train import TrainConfig, train

STEPS = 60
TINY = dict(style="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, rope_theta=1000.0)


def metrics(model, ids, labels):
    """(loss, next-token accuracy on the completion positions) on a held-out batch."""
    with no_grad():
        logits = model(ids).numpy()
        loss = float(lm_loss(model, ids, labels).item())
    scored = labels != -100
    return loss, float((logits.argmax(-1) == labels)[scored].mean())


def test_training_loop_prunes_to_the_target_budget_and_learns_the_task():
    tok = CharTokenizer()
    train_set, eval_set = task_splits("sort", n_train=2000, n_eval=64, seed=0)
    max_len = TINY["max_position_embeddings"] - 1
    batches = Batches([encode_example(tok, p, c, max_len) for p, c in train_set], 16, tok.pad_token_id, seed=0)
    held_out = Batches([encode_example(tok, p, c, max_len) for p, c in eval_set], 64, tok.pad_token_id, seed=1)(0)
    base = Transformer(ModelConfig(vocab_size=tok.vocab_size, **TINY), seed=0)
    config = AdaLoraConfig(init_r=4, target_r=2, total_step=STEPS, tinit=6, tfinal=15, lora_alpha=32,
                           orth_reg_weight=0.1, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    model = get_lora_model(base, config)
    alloc = model.rankallocator
    assert (alloc.init_bgt, alloc.target_bgt) == (40, 20)  # 10 layers x init_r 4, x target_r 2

    kept_per_step = []
    hook = model.update_and_allocate

    def recording(step):  # the loop calls this after optimizer.step(); record what the allocator kept
        hook(step)
        pattern = config.rank_pattern
        kept_per_step.append((step, sum(map(sum, pattern.values())) if pattern else alloc.init_bgt))
    model.update_and_allocate = recording

    before = metrics(model, *held_out)
    history = train(model, AdamW(model.trainable_parameters(), lr=3e-2, weight_decay=0.0), batches,
                    TrainConfig(steps=STEPS, schedule="constant", progress=False))
    after = metrics(model, *held_out)

    assert [s for s, _ in kept_per_step] == list(range(STEPS))  # the loop itself called the hook every step
    for step, kept in kept_per_step:
        assert kept <= alloc.budget_schedule(step)[0]
    assert kept_per_step[6][1] == 40 and kept_per_step[20][1] < 40  # nothing pruned in warm-up, then pruning
    assert sum(model.kept_ranks().values()) == alloc.target_bgt == 20
    nonzero = sum(int(np.count_nonzero(m.lora_E["default"].numpy())) for _, m in model.svd_layers())
    assert nonzero == 20  # the final pattern is applied to E, not just recorded
    assert after[0] < before[0] - 0.1, (before, after)  # the pruned adapters still learn the task
    assert after[1] > before[1] + 0.15, (before, after)
    assert history.steps[-1]["loss"] < history.steps[0]["loss"]
