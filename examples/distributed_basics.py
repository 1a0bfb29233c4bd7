"""Data-parallel LoRA in your own script: N processes, one global batch, identical adapters.

    mpiexec -n 2 python examples/distributed_basics.py      (one process works too: python examples/...)

Every rank builds the same model and adapters (same seed), checks that by hash, takes its rows of each
global batch (``dp.shard``) and trains with ``train(..., data_parallel=dp)``: after backward the
adapters' gradients are summed over the ranks and divided by the global count of trained tokens, so
each rank takes the step one process would take on the whole batch. Rank 0 prints and saves; at the
end every rank's adapter hash is gathered to show they are the same.
"""
import os
import sys
import tempfile

from minilora import backend
from minilora.data import Batches, CharTokenizer, encode_example, task_splits
from minilora.distributed import model_digests, start_data_parallel
from minilora.lora import LoraConfig, get_lora_model, save_adapter
from minilora.models import ModelConfig, Transformer
from minilora.optim import AdamW
from minilora.train import TrainConfig, train


def main(steps=8, batch_size=6, out=None):
    dp = start_data_parallel("mpi", batch_size=batch_size)  # MPI_COMM_WORLD; the batch must divide by it
    tokenizer = CharTokenizer()
    with backend.use_backend("numpy"):
        model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, style="llama", hidden_size=32,
                                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=128), seed=0)
        model = get_lora_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), seed=0)
        optimizer = AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
        dp.check_identical(model, optimizer)  # same base, adapters and optimizer on every rank, or stop
        train_set, _ = task_splits("dates", n_train=200, n_eval=1, seed=0)
        encoded = [encode_example(tokenizer, p, c, 64) for p, c in train_set]
        batches = Batches(encoded, batch_size, tokenizer.pad_token_id or 0, seed=0)  # the global batches
        history = train(model, optimizer, dp.shard(batches), TrainConfig(steps=steps, warmup_steps=1, progress=False),
                        data_parallel=dp)
        same = dp.communicator.allgather_bytes(model_digests(model, frozen=False)["trainable parameters"])
        if dp.is_main:
            print(f"{dp.size} rank(s), {batch_size // dp.size} rows each of every batch of {batch_size}")
            print("loss per step (global mean): " + " ".join(f"{r['loss']:.4f}" for r in history.steps))
            print(f"adapter hash on every rank: {sorted({d.hex()[:16] for d in same})}")
            out = out or tempfile.mkdtemp()
            save_adapter(model, os.path.join(out, "adapter"))  # rank 0 alone writes
            print(f"rank 0 wrote {out}/adapter")
        dp.finish()
    return {"ranks": dp.size, "losses": [r["loss"] for r in history.steps], "hashes": [d.hex() for d in same]}


if __name__ == "__main__":
    main(out=sys.argv[1] if len(sys.argv) > 1 else None)
