"""Split a script into statements and parse halo-sql's own statements (grammar/statements.lark).

    >>> [s.text for s in split_statements("SELECT 1; SELECT ';' ; ")]
    ['SELECT 1', "SELECT ';'"]
    >>> parse_own_statement("CREATE MODEL tiny USING vllm WITH (model => '/m', block_size => 32)")
    CreateModel(name='tiny', backend='vllm', options={'model': '/m', 'block_size': 32}, replace=False, if_not_exists=False)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from lark import Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.tree import Meta
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import TokenError
from sqlglot.tokens import Token as SqlToken
from sqlglot.tokens import TokenType

from halo_sql.errors import ParseError, SourceLocation
from halo_sql.parser.grammars import grammar


@dataclass(frozen=True)
class StatementText:
    """One statement of a script and where it starts (for error locations)."""

    text: str
    line: int = 1
    column: int = 1


class Options(dict[str, Any]):
    """The `WITH (...)` options of a statement, in the order written, with where each one
    stands (`locations`, for error messages). Compares and prints as a plain dict."""

    def __init__(self, items: Any = (), locations: dict[str, SourceLocation] | None = None) -> None:
        super().__init__(items)
        self.locations: dict[str, SourceLocation] = dict(locations or {})


def option_locations(options: Any) -> dict[str, SourceLocation]:
    """Where each option was written (empty for options not parsed from text)."""
    return dict(getattr(options, "locations", {}) or {})


@dataclass(frozen=True)
class CreateModel:
    name: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    replace: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True)
class DropModel:
    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class ShowModels:
    pass


@dataclass(frozen=True)
class ClearResponseCache:
    """CLEAR RESPONSE CACHE: forget every stored answer (halo_sql.executor.response_cache)."""


@dataclass(frozen=True)
class CreateAgent:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    replace: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True)
class DropAgent:
    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class ShowAgents:
    pass


@dataclass(frozen=True)
class CreateTool:
    name: str
    kind: str
    """sql, python or http."""
    target: str
    """The query, 'module:function' or URL."""
    options: dict[str, Any] = field(default_factory=dict)
    replace: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True)
class DropTool:
    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class ShowTools:
    pass


AgentStatement = CreateAgent | DropAgent | ShowAgents | CreateTool | DropTool | ShowTools
OwnStatement = CreateModel | DropModel | ShowModels | ClearResponseCache | AgentStatement

_OWN = re.compile(
    r"^\s*(CREATE\s+(OR\s+REPLACE\s+)?(MODEL|AGENT|TOOL)\b|DROP\s+(MODEL|AGENT|TOOL)\b|"
    r"SHOW\s+(MODELS|AGENTS|TOOLS)\b|CLEAR\s+RESPONSE\s+CACHE\b)",
    re.I,
)
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:(ANALYZE)\s+)?(?:\(\s*FORMAT\s+(\w+)\s*\)\s*)?", re.I)


def is_own_statement(text: str) -> bool:
    return bool(_OWN.match(_strip_comments(text)))


def split_explain(text: str) -> tuple[bool, bool, str | None, str]:
    """(is_explain, analyze, format, inner statement)."""
    match = _EXPLAIN.match(text)
    if not match:
        return False, False, None, text
    return True, bool(match.group(1)), (match.group(2) or "text").lower(), text[match.end() :]


@functools.lru_cache(maxsize=512)
def tokens_of(sql: str) -> tuple[SqlToken, ...]:
    """sqlglot's DuckDB tokens of `sql`, memoized: a batch's query is tokenized once for
    splitting, classifying and finding its shape (tokenizing is the costly part of each).
    Raises sqlglot's TokenError."""
    return tuple(DuckDB().tokenize(sql))


def split_statements(script: str) -> list[StatementText]:
    """Statements of a script, split at top-level semicolons (strings and comments respected)."""
    try:
        tokens = tokens_of(script)
    except TokenError as exc:
        raise ParseError(f"cannot tokenize SQL: {exc}") from None
    out: list[StatementText] = []
    start = 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            _append(out, script, start, token.start)
            start = token.end + 1
    _append(out, script, start, len(script))
    return out


def _append(out: list[StatementText], script: str, start: int, end: int) -> None:
    piece = script[start:end]
    if not _strip_comments(piece).strip():
        return
    lead = len(piece) - len(piece.lstrip())
    offset = start + lead
    line = script.count("\n", 0, offset) + 1
    column = offset - (script.rfind("\n", 0, offset) + 1) + 1
    out.append(StatementText(piece.strip(), line, column))


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.S)


