"""Put one query's literal values into a plan made for its shape (`halo_sql.parser.shapes`).

Plans are immutable data, so instantiating is a copy: every string of the plan (SQL text,
predicates) gets the sentinels replaced by the query's values; nodes without a sentinel are
shared with the shape's plan, and a node shared inside the plan stays shared in the copy.

    >>> from halo_sql.logical.plan import DuckDBQuery, StatementPlan
    >>> shaped = StatementPlan(DuckDBQuery("SELECT * FROM t WHERE k = 8000000000000"))
    >>> instantiate(shaped, lambda text: text.replace("8000000000000", "42")).root.sql
    'SELECT * FROM t WHERE k = 42'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from halo_sql.logical.plan import StatementPlan


def instantiate(plan: StatementPlan, substitute: Callable[[str], str]) -> StatementPlan:
    """`plan` with `substitute` applied to every string it holds (its prepared physical plan
    too, when it has one)."""
    memo: dict[int, Any] = {}

    def visit(value: Any) -> Any:
        if isinstance(value, str):
            return substitute(value)
        if isinstance(value, tuple):
            items = tuple(visit(v) for v in value)
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            key = id(value)
            if key in memo:
                return memo[key]
            changes = {}
            for f in dataclasses.fields(value):
                if not f.init or not f.compare:
                    continue
                old = getattr(value, f.name)
                new = visit(old)
                if new is not old:
                    changes[f.name] = new
            out = dataclasses.replace(value, **changes) if changes else value
            memo[key] = out
            return out
        return value

    root = visit(plan.root)
    prepared = visit(plan.prepared) if plan.prepared is not None else None
    return StatementPlan(root, plan.notes, plan.optimizer, prepared)
