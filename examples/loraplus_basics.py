"""LoRA+ in a few lines: B learns `ratio` times faster than A, and ratio 1 is plain LoRA exactly.

A frozen network must imitate a teacher that differs by a low-rank change. The same LoRA fine-tune
runs with plain AdamW and with LoRA+ groups (ratio 16); the script prints both loss curves, checks
that ratio 1 reproduces plain AdamW bit for bit, and shows the param groups.

    python examples/loraplus_basics.py
"""
import numpy as np

from minilora import backend, nn
from minilora.lora import LoraConfig, get_lora_model
from minilora.optim import AdamW, create_loraplus_optimizer, loraplus_param_groups
from minilora.tensor import Tensor, no_grad


class TinyNet(nn.Module):
    def __init__(self, seed=0, d=32):
        rng = backend.Random(seed)
        self.q_proj = nn.Linear(d, d, rng=rng)
        self.v_proj = nn.Linear(d, d, rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


def fine_tune(make_optimizer, data, targets, steps, seed=0):
    model = get_lora_model(TinyNet(seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                           seed=seed)
    optimizer = make_optimizer(model)
    losses = []
    for _ in range(steps):
        diff = model(data) - targets
        loss = (diff * diff).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def main(steps=100, lr=2e-3, ratio=16.0, seed=0):
    rng = np.random.default_rng(seed)
    teacher = TinyNet(seed)
    change = rng.normal(size=(32, 3)) @ rng.normal(size=(3, 32)) * 0.2  # rank 3
    teacher.q_proj.weight.data = teacher.q_proj.weight.data + change.astype(np.float32)
    data = Tensor(rng.normal(size=(256, 32)).astype(np.float32))
    with no_grad():
        targets = teacher(data)

    groups = loraplus_param_groups(get_lora_model(TinyNet(seed), LoraConfig(r=4, target_modules=["q_proj"])),
                                   lr=lr, loraplus_lr_ratio=ratio)
    for g in groups:
        print(f"group {g['name']:<10} lr={g['lr']:.1e}  {len(g['params'])} tensors")

    plain = lambda m: AdamW(m.trainable_parameters(), lr=lr, weight_decay=0.0)  # noqa: E731
    plus = lambda m: create_loraplus_optimizer(m, AdamW, lr=lr, loraplus_lr_ratio=ratio,  # noqa: E731
                                               weight_decay=0.0)
    same = lambda m: create_loraplus_optimizer(m, AdamW, lr=lr, loraplus_lr_ratio=1.0,  # noqa: E731
                                               loraplus_lr_embedding=lr, weight_decay=0.0)
    model_plain, loss_plain = fine_tune(plain, data, targets, steps, seed)
    _, loss_plus = fine_tune(plus, data, targets, steps, seed)
    model_same, loss_same = fine_tune(same, data, targets, steps, seed)
    identical = all(np.array_equal(a.data, b.data)
                    for a, b in zip(model_plain.trainable_parameters(), model_same.trainable_parameters()))
    for step in range(0, steps, max(steps // 5, 1)):
        print(f"step {step:4d}  plain LoRA {loss_plain[step]:.5f}   LoRA+ (ratio {ratio:g}) {loss_plus[step]:.5f}")
    print(f"final loss: plain {loss_plain[-1]:.5f}, LoRA+ {loss_plus[-1]:.5f}")
    print(f"ratio 1 reproduces plain AdamW bit for bit: {identical}")
    return {"plain": loss_plain, "plus": loss_plus, "identical": identical}


if __name__ == "__main__":
    main()
