"""Query shapes: statements that differ only in literal values share one plan.

A batch is usually one query written many times with different constants (a customer key, a
month): planning each from scratch costs DuckDB bind checks and statistics queries per query.
`shape_of` splits a statement into its shape (the text with its plannable literals and
parameters replaced by markers) and those values; the session plans a shape once with sentinel
values in place of the literals (`Shape.sentinel_sql`), checks that the sentinel plan with the
first query's values put back is exactly that query's own plan, and then gets every other
query's plan by putting its values back (`Shape.substitute`).

Literals that decide a plan's structure are part of the shape, never replaced: everything inside
an LLM function or agent call (templates, labels, schemas, options), LIMIT and OFFSET counts,
ORDER BY / GROUP BY positions, INTERVAL strings, typed literals other than DATE, and literals
that are arguments of a function (`round(x, 2)`, `strftime(d, '%Y')`).

    >>> shape = shape_of("SELECT a FROM t WHERE k = 1040 AND LLM_FILTER('Late? {x}') LIMIT 3", {"llm_filter"})
    >>> shape.key
    "SELECT a FROM t WHERE k = ? AND LLM_FILTER('Late? {x}') LIMIT 3"
    >>> shape.sentinel_sql
    "SELECT a FROM t WHERE k = 8000000000000 AND LLM_FILTER('Late? {x}') LIMIT 3"
    >>> shape.substitute("... WHERE k = 8000000000000 ...")
    '... WHERE k = 1040 ...'
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from halo_sql.parser.statements import tokens_of

_NUMBER_BASE = 8_000_000_000_000
"""Integer sentinels: 13 digits, so no sentinel is a prefix of another."""
_MAX_VALUES = 900

_CLAUSE_ENDS = {
    TokenType.LIMIT, TokenType.OFFSET, TokenType.HAVING, TokenType.QUALIFY, TokenType.WINDOW,
    TokenType.UNION, TokenType.EXCEPT, TokenType.INTERSECT, TokenType.SEMICOLON, TokenType.WHERE,
    TokenType.FROM,
}


@dataclass(frozen=True)
class Shape:
    """A statement as its shape and its literal values (see the module docstring)."""

    key: str
    sentinel_sql: str
    sentinels: tuple[str, ...]
    """How each value appears in SQL planned from `sentinel_sql`."""
    values: tuple[str, ...]
    """The statement's own SQL text of each value."""

    def substitute(self, text: str) -> str:
        """`text` (SQL planned from the sentinel statement) with this statement's values."""
        for sentinel, value in zip(self.sentinels, self.values, strict=True):
            if sentinel in text:
                text = text.replace(sentinel, value)
        return text