class _ToStatement(Transformer):  # type: ignore[type-arg]
    def name(self, items: list[Token]) -> str:
        value = str(items[0])
        return value[1:-1].replace('""', '"') if value.startswith('"') else value.lower()

    def string(self, items: list[Token]) -> str:
        return str(items[0])[1:-1].replace("''", "'")

    def number(self, items: list[Token]) -> int | float:
        text = str(items[0])
        return float(text) if any(c in text for c in ".eE") else int(text)

    def true(self, _: list[Any]) -> bool:
        return True

    def false(self, _: list[Any]) -> bool:
        return False

    def null(self, _: list[Any]) -> None:
        return None

    def bare_word(self, items: list[str]) -> str:
        return items[0]

    def value_list(self, items: list[Any]) -> list[Any]:
        return [i for i in items if i is not None] if items != [None] else []

    def __init__(self, line: int = 1, column: int = 1) -> None:
        super().__init__()
        self.line, self.column = line, column

    def _at(self, meta: Meta) -> SourceLocation:
        line = self.line + meta.line - 1
        return SourceLocation(line, meta.column + (self.column - 1 if line == self.line else 0))

    @v_args(meta=True)
    def option(self, meta: Meta, items: list[Any]) -> tuple[str, Any, SourceLocation]:
        return items[0], items[1], self._at(meta)

    def with_options(self, items: list[Any]) -> Options:
        options = Options()
        for item in items:
            if item is None:
                continue
            key, value, location = item
            if key in options:
                raise ParseError(
                    f"option {key!r} is given twice (first at {options.locations[key]})",
                    location=location,
                )
            options[key] = value
            options.locations[key] = location
        return options

    def or_replace(self, _: list[Any]) -> str:
        return "or_replace"

    def if_not_exists(self, _: list[Any]) -> str:
        return "if_not_exists"

    def if_exists(self, _: list[Any]) -> str:
        return "if_exists"

    def create_model(self, items: list[Any]) -> CreateModel:
        flags = {i for i in items if i in ("or_replace", "if_not_exists")}
        rest = [i for i in items if i not in ("or_replace", "if_not_exists")]
        name, backend = rest[0], rest[1]
        options = rest[2] if len(rest) > 2 else {}
        return CreateModel(name, backend.lower(), options, "or_replace" in flags, "if_not_exists" in flags)

    def drop_model(self, items: list[Any]) -> DropModel:
        return DropModel(items[-1], if_exists="if_exists" in items)

    def show_models(self, _: list[Any]) -> ShowModels:
        return ShowModels()

    def clear_response_cache(self, _: list[Any]) -> ClearResponseCache:
        return ClearResponseCache()

    def create_agent(self, items: list[Any]) -> CreateAgent:
        flags = {i for i in items if i in ("or_replace", "if_not_exists")}
        rest = [i for i in items if i not in ("or_replace", "if_not_exists")]
        return CreateAgent(rest[0], rest[1], "or_replace" in flags, "if_not_exists" in flags)

    def drop_agent(self, items: list[Any]) -> DropAgent:
        return DropAgent(items[-1], if_exists="if_exists" in items)

    def show_agents(self, _: list[Any]) -> ShowAgents:
        return ShowAgents()

    def create_tool(self, items: list[Any]) -> CreateTool:
        flags = {i for i in items if i in ("or_replace", "if_not_exists")}
        rest = [i for i in items if i not in ("or_replace", "if_not_exists")]
        name, kind, target = rest[0], rest[1], rest[2]
        options = rest[3] if len(rest) > 3 else {}
        return CreateTool(name, kind.lower(), target, options, "or_replace" in flags,
                          "if_not_exists" in flags)

    def drop_tool(self, items: list[Any]) -> DropTool:
        return DropTool(items[-1], if_exists="if_exists" in items)

    def show_tools(self, _: list[Any]) -> ShowTools:
        return ShowTools()


def parse_own_statement(text: str, *, line: int = 1, column: int = 1) -> OwnStatement:
    """Parse CREATE/DROP/SHOW MODEL, AGENT and TOOL statements; errors name the line and column."""
    try:
        tree = grammar("statements").parse(text)
    except UnexpectedInput as exc:
        at_end = isinstance(exc, UnexpectedEOF) or (
            isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
        )
        # Where the statement ends, or where the offending input starts (lark's line/column of
        # an end-of-input error is the last token's, not the end's).
        offset = len(text.rstrip()) if at_end else getattr(exc, "pos_in_stream", None)
        if offset is None:
            offset = len(text.rstrip())
        before = text[:offset]
        at_line = line + before.count("\n")
        at_col = offset - (before.rfind("\n") + 1) + (column if at_line == line else 1)
        if at_end:
            what = "unexpected end of statement"
        elif isinstance(exc, UnexpectedToken):
            what = f"unexpected {str(exc.token)!r}"
        elif isinstance(exc, UnexpectedCharacters):
            what = f"unexpected character {text[offset]!r}"
        else:
            what = "syntax error"
        hint = (
            "expected e.g. CREATE MODEL name USING vllm WITH (model => 'path'), "
            "DROP MODEL name, SHOW MODELS"
        )
        kind = _OWN.match(_strip_comments(text))
        if kind and re.search(r"\bAGENTS?\b", kind.group(0), re.I):
            hint = ("expected e.g. CREATE AGENT name WITH (instructions => '...', "
                    "tools => [tool], max_steps => 4, output => 'VARCHAR'), DROP AGENT name, "
                    "SHOW AGENTS")
        elif kind and re.search(r"\bTOOLS?\b", kind.group(0), re.I):
            hint = ("expected e.g. CREATE TOOL name AS SQL 'SELECT ... WHERE k = :k' "
                    "[WITH (parameters => '{\"k\": \"integer\"}')], CREATE TOOL name AS PYTHON "
                    "'module:function', CREATE TOOL name AS HTTP 'http://host/path', DROP TOOL name")
        raise ParseError(f"{what}; {hint}", location=SourceLocation(at_line, max(1, at_col))) from None
    try:
        return _ToStatement(line, column).transform(tree)  # type: ignore[no-any-return]
    except VisitError as exc:  # lark wraps what a transformer method raises
        if isinstance(exc.orig_exc, ParseError):
            raise exc.orig_exc from None
        raise
