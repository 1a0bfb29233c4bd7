"""The ``minilora`` command (also ``python -m minilora``): argument parsing only; work lives in the library.

    minilora finetune   fine-tune SmolLM2-135M (or a GGUF / HF folder / tiny model) with LoRA, QLoRA, AdaLoRA
    minilora generate   generate text, optionally with an adapter, streaming tokens as they come
    minilora merge      merge an adapter into the base and write a Hugging Face checkpoint folder (and a GGUF)
    minilora info       architecture, parameter counts and memory of a model
    minilora verify     backend conformance report (every check, one row each)
    minilora tiny       train a small transformer from scratch on a generated task
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import MiniloraError


def _finetune(args) -> int:
    from .finetune import run_finetune
    from .finetune_config import FinetuneConfig
    flags = {k: v for k, v in vars(args).items() if k in FinetuneConfig.__dataclass_fields__ and v is not None}
    defaults = FinetuneConfig()
    given = {k: v for k, v in flags.items() if k in args.explicit or v != getattr(defaults, k)}
    cfg = FinetuneConfig.from_file(args.config, overrides=given) if args.config else FinetuneConfig(**flags)
    cfg.validate()  # before any heavy work
    run_finetune(cfg)
    return 0


def _generate(args) -> int:
    from .io.pretrained import load_pretrained
    from .models.generate import stream_generate
    model, tokenizer = load_pretrained(args.model)
    if args.adapter:
        from .lora import load_adapter
        model = load_adapter(model, args.adapter)
    text = args.prompt
    if args.chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    ids = tokenizer.encode(text)
    from .backend import Random
    emitted = []
    for tokens in stream_generate(model, [ids], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  rng=Random(args.seed), eos_token_id=tokenizer.eos_token_id):
        token = int(tokens[0])
        if token == tokenizer.eos_token_id:
            break
        previous = tokenizer.decode(emitted, skip_special_tokens=True)
        emitted.append(token)
        sys.stdout.write(tokenizer.decode(emitted, skip_special_tokens=True)[len(previous):])
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _merge(args) -> int:
    from .io.hf_checkpoint import save_hf_checkpoint
    from .io.pretrained import load_pretrained
    from .lora import load_adapter
    model, tokenizer = load_pretrained(args.model)
    merged = load_adapter(model, args.adapter).merge_and_unload(safe_merge=True)
    save_hf_checkpoint(args.out, merged)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(args.out)
    print(f"merged {args.adapter} into {args.model}; wrote {args.out}")
    if args.gguf:
        from .io.gguf_write import save_gguf
        from .io.pretrained import tokenizer_metadata
        save_gguf(args.gguf, merged.config, merged.state_dict(), tokenizer_meta=tokenizer_metadata(args.model),
                  qtype=args.gguf_type)
        print(f"wrote {args.gguf} ({args.gguf_type})")
    return 0


def _info(args) -> int:
    from .finetune import memory_line
    from .io.pretrained import load_pretrained
    model, _ = load_pretrained(args.model)
    c = model.config
    print(f"{args.model}: {c.style}-style decoder, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"heads {c.num_attention_heads} (kv {c.num_key_value_heads}), ffn {c.intermediate_size}, "
          f"vocab {c.vocab_size}, rope base {c.rope_theta:g}, tied embeddings {c.tie_word_embeddings}")
    print(f"parameters: {model.num_parameters():,}")
    print(memory_line(model))
    return 0


def _verify(args) -> int:
    from .verify import main as verify_main
    return verify_main(args)


def _tiny(args) -> int:
    from .tiny import train_tiny
    print(f"Training a tiny Llama-style transformer from scratch on the '{args.task}' task "
          f"({args.steps} steps, batch {args.batch_size}, lr {args.lr})")
    result = train_tiny(task=args.task, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, progress=not args.no_progress, log=print)
    steps = result["history"].steps
    before, after = result["before"], result["after"]
    print(f"loss: first step {steps[0]['loss']:.4f} -> last step {steps[-1]['loss']:.4f}")
    print(f"exact match on {after['n']} held-out prompts: before {before['exact_match']:.1%} -> "
          f"after {after['exact_match']:.1%}")
    for sample in after["samples"]:
        print(f"  {sample['prompt']!r} -> {sample['got']!r} (expected {sample['expected']!r})")
    if args.json:
        from .io.atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps({"before": before, "after": after,
                                                 "history": result["history"].to_dict()}, indent=2))
    return 0


class _Explicit(argparse.Action):
    """Store the value and remember that the flag was given (flags override a --config file)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.explicit = getattr(namespace, "explicit", set()) | {self.dest}


