"""Prompt templates: literal text with `{column}` / `{alias.column}` slots (grammar/template.lark).

    >>> t = parse_template("Is this review about delivery? {r.text}")
    >>> t.slots
    (Slot(qualifier='r', name='text'),)
    >>> t.render(["It came late."])
    'Is this review about delivery? It came late.'

A template renders as the user wrote it: each slot replaced by its value's text, nothing more,
wherever the slot stands:

    >>> parse_template("Does {text} mention {product}?").render(["It broke.", "kettle"])
    'Does It broke. mention kettle?'

The other layout, the instruction first and the values after it as `name: value` lines, is
that of FlockMTL-style calls (whose inputs are a struct of named columns) and of the optimizer's
opt-in `prompt_values_last_*` rewrites, which trade the user's wording for a longer prefix every
row shares (`values_last`):

    >>> values_last(parse_template("Does {text} mention {product}?")).render(["It broke.", "kettle"])
    'Does [text] mention [product]?\\n\\ntext: It broke.\\nproduct: kettle'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from halo_sql.errors import ParseError, SourceLocation
from halo_sql.parser.grammars import grammar

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Slot:
    """A reference to a column, optionally qualified by a table alias."""

    qualifier: str | None
    name: str

    def __str__(self) -> str:
        name = _quote(self.name)
        return f"{_quote(self.qualifier)}.{name}" if self.qualifier else name


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: alternating literal text (str) and slots, in order."""

    parts: tuple[str | Slot, ...]
    data_last: bool = False
    """Render the literal text as the instruction and every slot as a `name: value` line after it
    (the layout of FlockMTL-style calls, whose inputs are a struct of named columns, and of the
    opt-in values-last rewrite); False: in place, as written."""

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(p for p in self.parts if isinstance(p, Slot))

    @property
    def text_after_first_slot(self) -> bool:
        """True when literal words (not just whitespace or punctuation) follow the first slot:
        rendered in place, rows then share only the text before that slot."""
        if self.data_last:
            return False
        seen_slot = False
        for part in self.parts:
            if isinstance(part, Slot):
                seen_slot = True
            elif seen_slot and any(ch.isalnum() for ch in part):
                return True
        return False

    @property
    def static_prefix(self) -> str:
        """The text every rendered prompt starts with."""
        if self.data_last:
            return self.instruction_text().rstrip() + "\n\n"
        out = []
        for part in self.parts:
            if isinstance(part, Slot):
                break
            out.append(part)
        return "".join(out)

    def instruction_text(self) -> str:
        """The literal text, with each slot shown as `[name]` (data-last templates: the
        instruction alone)."""
        if self.data_last:
            return "".join(p for p in self.parts if isinstance(p, str))
        return "".join(f"[{p.name}]" if isinstance(p, Slot) else p for p in self.parts)

    def render(self, values: Sequence[str]) -> str:
        """The prompt for one row; `values` are the slot values in slot order."""
        if len(values) != len(self.slots):
            raise ValueError(f"template has {len(self.slots)} slots, got {len(values)} values")
        if not self.data_last:
            it = iter(values)
            return "".join(next(it) if isinstance(p, Slot) else p for p in self.parts)
        data = "\n".join(f"{slot.name}: {value}" for slot, value in zip(self.slots, values, strict=True))
        return f"{self.instruction_text().rstrip()}\n\n{data}"

    def __str__(self) -> str:
        if self.data_last:
            inputs = ", ".join(str(s) for s in self.slots)
            return f"{self.instruction_text()} <- ({inputs})"
        return "".join(
            "{" + str(p) + "}" if isinstance(p, Slot) else p.replace("{", "{{").replace("}", "}}")
            for p in self.parts
        )


def values_last(template: PromptTemplate) -> PromptTemplate:
    """The values-last layout of an in-place template: the text with `[name]` markers as the
    instruction, the values after it as `name: value` lines (a prompt the user did not write:
    the optimizer's opt-in `prompt_values_last_*` rules use it where the cost model prices the
    longer shared prefix lower)."""
    if template.data_last:
        return template
    return PromptTemplate((template.instruction_text(), *template.slots), data_last=True)


def parse_template(text: str, *, location: SourceLocation | None = None) -> PromptTemplate:
    """Parse a template string; errors name the offset inside the template and the SQL location."""
    if not text.strip():
        raise ParseError("prompt template is empty", location=location)
    try:
        tree = grammar("template").parse(text)
    except UnexpectedInput as exc:
        where = f" at character {exc.column}" if getattr(exc, "column", None) else ""
        raise ParseError(
            f"bad prompt template{where}: {text!r} (slots look like {{column}} or "
            "{alias.column}; write {{ and }} for literal braces)",
            location=location,
        ) from None
    parts: list[str | Slot] = []
    for child in tree.children:
        assert isinstance(child, Tree)
        if child.data == "text":
            piece = str(child.children[0])
        elif child.data == "lbrace":
            piece = "{"
        elif child.data == "rbrace":
            piece = "}"
        else:
            names = [_unquote(t) for t in child.children if isinstance(t, Token)]
            parts.append(Slot(names[0], names[1]) if len(names) == 2 else Slot(None, names[0]))
            continue
        if parts and isinstance(parts[-1], str):
            parts[-1] += piece
        else:
            parts.append(piece)
    return PromptTemplate(tuple(parts))


def _quote(name: str) -> str:
    """A slot name as the grammar reads it back: quoted unless it is a plain identifier."""
    return name if _IDENTIFIER.fullmatch(name) else f'"{name}"'


def _unquote(token: Token) -> str:
    value = str(token)
    return value[1:-1] if value.startswith('"') else value
