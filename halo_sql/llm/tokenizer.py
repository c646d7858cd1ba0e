"""Tokenizers used for token accounting and cost estimates.

The sim backend and the cost model need token counts that track a real model's. With a model
directory they use its `tokenizer.json` (through the `tokenizers` library, no torch needed); without
one a GPT-2-style regex split stands in, within a small factor of real BPE counts on English text.

    >>> RegexTokenizer().encode("Is the customer angry?")
    ['Is', ' the', ' customer', ' angry', '?']
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

# Same shape as GPT-2's pre-tokenizer: a leading space sticks to the word after it.
_PIECES = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


class TextTokenizer(Protocol):
    """Turns text into a sequence of hashable tokens."""

    def encode(self, text: str) -> list[str] | list[int]: ...


class RegexTokenizer:
    """Deterministic word-piece split used when no model tokenizer is given."""

    def encode(self, text: str) -> list[str]:
        return _PIECES.findall(text)


class HFTokenizer:
    """A model's own tokenizer, read from its `tokenizer.json`."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(model_dir) / "tokenizer.json"
        self._tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)


def load_tokenizer(model_dir: str | Path | None) -> TextTokenizer:
    """The model's tokenizer when `model_dir` holds a tokenizer.json, else the regex stand-in."""
    if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        return HFTokenizer(model_dir)
    return RegexTokenizer()
