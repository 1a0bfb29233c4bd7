"""QLoRA in five steps: quantize the base to NF4 -> inject LoRA -> train -> memory -> two merges.

The toy task: a frozen network whose layers are stored in 4 bits must imitate a float "teacher"
whose q_proj differs by a rank-2 change. The adapters (float32) learn the change on top of the
4-bit base; the base never gets a gradient and is dequantized on the fly.

    python examples/qlora_basics.py
"""
import warnings

import numpy as np

from minilora import backend, nn
from minilora.lora import LoraConfig, get_lora_model
from minilora.optim import AdamW
from minilora.quant import model_memory_report, quantize_4bit, quantize_model
from minilora.tensor import Tensor, no_grad


class TinyNet(nn.Module):
    def __init__(self, seed=0, d=128):
        rng = backend.Random(seed)
        self.q_proj = nn.Linear(d, d, rng=rng)
        self.v_proj = nn.Linear(d, d, rng=rng)

    def forward(self, x):
        return self.v_proj(self.q_proj(x).tanh())


def main(steps=200, seed=0):
    rng = np.random.default_rng(seed)
    teacher = TinyNet(seed)
    low_rank = rng.normal(size=(128, 2)) @ rng.normal(size=(2, 128)) * 0.02  # the change to learn
    teacher.q_proj.weight.data = teacher.q_proj.weight.data + low_rank.astype(np.float32)
    data = Tensor(rng.normal(size=(256, 128)).astype(np.float32))
    with no_grad():
        targets = teacher(data)

    # 1. the bytes: quantize_4bit gives bitsandbytes' packed NF4 format
    packed, state = quantize_4bit(teacher.v_proj.weight.data, blocksize=64, quant_type="nf4", double_quant=True)
    print(f"v_proj: {packed.nbytes} packed bytes, first bytes {packed[:4].tobytes().hex()}, "
          f"absmax stored as {state.absmax.dtype} (double quantization), offset {state.offset:.4f}")

    # 2. quantize the student's Linear layers, then wrap q_proj and v_proj with adapters: QLoRA
    student = TinyNet(seed)
    print("quantized:", quantize_model(student, quant_type="nf4", blocksize=64, double_quant=True))
    model = get_lora_model(student, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    print(model.trainable_parameters_summary())

    # 3. train the adapters on top of the frozen 4-bit base
    optimizer = AdamW(model.trainable_parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(steps):
        diff = model(data) - targets
        loss = (diff * diff).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {losses[-1]:.6f}")

    # 4. memory: about 4.13 bits per quantized parameter
    report = model_memory_report(model)
    for path, layer in report["quantized_layers"].items():
        print(f"{path}: {layer['bits_per_param']:.3f} bits/param {layer['bytes']}")

    # 5. merges: exact float merge, or re-quantized with a report of what survived
    with no_grad():
        adapted = model(data).numpy()
        trained = {n: p.data for n, p in model.named_parameters()}
        float_model = model.merge_and_unload()  # float weights dequant(W4) + scaling B A
        gap_float = float(np.abs(float_model(data).numpy() - adapted).max())
        print(f"float merge: {type(float_model.q_proj).__name__}, max |merged - unmerged| = {gap_float:.2e}")

        again = get_lora_model(quantize_model_copy(seed), LoraConfig(r=4, lora_alpha=8,
                                                                     target_modules=["q_proj", "v_proj"]))
        for n, p in again.named_parameters():
            p.data = trained[n]  # the same adapters on a fresh 4-bit copy of the base
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, requant = again.merge_and_unload(requantize=True)
        for path, row in requant.items():
            print(f"requantized {path}: relative error {row['relative_error']:.4f}, "
                  f"update cosine {row['update_cosine']:.3f}, norm ratio {row['update_norm_ratio']:.3f}")
        print(f"warnings: {len(caught)}")
    return dict(first_loss=losses[0], last_loss=losses[-1], gap_float=gap_float, requant=requant,
                bits=[v["bits_per_param"] for v in report["quantized_layers"].values()], warnings=len(caught))


def quantize_model_copy(seed):
    student = TinyNet(seed)
    quantize_model(student)
    return student


if __name__ == "__main__":
    main()
