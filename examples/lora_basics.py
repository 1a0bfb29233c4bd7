"""LoRA in five steps: inject -> train a few steps -> merge -> same outputs -> save/load PEFT files.

The toy task: a frozen two-layer network must learn to imitate a "teacher" whose q_proj weight
differs from its own by a rank-2 change, which a rank-4 adapter can represent exactly.

    python examples/lora_basics.py
"""
import tempfile

import numpy as np

from minilora import backend, nn
from minilora.lora import LoraConfig, get_lora_model, load_adapter, save_adapter
from minilora.optim import AdamW
from minilora.tensor import Tensor, no_grad


class TinyNet(nn.Module):
    def __init__(self, seed=0, d=16):
        rng = backend.Random(seed)
        self.q_proj = nn.Linear(d, d, rng=rng)
        self.v_proj = nn.Linear(d, d, rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


def main(steps=150, seed=0):
    rng = np.random.default_rng(seed)
    teacher = TinyNet(seed)
    low_rank = rng.normal(size=(16, 2)) @ rng.normal(size=(2, 16)) * 0.3  # the change to learn
    teacher.q_proj.weight.data = teacher.q_proj.weight.data + low_rank.astype(np.float32)
    data = Tensor(rng.normal(size=(256, 16)).astype(np.float32))
    with no_grad():
        targets = teacher(data)

    # 1. inject: wrap q_proj and v_proj; only the adapters train
    model = get_lora_model(TinyNet(seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    print(model.trainable_parameters_summary())

    # 2. train a few steps
    optimizer = AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for step in range(steps):
        diff = model(data) - targets
        loss = (diff * diff).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 30 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {losses[-1]:.5f}")

    # 3. merge: W0 + (alpha / r) B A, then compare outputs
    with no_grad():
        adapted = model(data).numpy()
        model.merge_adapter()
        merged = model(data).numpy()
        model.unmerge_adapter()
        gap_merge = float(np.abs(merged - adapted).max())
        print(f"max |merged - unmerged| = {gap_merge:.2e}")

        # 4. save in PEFT's format and load into a fresh base model
        with tempfile.TemporaryDirectory() as folder:
            save_adapter(model, folder)
            reloaded = load_adapter(TinyNet(seed), folder)
            gap_reload = float(np.abs(reloaded(data).numpy() - adapted).max())
        print(f"max |reloaded - trained| = {gap_reload:.2e}")

        # 5. merge_and_unload: a plain TinyNet with the adapters folded in
        plain = model.merge_and_unload()
        gap_plain = float(np.abs(plain(data).numpy() - adapted).max())
        print(f"plain model: {type(plain.q_proj).__name__}, max |plain - trained| = {gap_plain:.2e}")
    return dict(first_loss=losses[0], last_loss=losses[-1], gap_merge=gap_merge, gap_reload=gap_reload,
                gap_plain=gap_plain)


if __name__ == "__main__":
    main()
