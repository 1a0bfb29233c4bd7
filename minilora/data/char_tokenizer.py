"""A character-level tokenizer for the tiny models trained from scratch (printable ASCII + 3 specials)."""
from __future__ import annotations

import string

_CHARS = string.printable


class CharTokenizer:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self):
        self._to_id = {c: i + 3 for i, c in enumerate(_CHARS)}
        self._to_char = {i: c for c, i in self._to_id.items()}

    @property
    def vocab_size(self) -> int:
        return len(_CHARS) + 3

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        bad = sorted({c for c in text if c not in self._to_id})
        if bad:
            raise ValueError(f"CharTokenizer: characters outside printable ASCII: {bad!r}")
        ids = [self._to_id[c] for c in text]
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(self._to_char.get(int(i), "") for i in ids if int(i) > 2 or not skip_special_tokens)
