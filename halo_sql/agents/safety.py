"""The read-only check of SQL tools: one SELECT over the tables the tool declares, nothing else.

An SQL tool's query runs on the session's database with arguments the *model* chose, so it is
held to a strict shape before it is stored and again before every run:

* exactly one statement, a query (SELECT, set operation, VALUES); no DDL or DML anywhere inside
  it (a data-modifying CTE included), no ATTACH/DETACH/COPY/INSTALL/LOAD/PRAGMA/SET/USE;
* every table it reads is one the tool declares (or a CTE of the query itself); no table
  functions (read_csv, glob, query, ...), no file paths or URLs in FROM;
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

from collections.abc import Collection

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
_FORBIDDEN_FUNCTIONS = frozenset(
    {
        "glob", "query", "query_table", "sniff_csv", "getenv", "nextval", "currval", "setseed",
        "duckdb_secrets", "which_secret", "load_aws_credentials", "json_execute_serialized_sql",
        "checkpoint", "force_checkpoint", "duckdb_extensions",
    }
)
_FORBIDDEN_PREFIXES = (
    "read_", "parquet_", "iceberg_", "delta_", "http_", "pragma_", "sqlite_", "postgres_",
    "mysql_", "text_", "csv_",
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
    """The tables a query reads (its own CTEs excluded), lower case and sorted: the default
    declaration of an SQL tool created without `tables => [...]`."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError as exc:
        raise UnsafeQuery(f"the query does not parse: {str(exc).splitlines()[0]}") from None
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    names = {
        _full_name(t) for t in tree.find_all(exp.Table)
        if isinstance(t.this, exp.Identifier) and t.name.lower() not in ctes
    }
    return sorted(names)


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
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise UnsafeQuery(
                f"table functions are not allowed in a tool's query, found {table.this.sql('duckdb')}"
            )
        name = _full_name(table)
        if name in ctes:
            continue
        if any(ch in table.name for ch in "/\\:.*?") or table.name.startswith("~"):
            raise UnsafeQuery(f"file paths and URLs are not tables: {table.name!r}")
        if name not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise UnsafeQuery(f"table {name!r} is not one the tool declares (tables: {allowed})")


def _full_name(table: exp.Table) -> str:
    parts = [table.args.get("catalog"), table.args.get("db"), table.this]
    return ".".join(p.name.lower() for p in parts if p is not None and p.name)
