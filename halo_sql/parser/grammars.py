"""Load the lark grammars kept in `grammar/` (shipped in the package as `halo_sql/_grammar`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lark import Lark


@cache
def grammar(name: str, **options: object) -> Lark:
    """The compiled LALR parser for `grammar/<name>.lark` (compiled once per process)."""
    text = (Path(__file__).resolve().parents[1] / "_grammar" / f"{name}.lark").read_text()
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False, **options)
