"""Data: generated tasks, tokenization of examples, deterministic batches."""
from .batching import IGNORE_INDEX, Batches, collate, encode_example, in_order, text_windows
from .char_tokenizer import CharTokenizer
from .jsonl import load_jsonl_folder, read_jsonl, read_split
from .tasks import TASKS, task_splits

__all__ = ["TASKS", "task_splits", "CharTokenizer", "encode_example", "collate", "Batches", "IGNORE_INDEX",
           "read_jsonl", "read_split", "load_jsonl_folder", "in_order", "text_windows"]
