"""Byte-level BPE tokenizer built from a GGUF file's own vocabulary, merges and chat template.

The ``tokenizers`` package runs the BPE. What this module decides is how the pieces fit, following
llama.cpp's reading of the same metadata (``tokenizer.ggml.model == "gpt2"``):

- vocabulary: ``tokenizer.ggml.tokens`` (id = position), merges: ``tokenizer.ggml.merges`` ("a b"
  strings, rank = position), both written in GPT-2's byte-to-unicode alphabet (space = "Ġ").
- pre-tokenizer: GPT-2's split regex (``'s|'t|...| ?\\p{L}+| ?\\p{N}+|...``) applied by
  ``ByteLevel(use_regex=True)``; for ``tokenizer.ggml.pre == "smollm"`` (and the other types that
  llama.cpp treats the same way) digits are first split one per piece, as SmolLM2's own tokenizer does.
- special tokens: ids whose ``tokenizer.ggml.token_type`` is 3 (control) or 4 (user-defined) are
  matched whole in the input text and never split.
- chat template: ChatML, ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; when the GGUF template
  inserts a default system prompt for conversations without one, ``apply_chat_template`` does too.
"""
from __future__ import annotations

import json
import os
import re

from ..errors import DependencyError, FileFormatError, MissingFileError
from .atomic import write_text_atomic
from .files import read_json_object

CONTROL, USER_DEFINED = 3, 4
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
# llama.cpp pre-tokenizer types that split every digit before the GPT-2 regex.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_DEFAULT_SYSTEM_RE = re.compile(
    r"\{\{\s*'<\|im_start\|>system\n(?P<prompt>.*?)<\|im_end\|>\n'\s*\}\}", re.DOTALL)


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DependencyError("the tokenizer needs the `tokenizers` package: pip install tokenizers "
                              "(or pip install minilora[models])") from None
    return tokenizers


