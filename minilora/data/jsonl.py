"""User data in the format mlx-lm users already have: a folder with train.jsonl and valid.jsonl.

Each line is one JSON object in one of three shapes:
    {"prompt": "...", "completion": "..."}      loss on the completion only (by default)
    {"messages": [{"role": ..., "content": ...}, ...]}
                                                chat: the prompt is the chat template applied to every
                                                message before the last assistant one; the completion is
                                                that assistant message (loss on it only)
    {"text": "..."}                             plain text: loss on every token
Every example becomes (prompt, completion); "text" gives an empty prompt. A bad line raises a
DataError naming the file and the line number. ``check_jsonl_folder`` runs the same checks without a
tokenizer, so a bad line is found before a model is loaded.
"""
from __future__ import annotations

import json
import os

from ..errors import DataError, MissingFileError

SPLITS = {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}  # test: optional


def _example(obj, path, line_no, tokenizer, check_only=False):
    where = f"{path}:{line_no}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj or "completion" in obj:
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(f"{where}: 'prompt' and 'completion' must both be strings")
        return prompt, completion
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} strings")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must have role 'assistant' (it is what the model learns)")
        if check_only:
            return None
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise DataError(f"{where}: chat examples need a tokenizer with a chat template")
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
        return prompt, messages[-1]["content"]
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise DataError(f"{where}: 'text' must be a string")
        return "", obj["text"]
    raise DataError(f"{where}: expected keys 'prompt'+'completion', 'messages' or 'text', got {sorted(obj)}")


def read_jsonl(path, tokenizer=None, check_only=False) -> list:
    """(prompt, completion) pairs of one .jsonl file (blank lines are skipped; a leading BOM is allowed).

    check_only: validate every line's shape without a tokenizer (chat examples give None).
    """
    if not os.path.isfile(path):
        raise MissingFileError(path, "data file")
    examples = []
    with open(path, "rb") as f:
        raw_lines = list(f)
    for line_no, raw in enumerate(raw_lines, start=1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
        except RecursionError:
            raise DataError(f"{path}:{line_no}: JSON nested too deeply") from None
        examples.append(_example(obj, path, line_no, tokenizer, check_only))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def load_jsonl_folder(folder, tokenizer=None, check_only=False) -> tuple[list, list]:
    """(train, valid) example lists from ``folder``/train.jsonl and ``folder``/valid.jsonl."""
    if not os.path.isdir(folder):
        raise MissingFileError(folder, "data folder")
    return read_split(folder, "train", tokenizer, check_only), read_split(folder, "valid", tokenizer, check_only)


def read_split(folder, split: str, tokenizer=None, check_only=False) -> list:
    """(prompt, completion) pairs of ``folder``/<split>.jsonl (split: train, valid or test)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return read_jsonl(os.path.join(folder, SPLITS[split]), tokenizer, check_only)


def check_jsonl_folder(folder, test: bool = False) -> None:
    """Raise MissingFileError / DataError (file and line) for a data folder before any model is loaded;
    test: check test.jsonl too."""
    load_jsonl_folder(folder, tokenizer=None, check_only=True)
    if test:
        read_split(folder, "test", check_only=True)
