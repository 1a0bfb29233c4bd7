"""The ``minilora`` command (also ``python -m minilora``): argument parsing only; work lives in the library.

    minilora finetune   fine-tune SmolLM2-135M (or a GGUF / HF folder / tiny model) with LoRA, QLoRA, AdaLoRA
    minilora generate   generate text, optionally with an adapter, streaming tokens as they come
    minilora eval       mean NLL and perplexity of a model (and adapter) on a text file, JSONL split or task
    minilora merge      merge an adapter into the base and write a Hugging Face checkpoint folder (and a GGUF)
    minilora info       architecture, parameter counts and memory of a model
    minilora verify     backend conformance report (every check, one row each)
    minilora tiny       train a small transformer from scratch on a generated task
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import MiniloraError


def _finetune(args) -> int:
    from .finetune import run_finetune
    from .finetune_config import FinetuneConfig
    # Flags default to argparse.SUPPRESS, so vars(args) holds exactly the flags given: they override --config.
    given = {k: v for k, v in vars(args).items() if k in FinetuneConfig.__dataclass_fields__}
    config = getattr(args, "config", None)
    cfg = FinetuneConfig.from_file(config, overrides=given) if config else FinetuneConfig(**given)
    cfg.validate()  # before any heavy work
    run_finetune(cfg)
    return 0


def _eval(args) -> int:
    from .backend import use_backend
    from .data import in_order
    from .errors import ConfigError
    from .evaluate import check_eval_source, encode_eval_source, mean_nll
    from .finetune import model_and_tokenizer
    from .io.atomic import write_text_atomic
    from .lora import load_adapter
    for name in ("max_seq_len", "batch_size", "eval_examples") + (("max_batches",) if args.max_batches else ()):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    check_eval_source(args.data, args.split)  # before the model loads
    if args.adapter and not os.path.isdir(args.adapter):
        raise ConfigError(f"--adapter {args.adapter!r} is not a folder")
    with use_backend(args.backend):
        model, tokenizer = model_and_tokenizer(args.model, args.seed)
        encoded = encode_eval_source(args.data, tokenizer, args.max_seq_len, args.split, not args.no_mask_prompt,
                                     args.eval_examples, args.seed)
        batches = in_order(encoded, args.batch_size, getattr(tokenizer, "pad_token_id", None) or 0, args.max_batches)
        results = {"base": mean_nll(model, batches)}
        if args.adapter:
            results["adapter"] = mean_nll(load_adapter(model, args.adapter), batches)
    for label, r in results.items():
        name = args.model if label == "base" else f"{args.model} + {args.adapter}"
        print(f"{name}: mean NLL {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f} "
              f"({r['tokens']:,} tokens of {args.data})")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2))
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


def _add_finetune(sub) -> None:
    from .backend import BACKENDS
    from .finetune_config import DEFAULT_STEPS, DISTRIBUTED_MODES, LR_SCHEDULES, METHODS, OPTIMIZERS, FinetuneConfig
    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="fine-tune a model with LoRA, QLoRA or AdaLoRA",
                       argument_default=argparse.SUPPRESS,  # unset flags stay out of vars(args)
                       description="Fine-tune a pretrained model on a generated task or your JSONL data. "
                                   "Defaults: SmolLM2-135M-Instruct, LoRA r=8 on q_proj,v_proj, the 'dates' task.")

    def add(flag, help=None, **kw):
        default = getattr(d, flag[2:].replace("-", "_"), None)
        if kw.get("action") is None and default is not None:
            help = f"{help} (default: {default})" if help else f"default: {default}"
        p.add_argument(flag, help=help, **kw)
    add("--model", help="smollm2-135m, a .gguf file, an HF folder, or tiny")
    add("--data", help="task (dates, units, sort, reverse) or a folder with train/valid[/test].jsonl")
    add("--method", choices=METHODS)
    add("--r", type=int, help="LoRA rank (AdaLoRA: initial rank)")
    add("--alpha", type=float, help="LoRA alpha (scaling = alpha / r)")
    add("--dropout", type=float)
    add("--targets", help="comma-separated module names, or all-linear")
    add("--rslora", action="store_true", help="scaling alpha / sqrt(r)")
    add("--dora", action="store_true", help="DoRA: weight-decomposed LoRA (lora, qlora)")
    add("--init", help="adapter init: default, gaussian, pissa, pissa_niter_K, olora, loftq (qlora)")
    add("--loraplus-ratio", dest="loraplus_ratio", type=float, help="LoRA+: lr_B / lr_A")
    add("--steps", type=int, help=f"optimizer steps (default: {DEFAULT_STEPS}; or give --epochs)")
    add("--epochs", type=float, help="passes over the training set, instead of --steps")
    add("--batch-size", dest="batch_size", type=int, help="examples per micro-batch")
    add("--grad-accumulation-steps", dest="grad_accumulation_steps", type=int,
        help="micro-batches per optimizer step")
    add("--lr", type=float)
    add("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES, help="after a linear warmup")
    add("--warmup-steps", dest="warmup_steps", type=int)
    add("--optimizer", choices=OPTIMIZERS, help="sgd: momentum 0.9")
    add("--weight-decay", dest="weight_decay", type=float)
    add("--no-mask-prompt", dest="mask_prompt", action="store_false", help="train on the prompt tokens too")
    add("--max-seq-len", dest="max_seq_len", type=int)
    add("--grad-checkpoint", dest="grad_checkpoint", action="store_true", help="recompute blocks in backward")
    add("--backend", choices=BACKENDS)
    add("--seed", type=int)
    add("--out", help="output folder (adapter, history.json, summary.json, loss.png, checkpoint)")
    add("--resume", action="store_true", help="continue from the checkpoint in --out")
    add("--save-every", dest="save_every", type=int, help="checkpoint every N steps")
    add("--eval-examples", dest="eval_examples", type=int, help="held-out examples for exact match")
    add("--eval-every", dest="eval_every", type=int,
        help="validation loss every N steps (default: about 10 times a run; 0: at the end only)")
    add("--val-batches", dest="val_batches", type=int, help="at most this many validation batches (default: all)")
    add("--test", action="store_true", help="report the loss and perplexity on the data folder's test.jsonl")
    add("--target-r", dest="target_r", type=int, help="AdaLoRA: final average rank")
    add("--distributed", choices=DISTRIBUTED_MODES, help="data-parallel over MPI: auto (when mpiexec starts "
        "several processes), mpi, none")
    add("--config", help="JSON or YAML file of the same settings (flags override it)")
    add("--no-progress", dest="progress", action="store_false", help="print lines, not a bar")
    p.set_defaults(func=_finetune)


def build_parser() -> argparse.ArgumentParser:
    from .backend import BACKENDS
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

    e = sub.add_parser("eval", help="mean NLL and perplexity on a text file, a JSONL split or a task",
                       description="Mean negative log-likelihood per scored token and its perplexity: every "
                                   "token of a text file, the completion tokens of a JSONL folder's split or of a "
                                   "task's held-out examples; with --adapter, before and after applying it.")
    e.add_argument("--data", required=True, help="a text file, a folder with valid.jsonl/test.jsonl, or a task")
    e.add_argument("--model", default="smollm2-135m", help="smollm2-135m, a .gguf file, an HF folder, or tiny")
    e.add_argument("--adapter", help="a PEFT-format adapter folder: report the loss with it as well")
    e.add_argument("--split", default="valid", choices=["valid", "test"], help="JSONL folder: which split")
    e.add_argument("--max-seq-len", type=int, default=128, help="tokens per example or text window")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-batches", type=int, default=None, help="score at most this many batches")
    e.add_argument("--eval-examples", type=int, default=50, help="task: held-out examples (as finetune)")
    e.add_argument("--no-mask-prompt", action="store_true", help="JSONL/task: score the prompt tokens too")
    e.add_argument("--backend", default="numpy", choices=BACKENDS)
    e.add_argument("--seed", type=int, default=0, help="task examples (as finetune's --seed); tiny model init")
    e.add_argument("--json", help="write the results to this file")
    e.set_defaults(func=_eval)

    i = sub.add_parser("info", help="architecture, parameter counts and memory")
    i.add_argument("--model", default="smollm2-135m")
    i.set_defaults(func=_info)

    v = sub.add_parser("verify", help="backend conformance report")
    v.add_argument("--backend", default="numpy", help=" | ".join(BACKENDS + ("all",)))
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
        abort_peers(2, getattr(args, "distributed", "auto"))  # under mpiexec: end the other ranks too
        return 2


if __name__ == "__main__":
    sys.exit(main())