def _add_finetune(sub) -> None:
    from .finetune_config import DISTRIBUTED_MODES, FinetuneConfig
    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="fine-tune a model with LoRA, QLoRA or AdaLoRA",
                       description="Fine-tune a pretrained model on a generated task or your JSONL data. "
                                   "Defaults: SmolLM2-135M-Instruct, LoRA r=8 on q_proj,v_proj, the 'dates' task.")
    add = lambda flag, **kw: p.add_argument(flag, action=kw.pop("action", _Explicit), **kw)  # noqa: E731
    add("--model", default=d.model, help="smollm2-135m (default), a .gguf file, an HF folder, or tiny")
    add("--data", default=d.data, help="task (dates, units, sort, reverse) or a folder with train/valid.jsonl")
    add("--method", default=d.method, choices=["lora", "qlora", "adalora"])
    add("--r", type=int, default=d.r, help="LoRA rank (AdaLoRA: initial rank)")
    add("--alpha", type=float, default=d.alpha, help="LoRA alpha (scaling = alpha / r)")
    add("--dropout", type=float, default=d.dropout)
    add("--targets", default=d.targets, help="comma-separated module names, or all-linear")
    add("--rslora", action="store_true", help="scaling alpha / sqrt(r)")
    add("--loraplus-ratio", dest="loraplus_ratio", type=float, default=None, help="LoRA+: lr_B / lr_A")
    add("--steps", type=int, default=d.steps)
    add("--batch-size", dest="batch_size", type=int, default=d.batch_size)
    add("--lr", type=float, default=d.lr)
    add("--max-seq-len", dest="max_seq_len", type=int, default=d.max_seq_len)
    add("--grad-checkpoint", dest="grad_checkpoint", action="store_true", help="recompute blocks in backward")
    add("--backend", default=d.backend, choices=["numpy", "cupy", "array_api_strict"])
    add("--seed", type=int, default=d.seed)
    add("--out", default=d.out, help="output folder (adapter, history.json, loss.png, checkpoint)")
    add("--resume", action="store_true", help="continue from the checkpoint in --out")
    add("--save-every", dest="save_every", type=int, default=d.save_every, help="checkpoint every N steps")
    add("--eval-examples", dest="eval_examples", type=int, default=d.eval_examples)
    add("--target-r", dest="target_r", type=int, default=d.target_r, help="AdaLoRA: final average rank")
    add("--distributed", default=d.distributed, choices=DISTRIBUTED_MODES,
        help="data-parallel over MPI: auto (when mpiexec starts several processes), mpi, none")
    p.add_argument("--config", help="JSON or YAML file of the same settings (flags override it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="print lines, not a bar")
    p.set_defaults(func=_finetune, explicit=set())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilora", description=(
        "Parameter-efficient fine-tuning (LoRA, QLoRA, LoRA+, AdaLoRA) from scratch on NumPy."))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_finetune(sub)

    g = sub.add_parser("generate", help="generate text (streams tokens)")
    g.add_argument("prompt")
    g.add_argument("--model", default="smollm2-135m")
    g.add_argument("--adapter", help="a PEFT-format adapter folder to apply")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_generate)

    m = sub.add_parser("merge", help="merge an adapter and write an HF checkpoint folder")
    m.add_argument("--model", default="smollm2-135m")
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--gguf", help="also write the merged model as a GGUF file (llama.cpp, ollama)")
    m.add_argument("--gguf-type", default="F16", choices=["F32", "F16", "Q8_0"], help="GGUF weight type")
    m.set_defaults(func=_merge)

    i = sub.add_parser("info", help="architecture, parameter counts and memory")
    i.add_argument("--model", default="smollm2-135m")
    i.set_defaults(func=_info)

    v = sub.add_parser("verify", help="backend conformance report")
    v.add_argument("--backend", default="numpy", help="numpy | cupy | array_api_strict | all")
    v.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    v.add_argument("--examples", type=int, default=10, help="drawn examples per check")
    v.add_argument("--json", help="write the report to this file")
    v.set_defaults(func=_verify)

    t = sub.add_parser("tiny", help="train a small transformer from scratch on a generated task")
    t.add_argument("--task", default="sort", help="sort | reverse | dates | units (default: sort)")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", help="write before/after metrics and the history to this file")
    t.add_argument("--no-progress", action="store_true", help="print lines instead of a progress bar")
    t.set_defaults(func=_tiny)
    return parser


def main(argv=None) -> int:
    from .runtime import tune_allocator
    tune_allocator()  # reuse freed activation memory (MINILORA_MALLOC_TUNING=0 turns it off)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MiniloraError, ValueError, FileNotFoundError) as exc:
        print(f"minilora {args.command}: error: {exc}", file=sys.stderr)
        from .distributed import abort_peers
        abort_peers(2, getattr(args, "distributed", None))  # under mpiexec: end the other ranks too
        return 2


if __name__ == "__main__":
    sys.exit(main())
