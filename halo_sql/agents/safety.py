"""The read-only check of SQL tools: one SELECT over the tables the tool declares, nothing else.

An SQL tool's query runs on the session's database with arguments the *model* chose, so it is
held to a strict shape before it is stored and again before every run. This is the second line:
the first is the sandbox (halo_sql.agents.sandbox), where DuckDB binds the query against a
catalog that holds only the declared tables. Here, by parsing:

* exactly one statement, a query (SELECT, set operation, VALUES); no DDL or DML anywhere inside
  it (a data-modifying CTE included), no ATTACH/DETACH/COPY/INSTALL/LOAD/PRAGMA/SET/USE;
* every table it reads is one the tool declares (or a CTE visible where it is read: scopes are
  followed, so a CTE named like an undeclared table does not hide that table in its own body);
  no table functions (read_csv, glob, query, ...), no file paths or URLs in FROM;
* no function that reads files, the network, secrets or the environment, or that changes state
  (nextval, setseed);
* arguments are bound as parameters (`:name` becomes DuckDB's `$name`), never spliced as text;
* DuckDB's own parser must agree that the text is a single SELECT statement.

    >>> check_read_only("SELECT * FROM orders WHERE o_custkey = :key", ["orders"])
    'SELECT * FROM orders WHERE o_custkey = $key'
    >>> check_read_only("DELETE FROM orders", ["orders"])
    Traceback (most recent call last):
    ...
    halo_sql.agents.safety.UnsafeQuery: only read-only queries are allowed, found DELETE
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from halo_sql.errors import BinderError

_FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, name)
    for name in (
        "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Copy", "Command",
        "Pragma", "Set", "Attach", "Detach", "Install", "Use", "Transaction", "Commit",
        "Rollback", "LoadData", "Into", "Export", "TruncateTable", "Analyze", "Describe",
    )
    if hasattr(exp, name)
)
STATE_FUNCTIONS = frozenset(
    {
        "current_setting", "getvariable", "getenv", "version", "current_database",
        "current_catalog", "current_schema", "current_schemas", "current_query",
        "current_query_id", "current_connection_id", "current_transaction_id", "txid_current",
        "current_user", "current_role", "session_user", "user", "in_search_path", "which_secret",
        "nextval", "currval", "setval", "setseed", "write_log", "stats", "vector_type",
        "json_execute_serialized_sql", "query", "query_table", "sleep_ms", "pg_sleep",
    }
)
"""Built-in functions whose value comes from the engine's state (settings, variables, secrets,
sessions, sequences) rather than from their arguments, or that change that state."""

STATE_PREFIXES = ("duckdb_", "pg_", "has_", "sqlite_", "pragma_")
"""Name prefixes of DuckDB's catalog and compatibility functions (duckdb_tables(),
pg_get_viewdef(), has_table_privilege(), ...)."""

_FORBIDDEN_FUNCTIONS = STATE_FUNCTIONS | {
    "glob", "sniff_csv", "load_aws_credentials", "checkpoint", "force_checkpoint",
    "current_version",  # sqlglot's name for version()
}
_FORBIDDEN_PREFIXES = (
    "read_", "parquet_", "iceberg_", "delta_", "http_", "postgres_", "mysql_", "text_", "csv_",
    *STATE_PREFIXES,
)
_FORBIDDEN_SUFFIXES = ("_scan",)


class UnsafeQuery(BinderError):
    """An SQL tool's query is not a read-only query over its declared tables."""