def shape_of(
    sql: str,
    protected_calls: Set[str],
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    shallow_calls: Set[str] = frozenset(),
) -> Shape | None:
    """The shape of `sql` with its parameters bound, or None when it has nothing to share (or a
    value this module cannot stand in for: then the statement is planned on its own).

    Every literal inside a `protected_calls` call is part of the shape; inside a
    `shallow_calls` call (agents) only its direct arguments are, not those of its input query:

        >>> shape_of("SELECT * FROM AGENT('a', input => (SELECT * FROM t WHERE k = 7))",
        ...          set(), shallow_calls={"agent"}).values
        ('7',)
    """
    try:
        tokens = tokens_of(sql)
    except TokenError:
        return None
    names = {n.lower() for n in protected_calls}
    shallow = {n.lower() for n in shallow_calls}
    shallow_depth: int | None = None
    key: list[str] = []
    planned: list[str] = []
    sentinels: list[str] = []
    values: list[str] = []
    cursor = 0
    protected_depth: int | None = None
    depth = 0
    functions: list[bool] = []
    """Per open parenthesis: does it hold a function's arguments (`round(x, 2)`: the 2 is part
    of the shape) rather than a list or a subquery (`IN (1, 2)`, `(SELECT ... = 5)`)?"""
    by_clause: int | None = None
    positional = 0
    for i, token in enumerate(tokens):
        kind = token.token_type
        previous = tokens[i - 1].token_type if i else None
        if kind == TokenType.L_PAREN:
            depth += 1
            functions.append(previous == TokenType.VAR)
            if protected_depth is None and i and tokens[i - 1].text.lower() in names:
                protected_depth = depth
            elif shallow_depth is None and i and tokens[i - 1].text.lower() in shallow:
                shallow_depth = depth
            continue
        if kind == TokenType.R_PAREN:
            if protected_depth == depth:
                protected_depth = None
            if shallow_depth == depth:
                shallow_depth = None
            if by_clause == depth:
                by_clause = None
            depth -= 1
            if functions:
                functions.pop()
            continue
        argument = bool(functions and functions[-1]) and previous in (
            TokenType.COMMA, TokenType.L_PAREN
        )
        if shallow_depth is not None and depth == shallow_depth:
            argument = True
        if kind in (TokenType.ORDER_BY, TokenType.GROUP_BY):
            by_clause = depth
            continue
        if kind in _CLAUSE_ENDS and by_clause == depth:
            by_clause = None
        value: str | None = None
        sentinel: str | None = None
        end = token.end
        if kind == TokenType.PLACEHOLDER or (
            kind == TokenType.PARAMETER and i + 1 < len(tokens)
        ):
            if protected_depth is not None or params is None:
                return None  # a parameter inside an LLM call: planned on its own
            if kind == TokenType.PLACEHOLDER:
                name: str | int = positional
                positional += 1
            else:
                following = tokens[i + 1]
                end = following.end
                name = following.text
                if following.token_type == TokenType.NUMBER:
                    name = int(following.text) - 1
            bound = _param(params, name)
            if bound is None:
                return None
            value, sentinel = bound[0], bound[1](len(values))
        elif protected_depth is None and by_clause is None and not argument and previous not in (
            TokenType.LIMIT, TokenType.OFFSET, TokenType.INTERVAL
        ):
            raw = sql[token.start : token.end + 1]
            if kind == TokenType.NUMBER:
                value = raw
                sentinel = _number_sentinel(len(values), decimal_point="." in raw or "e" in raw.lower())
            elif kind == TokenType.STRING and previous == TokenType.DATE:
                if len(values) < 28:
                    value, sentinel = raw, f"'1000-01-{len(values) + 1:02d}'"
            elif kind == TokenType.STRING and previous not in (
                TokenType.TIMESTAMP, TokenType.TIME, TokenType.TIMESTAMPTZ, TokenType.TIMESTAMP_S,
            ):
                value, sentinel = raw, f"'__halo_lit_{len(values):03d}__'"
        if value is None or sentinel is None:
            continue
        if len(values) >= _MAX_VALUES:
            return None
        key.append(sql[cursor : token.start] + "?")
        planned.append(sql[cursor : token.start] + sentinel)
        cursor = end + 1
        sentinels.append(sentinel)
        values.append(value)
    if not values:
        return None
    key.append(sql[cursor:])
    planned.append(sql[cursor:])
    return Shape("".join(key), "".join(planned), tuple(sentinels), tuple(values))


def _number_sentinel(index: int, *, decimal_point: bool) -> str:
    text = str(_NUMBER_BASE + index)
    return text + ".5" if decimal_point else text


def _param(params: Sequence[Any] | Mapping[str, Any], name: str | int) -> tuple[str, Any] | None:
    """The SQL text of a parameter's value and a sentinel maker of the same type."""
    try:
        if isinstance(params, Mapping):
            value = params[str(name)] if not isinstance(name, int) else None
            if isinstance(name, int):
                return None
        else:
            if not isinstance(name, int) or not 0 <= name < len(params):
                return None
            value = params[name]
    except KeyError:
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value), lambda i: _number_sentinel(i, decimal_point=False)
    if isinstance(value, float | decimal.Decimal):
        return repr(value) if isinstance(value, float) else str(value), (
            lambda i: _number_sentinel(i, decimal_point=True)
        )
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'", lambda i: f"'__halo_lit_{i:03d}__'"
    return None  # dates, bytes, lists, ...: planned on their own
