"""Row-local SQL: a query over one input whose every output row depends on one input row only.

A CTE chain between two LLM steps is, once planned, SQL such as

    WITH answered AS (SELECT "o_orderkey", "question", "answer" FROM __halo_in_2)
    SELECT answered.answer AS "answered.answer", CAST(answered.question AS TEXT) AS "__arg_0"
    FROM answered AS answered

Nothing in it needs more than one row at a time: no join, aggregate, window, ordering, limit or
subquery. Such SQL does not have to wait for its whole input: the executor applies it to each row
as the row arrives, so a row moves on to its next LLM step while other rows are still decoding.
`flatten` reduces it to one projection list (and an optional predicate) over the input's columns:

    >>> flat = flatten('WITH a AS (SELECT x, y FROM t WHERE y > 1) SELECT a.x AS k FROM a', {"t"})
    >>> flat.input_name, flat.columns, flat.predicate
    ('t', (('k', '"x"'),), '"y" > 1')
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

DIALECT = "duckdb"


@dataclass(frozen=True)
class RowLocalSQL:
    """A row-local query over the input table `input_name`, in DuckDB SQL over its columns."""

    input_name: str
    columns: tuple[tuple[str, str], ...] | None
    """(output name, expression over the input's columns); None: the input's columns as they are."""
    predicate: str | None = None
    """Rows for which this is not true are dropped."""

    @property
    def renames_only(self) -> bool:
        """True when every output column is an input column (no expression to evaluate)."""
        return self.predicate is None and all(
            _bare_column(expr) is not None for _, expr in self.columns or ()
        )

    def source_column(self, expression: str) -> str | None:
        return _bare_column(expression)

    def describe(self) -> str:
        cols = "*" if self.columns is None else ", ".join(
            f"{expr} AS {exp.to_identifier(name, quoted=True).sql(DIALECT)}"
            for name, expr in self.columns
        )
        where = f" WHERE {self.predicate}" if self.predicate else ""
        return f"SELECT {cols} FROM {self.input_name}{where}"


def _bare_column(expression: str) -> str | None:
    try:
        node = sqlglot.parse_one(expression, read=DIALECT)
    except SqlglotError:
        return None
    if isinstance(node, exp.Column) and not node.table:
        return node.name
    return None


class NotRowLocal(Exception):
    """The query needs more than one row at a time (or more than one input)."""


def flatten(sql: str, inputs: set[str]) -> RowLocalSQL | None:
    """The row-local form of `sql` over one of `inputs`, or None when it is not row-local."""
    try:
        tree = sqlglot.parse_one(sql, read=DIALECT)
    except SqlglotError:
        return None
    if not isinstance(tree, exp.Select):
        return None
    try:
        name, columns, predicates = _flatten_select(tree, _ctes(tree, {}), {i.lower() for i in inputs})
    except NotRowLocal:
        return None
    rendered = None if columns is None else tuple(
        (out, expr.sql(DIALECT)) for out, expr in columns
    )
    predicate = exp.and_(*predicates).sql(DIALECT) if predicates else None
    return RowLocalSQL(name, rendered, predicate)


_BLOCKERS = ("joins", "group", "having", "qualify", "order", "limit", "offset", "distinct",
             "laterals", "windows", "pivots", "sample", "connect", "prewhere", "into")


def _ctes(select: exp.Expr, outer: dict[str, exp.Expr]) -> dict[str, exp.Expr]:
    scope = dict(outer)
    with_ = select.args.get("with_") or select.args.get("with")
    for cte in (with_.expressions if with_ is not None else []):
        scope[cte.alias_or_name.lower()] = cte.this
    return scope


def _flatten_select(
    select: exp.Expr, ctes: dict[str, exp.Expr], inputs: set[str]
) -> tuple[str, list[tuple[str, exp.Expr]] | None, list[exp.Expr]]:
    if not isinstance(select, exp.Select):
        raise NotRowLocal("not a plain SELECT")
    for blocker in _BLOCKERS:
        if select.args.get(blocker):
            raise NotRowLocal(blocker)
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is None or not isinstance(from_.this, exp.Table):
        raise NotRowLocal("FROM is not one table")
    table = from_.this
    if table.args.get("db") or table.args.get("catalog") or not isinstance(table.this, exp.Identifier):
        raise NotRowLocal("qualified or function table")
    if table.args.get("alias") is not None and table.args["alias"].columns:
        raise NotRowLocal("column aliases on the table")
    name = table.name.lower()
    alias = table.alias_or_name.lower()
    if name in ctes and name not in inputs:
        inner_sql = ctes[name]
        input_name, inner_cols, predicates = _flatten_select(inner_sql, _ctes(inner_sql, ctes), inputs)
    elif name in inputs:
        input_name, inner_cols, predicates = table.name, None, []
    else:
        raise NotRowLocal(f"reads {name}, which is not the input")
    lookup = None if inner_cols is None else {out.lower(): e for out, e in inner_cols}

    def substitute(node: exp.Expr) -> exp.Expr:
        for bad in node.walk():
            if isinstance(bad, exp.AggFunc | exp.Window | exp.Query | exp.Subquery | exp.Star):
                raise NotRowLocal("aggregate, window or subquery")
            if isinstance(bad, exp.Anonymous) and str(bad.this).lower().startswith("__halo_fn"):
                raise NotRowLocal("an LLM function DuckDB evaluates")
        node = node.copy()

        def replace(n: exp.Expr) -> exp.Expr:
            if isinstance(n, exp.Column):
                if n.table and n.table.lower() != alias:
                    raise NotRowLocal(f"column of another table: {n.sql(DIALECT)}")
                column = n.name
                if lookup is None:
                    return exp.column(exp.to_identifier(column, quoted=True))
                inner = lookup.get(column.lower())
                if inner is None:
                    raise NotRowLocal(f"unknown column {column}")
                return inner.copy() if isinstance(inner, exp.Column | exp.Literal) else exp.Paren(this=inner.copy())
            return n

        return node.transform(replace)

    projections = select.expressions
    columns: list[tuple[str, exp.Expr]] | None
    if len(projections) == 1 and isinstance(projections[0], exp.Star):
        columns = inner_cols
    else:
        columns = []
        for projection in projections:
            if isinstance(projection, exp.Star) or projection.is_star:
                raise NotRowLocal("a star beside other columns")
            out = projection.alias_or_name
            if not out:
                raise NotRowLocal("an unnamed column")
            body = projection.this if isinstance(projection, exp.Alias) else projection
            columns.append((out, substitute(body)))
    where = select.args.get("where")
    if where is not None:
        predicates = [*predicates, substitute(where.this)]
    return input_name, columns, predicates