def check_read_only(sql: str, tables: Collection[str]) -> str:
    """The query with `:name` parameters as DuckDB `$name`, or raise UnsafeQuery saying why."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except SqlglotError as exc:
        raise UnsafeQuery(f"the query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise UnsafeQuery(f"a tool runs exactly one statement, found {len(statements)}")
    tree = statements[0]
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            what = node.key.upper() if not isinstance(node, exp.Command) else str(node.this).upper()
            raise UnsafeQuery(f"only read-only queries are allowed, found {what}")
    if not isinstance(tree, exp.Query):
        raise UnsafeQuery(f"only SELECT queries are allowed, found {tree.key.upper()}")
    _check_functions(tree)
    _check_tables(tree, {t.lower() for t in tables})
    text = tree.sql(dialect="duckdb")
    try:
        parsed = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise UnsafeQuery(f"DuckDB cannot parse the query: {exc}") from None
    if len(parsed) != 1 or parsed[0].type != duckdb.StatementType.SELECT:
        raise UnsafeQuery("DuckDB does not read the query as a single SELECT statement")
    return text


def tables_read(sql: str) -> list[str]:
    """The tables a query reads (its own CTEs excluded, scope by scope), lower case and sorted:
    the default declaration of an SQL tool created without `tables => [...]`."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError as exc:
        raise UnsafeQuery(f"the query does not parse: {str(exc).splitlines()[0]}") from None
    names = {
        _full_name(t) for t, is_cte in table_references(tree)
        if isinstance(t.this, exp.Identifier) and not is_cte
    }
    return sorted(names)


def table_references(
    node: exp.Expr, visible: frozenset[str] = frozenset()
) -> Iterator[tuple[exp.Table, bool]]:
    """Every table reference of a query, and whether it names a CTE *visible where it stands*.

    A CTE is visible in the query that defines it and in the CTEs after it (in itself only when
    the WITH is RECURSIVE); a qualified name (`main.t`) is never a CTE. So in
    `WITH secret AS (SELECT * FROM secret) SELECT * FROM secret` the inner `secret` is the
    table, not the CTE:

        >>> tree = sqlglot.parse_one(
        ...     "WITH secret AS (SELECT * FROM secret) SELECT * FROM secret", read="duckdb")
        >>> [(t.name, is_cte) for t, is_cte in table_references(tree)]
        [('secret', False), ('secret', True)]
    """
    if isinstance(node, exp.Table):
        name = node.name.lower()
        qualified = bool(node.args.get("db") or node.args.get("catalog"))
        yield node, (not qualified and name in visible)
        for key, child in node.args.items():
            if key in ("this", "db", "catalog"):
                continue  # the name itself
            yield from _references_in(child, visible)
        return
    with_ = node.args.get("with_") or node.args.get("with")
    if isinstance(with_, exp.With):
        recursive = bool(with_.args.get("recursive"))
        scope = set(visible)
        for cte in with_.expressions:
            name = cte.alias_or_name.lower()
            inner = frozenset(scope | {name}) if recursive else frozenset(scope)
            yield from table_references(cte.this, inner)
            scope.add(name)
        visible = frozenset(scope)
    for key, child in node.args.items():
        if child is with_ and key in ("with", "with_"):
            continue
        yield from _references_in(child, visible)


def _references_in(child: Any, visible: frozenset[str]) -> Iterator[tuple[exp.Table, bool]]:
    for item in child if isinstance(child, list) else [child]:
        if isinstance(item, exp.Expr):
            yield from table_references(item, visible)


def _check_functions(tree: exp.Expr) -> None:
    for node in tree.walk():
        if not isinstance(node, exp.Func):
            continue
        name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
        if (
            name in _FORBIDDEN_FUNCTIONS
            or name.startswith(_FORBIDDEN_PREFIXES)
            or name.endswith(_FORBIDDEN_SUFFIXES)
        ):
            raise UnsafeQuery(f"function {name}() is not allowed in a tool's query")


def _check_tables(tree: exp.Expr, declared: set[str]) -> None:
    for table, is_cte in table_references(tree):
        if not isinstance(table.this, exp.Identifier):
            raise UnsafeQuery(
                f"table functions are not allowed in a tool's query, found {table.this.sql('duckdb')}"
            )
        if is_cte:
            continue
        name = _full_name(table)
        if any(ch in table.name for ch in "/\\:.*?") or table.name.startswith("~"):
            raise UnsafeQuery(f"file paths and URLs are not tables: {table.name!r}")
        if name not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise UnsafeQuery(f"table {name!r} is not one the tool declares (tables: {allowed})")


def _full_name(table: exp.Table) -> str:
    parts = [table.args.get("catalog"), table.args.get("db"), table.this]
    return ".".join(p.name.lower() for p in parts if p is not None and p.name)
