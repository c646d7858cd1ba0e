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


def drop_unused_ctes(query: exp.Expr) -> None:
    """Remove, in place, the CTEs of `query`'s own WITH that nothing reads (directly or through
    another CTE): a dead CTE is never run, so nothing it reads is computed.

    >>> import sqlglot
    >>> q = sqlglot.parse_one("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a), c AS (SELECT 2) "
    ...                       "SELECT * FROM b")
    >>> drop_unused_ctes(q); q.sql()
    'WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b'
    """
    with_ = query.args.get("with_")
    if not isinstance(with_, exp.With) or not with_.expressions:
        return
    ctes = {cte.alias_or_name.lower(): cte for cte in with_.expressions}
    body = query.copy()
    body.set("with_", None)
    wanted = [t.name.lower() for t in body.find_all(exp.Table)]
    kept: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in kept or name not in ctes:
            continue
        kept.add(name)
        wanted.extend(t.name.lower() for t in ctes[name].this.find_all(exp.Table))
    if len(kept) == len(ctes):
        return
    remaining = [cte for cte in with_.expressions if cte.alias_or_name.lower() in kept]
    if remaining:
        with_.set("expressions", remaining)
    else:
        query.set("with_", None)


def row_local_select(sql: str, source: str) -> exp.Select | None:
    """`sql` parsed, when it is a row-local SELECT over the table `source` alone: output
    expressions and a WHERE of the source's columns, nothing that looks at other rows (grouping,
    aggregates, windows, DISTINCT, ORDER BY, LIMIT), no subquery, no function that is not
    DuckDB's own (an LLM function left to DuckDB) or that is volatile. Such a step can run on
    any slice of the source's rows and gives the slices of its result.

    >>> row_local_select('SELECT r."a" AS a FROM rows_1 AS r WHERE r."b" > 2', "rows_1").sql()
    'SELECT r."a" AS a FROM rows_1 AS r WHERE r."b" > 2'
    >>> row_local_select("SELECT count(*) FROM rows_1", "rows_1") is None
    True
    """
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError:
        return None
    if not isinstance(tree, exp.Select):
        return None
    for key in ("with_", "joins", "group", "having", "qualify", "order", "limit", "offset",
                "distinct", "laterals", "windows"):
        if tree.args.get(key):
            return None
    from_ = tree.args.get("from_")
    if from_ is None or not isinstance(from_.this, exp.Table) or from_.this.name != source:
        return None
    if from_.this.args.get("db") or from_.this.args.get("catalog"):
        return None
    for node in tree.walk():
        if node is tree or node is from_.this:
            continue
        if isinstance(node, exp.Query | exp.AggFunc | exp.Window | exp.Anonymous | exp.Table):
            return None
        if isinstance(node, exp.Rand) or (
            isinstance(node, exp.Func) and node.sql_name().lower() in VOLATILE_FUNCTIONS
        ):
            return None
    return tree


VOLATILE_FUNCTIONS = frozenset(
    {"random", "rand", "uuid", "gen_random_uuid", "nextval", "setseed", "currval"}
)
"""Functions whose value differs between calls: an expression using one must be evaluated
exactly where the user wrote it (and as often)."""
