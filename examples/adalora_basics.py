"""AdaLoRA in five steps: inject -> train (the loop prunes ranks) -> see where rank went -> save/load
PEFT files (a layer pruned to rank 0 included) -> convert to plain LoRA with the same outputs.

The toy task: a tiny random transformer learns the "sort" task (sort the digits of a number) through
AdaLoRA adapters that start at rank 4 and end at an average rank of 2.

    python examples/adalora_basics.py [--plot ranks.png]
"""
import argparse
import tempfile

import numpy as np

from minilora.data import Batches, CharTokenizer, encode_example, task_splits
from minilora.lora import get_lora_model
from minilora.lora.adalora import AdaLoraConfig, load_adalora_adapter, plot_rank_pattern, save_adalora_adapter, to_lora
from minilora.models.config import ModelConfig
from minilora.models.transformer import Transformer, lm_loss
from minilora.optim import AdamW
from minilora.tensor import no_grad
from minilora.train import TrainConfig, train

TINY = dict(style="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, rope_theta=1000.0)


def main(steps=60, plot=None, seed=0):
    tok = CharTokenizer()
    train_set, eval_set = task_splits("sort", n_train=2000, n_eval=64, seed=seed)
    batches = Batches([encode_example(tok, p, c, 31) for p, c in train_set], 16, tok.pad_token_id, seed=seed)
    ids, labels = Batches([encode_example(tok, p, c, 31) for p, c in eval_set], 64, tok.pad_token_id, seed=1)(0)

    def base():
        return Transformer(ModelConfig(vocab_size=tok.vocab_size, **TINY), seed=seed)

    def evaluate(m):
        with no_grad():
            return float(lm_loss(m, ids, labels).item())

    # 1. inject SVD-form adapters P diag(E) Q at rank 4 into five projections per layer
    config = AdaLoraConfig(init_r=4, target_r=2, total_step=steps, tinit=steps // 10, tfinal=steps // 4,
                           lora_alpha=32, orth_reg_weight=0.1,
                           target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    model = get_lora_model(base(), config)
    print(model.trainable_parameters_summary())

    # 2. train: the loop adds the orthogonal penalty and calls model.update_and_allocate(step) itself
    before = evaluate(model)
    train(model, AdamW(model.trainable_parameters(), lr=3e-2, weight_decay=0.0), batches,
          TrainConfig(steps=steps, schedule="constant", progress=False))
    after = evaluate(model)
    print(f"held-out loss {before:.3f} -> {after:.3f}")

    # 3. where did the rank go? (budget: 10 layers x 2 = 20 triplets)
    ranks = model.kept_ranks()
    for path, r in ranks.items():
        print(f"  {path:32s} rank {r}")
    print(f"kept {sum(ranks.values())} of {model.rankallocator.init_bgt} triplets")
    if plot:
        plot_rank_pattern(model, plot)

    # 4. save in PEFT's AdaLoRA format and load into a fresh base (each layer at its kept rank)
    with no_grad():
        trained = model(ids).numpy()
    with tempfile.TemporaryDirectory() as folder:
        save_adalora_adapter(model, folder)
        with no_grad():
            gap_reload = float(np.abs(load_adalora_adapter(base(), folder)(ids).numpy() - trained).max())
    print(f"max |reloaded - trained| = {gap_reload:.2e}")

    # 5. plain LoRA with per-module ranks: the same function
    lora = to_lora(model)
    with no_grad():
        gap_lora = float(np.abs(lora(ids).numpy() - trained).max())
    print(f"max |LoRA - AdaLoRA| = {gap_lora:.2e}")
    return dict(before=before, after=after, ranks=ranks, target=model.rankallocator.target_bgt,
                gap_reload=gap_reload, gap_lora=gap_lora)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", help="save the rank heatmap to this image file")
    main(plot=parser.parse_args().plot)