class Tokenizer:
    """encode/decode text, the model's special ids, and its chat template.

    Build with ``Tokenizer.from_gguf(path)``, ``Tokenizer.from_gguf_metadata(meta)`` or
    ``Tokenizer.from_pretrained(folder)`` (a folder written by ``save_pretrained``).
    """

    def __init__(self, backend_tokenizer, special_ids=(), bos_token_id=None, eos_token_id=None,
                 pad_token_id=None, chat_template: str | None = None):
        self._tk = backend_tokenizer
        size = backend_tokenizer.get_vocab_size(with_added_tokens=True)
        self.vocab = [backend_tokenizer.id_to_token(i) for i in range(size)]
        self.special_ids = set(special_ids)
        self.special_tokens = [self.vocab[i] for i in sorted(self.special_ids)]
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.chat_template = chat_template
        match = _DEFAULT_SYSTEM_RE.search(chat_template or "")
        self.default_system_prompt = match.group("prompt") if match else None

    @classmethod
    def from_vocab(cls, vocab: list, merges: list, token_types=None, bos_token_id=None, eos_token_id=None,
                   pad_token_id=None, chat_template: str | None = None, pre: str | None = None,
                   source=None) -> "Tokenizer":
        """Byte-level BPE from a vocabulary (id = position), merges ("a b", rank = position) and token types."""
        tk = _tokenizers()
        if not vocab:
            raise FileFormatError(source, "the tokenizer vocabulary is empty")
        token_to_id = {}
        for i, token in enumerate(vocab):
            if not isinstance(token, str):
                raise FileFormatError(source, f"tokenizer token {i} is not a string")
            token_to_id.setdefault(token, i)
        if len(token_to_id) != len(vocab):
            raise FileFormatError(source, "the tokenizer vocabulary has duplicate tokens")
        pairs = []
        for i, merge in enumerate(merges):
            parts = merge.split(" ") if isinstance(merge, str) else []
            if len(parts) != 2 or parts[0] not in token_to_id or parts[1] not in token_to_id:
                raise FileFormatError(source, f"tokenizer merge {i} ({merge!r}) is not two known tokens")
            pairs.append((parts[0], parts[1]))
        token_types = list(token_types) if token_types is not None else [1] * len(vocab)
        if len(token_types) != len(vocab):
            raise FileFormatError(source, f"{len(token_types)} token types for {len(vocab)} tokens")
        for name, value in (("bos", bos_token_id), ("eos", eos_token_id), ("pad", pad_token_id)):
            if value is not None and not (isinstance(value, int) and 0 <= value < len(vocab)):
                raise FileFormatError(source, f"{name} token id {value!r} is outside the vocabulary of {len(vocab)}")
        try:
            backend_tokenizer = tk.Tokenizer(tk.models.BPE(token_to_id, pairs, fuse_unk=False))
        except Exception as exc:
            raise FileFormatError(source, f"the tokenizer vocabulary and merges are inconsistent: {exc}") from None
        byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in _DIGIT_SPLIT_PRE:
            backend_tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
                [tk.pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            backend_tokenizer.pre_tokenizer = byte_level
        backend_tokenizer.decoder = tk.decoders.ByteLevel()
        special_ids = [i for i, t in enumerate(token_types) if t in (CONTROL, USER_DEFINED)]
        backend_tokenizer.add_special_tokens([tk.AddedToken(vocab[i], special=True, normalized=False)
                                              for i in special_ids])
        return cls(backend_tokenizer, special_ids, bos_token_id, eos_token_id, pad_token_id, chat_template)

    @classmethod
    def from_gguf_metadata(cls, meta: dict, source=None) -> "Tokenizer":
        """Build from the ``tokenizer.*`` metadata of a GGUF file (see ``load_gguf``)."""
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise FileFormatError(source, f"tokenizer model {model!r} is not supported (minilora reads "
                                          "byte-level BPE, tokenizer.ggml.model = 'gpt2')")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if not isinstance(meta.get(key), list):
                raise FileFormatError(source, f"metadata {key!r} is missing or not a list")
        return cls.from_vocab(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"],
                              token_types=meta.get("tokenizer.ggml.token_type"),
                              bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                              eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
                              pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
                              chat_template=meta.get("tokenizer.chat_template"),
                              pre=meta.get("tokenizer.ggml.pre"), source=source)

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        """Read only the metadata of a GGUF file (no tensor is dequantized) and build its tokenizer."""
        from .gguf import read_gguf

        _, meta = read_gguf(path)
        return cls.from_gguf_metadata(meta, source=path)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> token ids. Special tokens written in ``text`` (e.g. "<|im_end|>") map to their ids.

        add_special_tokens: prepend bos (SmolLM2 itself does not; its chat template marks turns).
        """
        if not isinstance(text, str):
            raise ValueError(f"Tokenizer.encode: text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"Tokenizer.encode: text has a lone surrogate {text[exc.start]!r} at position "
                             f"{exc.start}, which UTF-8 cannot encode") from None
        ids = self._tk.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Token ids -> text; bytes that do not form valid UTF-8 on their own decode to U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.vocab)]
        if bad:
            raise ValueError(f"Tokenizer.decode: ids {bad[:5]} are outside the vocabulary of {len(self.vocab)}")
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        return self.vocab[token_id]

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True) -> str:
        """ChatML text for ``messages`` [{"role": ..., "content": ...}], as the model's template renders it.

        A conversation whose first message is not "system" gets the template's default system
        prompt (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face").
        add_generation_prompt appends "<|im_start|>assistant\\n" so the model answers next.
        """
        if not isinstance(messages, (list, tuple)):
            raise ValueError("apply_chat_template: messages must be a list of {'role', 'content'} dicts")
        parts = []
        for i, message in enumerate(messages):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise ValueError(f"apply_chat_template: messages[{i}] must be a dict with str 'role' and 'content'")
            if i == 0 and message["role"] != "system" and self.default_system_prompt is not None:
                parts.append(f"<|im_start|>system\n{self.default_system_prompt}<|im_end|>\n")
            parts.append(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_chat(self, messages: list, add_generation_prompt: bool = True) -> list[int]:
        """``encode(apply_chat_template(messages))``."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))

    # ------------------------------------------------------------ Hugging Face folder form

    def save_pretrained(self, folder) -> None:
        """Write tokenizer.json (the ``tokenizers`` format) and tokenizer_config.json to ``folder``, atomically."""
        os.makedirs(folder, exist_ok=True)
        write_text_atomic(os.path.join(folder, TOKENIZER_FILE), self._tk.to_str())
        name = lambda i: None if i is None else self.vocab[i]  # noqa: E731
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(self.bos_token_id),
                  "eos_token": name(self.eos_token_id), "pad_token": name(self.pad_token_id),
                  "additional_special_tokens": self.special_tokens, "chat_template": self.chat_template,
                  "clean_up_tokenization_spaces": False}
        write_text_atomic(os.path.join(folder, TOKENIZER_CONFIG_FILE), json.dumps(config, indent=2) + "\n")

    @staticmethod
    def exists_in(folder) -> bool:
        return os.path.isfile(os.path.join(folder, TOKENIZER_FILE))

    @classmethod
    def from_pretrained(cls, folder) -> "Tokenizer":
        """Read tokenizer.json (+ tokenizer_config.json when present) from ``folder``."""
        tk = _tokenizers()
        path = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise MissingFileError(path, "tokenizer.json")
        try:
            with open(path, encoding="utf-8") as f:
                backend_tokenizer = tk.Tokenizer.from_str(f.read())
        except Exception as exc:
            raise FileFormatError(path, f"not a valid tokenizer.json: {exc}") from None
        config = {}
        config_path = os.path.join(folder, TOKENIZER_CONFIG_FILE)
        if os.path.isfile(config_path):
            config = read_json_object(config_path)
        token_id = lambda t: backend_tokenizer.token_to_id(t) if isinstance(t, str) else None  # noqa: E731
        special_ids = [token_id(t) for t in config.get("additional_special_tokens") or []]
        template = config.get("chat_template")
        return cls(backend_tokenizer, [i for i in special_ids if i is not None],
                   token_id(config.get("bos_token")), token_id(config.get("eos_token")),
                   token_id(config.get("pad_token")), template if isinstance(template, str) else None)
