"""Small helpers over sqlglot expressions shared by the binder, the agents and the optimizer."""

from __future__ import annotations

from sqlglot import exp


def conjuncts(condition: exp.Expr) -> list[exp.Expr]:
    """The AND-ed terms of a condition, parentheses looked through.

    >>> import sqlglot
    >>> [c.sql() for c in conjuncts(sqlglot.parse_one("a = 1 AND (b < 2 AND c)"))]
    ['a = 1', 'b < 2', 'c']
    """
    if isinstance(condition, exp.And):
        return conjuncts(condition.this) + conjuncts(condition.expression)
    if isinstance(condition, exp.Paren):
        return conjuncts(condition.this)
    return [condition]
