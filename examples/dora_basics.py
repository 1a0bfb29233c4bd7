"""DoRA in five steps: inject (== base at init) -> train -> merge -> PEFT files -> one adapter per row.

The toy task: a frozen layer must imitate a "teacher" whose weight is its own plus a rank-2 change,
with every output row rescaled: W_t = diag(c) (W + L). DoRA's magnitude vector m represents diag(c)
exactly; plain LoRA at the same rank cannot (diag(c) W - W has full rank), so DoRA ends far lower.

    python examples/dora_basics.py
"""
import tempfile

import numpy as np

from minilora import backend, nn
from minilora.lora import LoraConfig, adapter_state_dict, get_lora_model, load_adapter, save_adapter
from minilora.optim import AdamW
from minilora.tensor import Tensor, no_grad


class TinyNet(nn.Module):
    def __init__(self, seed=0, d=16):
        self.proj = nn.Linear(d, d, rng=backend.Random(seed))

    def forward(self, x):
        return self.proj(x)


def train(model, data, targets, steps):
    optimizer = AdamW(model.trainable_parameters(), lr=2e-2, weight_decay=0.0)
    for _ in range(steps):
        diff = model(data) - targets
        loss = (diff * diff).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def main(steps=300, seed=0):
    rng = np.random.default_rng(seed)
    teacher = TinyNet(seed)
    change = rng.normal(size=(16, 2)) @ rng.normal(size=(2, 16)) * 0.1
    rows = 1.0 + 0.5 * rng.uniform(-1, 1, size=(16, 1))  # diag(c): a magnitude per output row
    teacher.proj.weight.data = (rows * (teacher.proj.weight.data + change)).astype(np.float32)
    data = Tensor(rng.normal(size=(256, 16)).astype(np.float32))
    with no_grad():
        targets, base_out = teacher(data), TinyNet(seed)(data)

    # 1. inject: at init DoRA is the base, bit for bit (m = ||W0||_c, B = 0)
    config = dict(r=2, lora_alpha=4, target_modules=["proj"])
    model = get_lora_model(TinyNet(seed), LoraConfig(use_dora=True, **config))
    print(model.trainable_parameters_summary())
    with no_grad():
        at_init = float(np.abs(model(data).numpy() - base_out.numpy()).max())
    print(f"max |DoRA at init - base|      = {at_init}")

    # 2. train DoRA, and plain LoRA at the same rank for comparison
    dora_loss = train(model, data, targets, steps)
    lora_loss = train(get_lora_model(TinyNet(seed), LoraConfig(**config)), data, targets, steps)
    print(f"loss after {steps} steps: DoRA {dora_loss:.2e}, LoRA {lora_loss:.2e}")

    # 3. merge: W0 <- (m / n) (W0 + s B A); the outputs do not move
    with no_grad():
        unmerged = model(data).numpy()
        model.merge_adapter()
        gap_merge = float(np.abs(model(data).numpy() - unmerged).max())
        model.unmerge_adapter()
    print(f"max |merged - unmerged|        = {gap_merge:.2e}")

    # 4. PEFT's files: lora_A, lora_B and lora_magnitude_vector; reload gives the same outputs
    with tempfile.TemporaryDirectory() as folder:
        save_adapter(model, folder)
        reloaded = load_adapter(TinyNet(seed), folder)
        with no_grad():
            gap_reload = float(np.abs(reloaded(data).numpy() - unmerged).max())
    print("saved keys:", sorted(adapter_state_dict(model)))

    # 5. one adapter per row: row 0 with DoRA, row 1 without any adapter
    with no_grad():
        mixed = model(data[:2], adapter_names=["default", "__base__"]).numpy()
    gap_rows = max(float(np.abs(mixed[0] - unmerged[0]).max()), float(np.abs(mixed[1] - base_out.numpy()[1]).max()))
    print(f"max |mixed batch - row alone|  = {gap_rows:.2e}")
    return dict(at_init=at_init, dora_loss=dora_loss, lora_loss=lora_loss, gap_merge=gap_merge,
                gap_reload=gap_reload, gap_rows=gap_rows)


if __name__ == "__main__":
    main()
