"""An SQL tool sees only what it declares: its query is bound and planned in a sandbox first.

The sandbox is a separate DuckDB database in the process whose catalog holds nothing but empty
stand-ins (columns and types, no rows) of the tool's declared tables, with external access off (no files,
no network, no ATTACH, INSTALL or LOAD), extension autoloading off and its configuration locked.
DuckDB itself binds and plans the tool's query there, so every name resolves by DuckDB's own
rules (CTE scopes, search path, macros, views) against a catalog where undeclared things do not
exist. The query is admitted only if

* it binds there (an undeclared table, view, macro, sequence, type or attached database is
  unknown in the sandbox, however the query spells or scopes it),
* its plan reads nothing but the declared tables (which the sandbox holds as typed empty views,
  so a write aimed at them cannot bind either): any scan (a table function such as
  `duckdb_tables()`, `duckdb_settings()`, `duckdb_secrets()`, `read_csv`, `range`, or a system view
  such as `information_schema.tables`, which expands into them) is refused,
* every function it calls, read from DuckDB's own parse (`json_serialize_sql`), is a built-in
  that does not read the engine's state (`current_setting`, `getvariable`, `version`, ...), and is
  not redefined by a macro in the session's database (a macro may shadow a built-in there).

Why bind in a sandbox and run on the session's connection, rather than run in the sandbox: DuckDB
cannot scan another database instance's tables natively (a relation of one instance is refused by
another; ATTACH of the same file from a second instance is unsafe, of `:memory:` impossible), and
feeding the sandbox through Arrow would stream whole tables per call. Run where the data lives,
the admitted query keeps DuckDB's filter pushdown, zone maps and indexes, so a tool over
`lineitem` costs what the query costs. What differs between the two catalogs is only what the
checks above exclude. `halo_sql.agents.safety.check_read_only` (one read-only statement over
declared tables, per scope) stays in front as a second, independent line.

Admissions are cached per (tool, the declared tables' schemas, the session's own functions), so
a tool is admitted once, not per call; the sandbox reads schemas only, never rows.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import duckdb

from halo_sql.agents.safety import STATE_FUNCTIONS, STATE_PREFIXES, UnsafeQuery, check_read_only
from halo_sql.agents.spec import ToolSpec

_HARMLESS_LEAVES = frozenset(
    {
        "DUMMY_SCAN", "COLUMN_DATA_SCAN", "CTE_SCAN", "DELIM_SCAN", "EMPTY_RESULT",
        "CHUNK_SCAN", "REC_CTE_SCAN", "RECURSIVE_CTE_SCAN", "EXPRESSION_SCAN",
        "RECURSIVE_RECURRING_CTE_SCAN",
    }
)
"""Plan leaves that read no table: constants, VALUES, CTE results, correlated inputs."""

_CACHE_SIZE = 256
_cache: OrderedDict[str, str] = OrderedDict()
_cache_lock = threading.Lock()


def admit(tool: ToolSpec, connection: duckdb.DuckDBPyConnection) -> str:
    """The SQL to run for `tool` on `connection` (`:name` parameters as `$name`), once the
    sandbox admits it; raises UnsafeQuery saying what the query tried to see."""
    sql = check_read_only(tool.target, tool.tables)
    schemas = {name: _schema(connection, name) for name in tool.tables}
    own_functions = _own_functions(connection)
    key = json.dumps([sql, sorted(schemas.items()), sorted(own_functions)])
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    params = sorted(tool.parameter_schema.get("properties", {}))
    with _Sandbox(schemas) as sandbox:
        called = sandbox.functions(sql)
        for name in sorted(called):
            if name in own_functions:
                raise UnsafeQuery(
                    f"function {name}() is defined in this database (a macro or function of "
                    "the session, which may read any table); a tool may call built-in functions only"
                )
            if name in STATE_FUNCTIONS or name.startswith(STATE_PREFIXES):
                raise UnsafeQuery(
                    f"function {name}() reads the engine's state (settings, secrets, sessions), "
                    "which a tool cannot see"
                )
        sandbox.check_plan(sql, params, set(schemas))
    with _cache_lock:
        _cache[key] = sql
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return sql


def _schema(connection: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, str]]:
    """(column, DuckDB type) of a declared table as the session's connection resolves it."""
    try:
        rows = connection.sql(f"DESCRIBE SELECT * FROM {_quoted(name)}").fetchall()
    except duckdb.Error as exc:
        raise UnsafeQuery(
            f"declared table {name!r} cannot be read here: {str(exc).splitlines()[0]}"
        ) from None
    return [(str(row[0]), str(row[1])) for row in rows]


def _own_functions(connection: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the functions and macros the session's database defines (not DuckDB's)."""
    # Fully qualified and free of functions and operators: a macro of the session may shadow
    # any name it could resolve, duckdb_functions() and lower() included.
    rows = connection.sql(
        "SELECT function_name, internal FROM system.main.duckdb_functions()"
    ).fetchall()
    return {str(name).lower() for name, internal in rows if not internal}


def _quoted(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class _Sandbox:
    """A throwaway DuckDB database holding empty copies of the declared tables."""

    def __init__(self, schemas: dict[str, list[tuple[str, str]]]) -> None:
        self.con = duckdb.connect(
            ":memory:",
            config={
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
                "allow_community_extensions": False,
            },
        )
        try:
            for name, columns in schemas.items():
                self._mirror(name, columns)
            # Plans as bound, before the optimizer folds or prunes anything (a scan of an empty
            # table would otherwise vanish into an empty result).
            for setting in ("enable_optimizer = false", "enable_external_access = false",
                            "lock_configuration = true"):
                self.con.sql(f"SET {setting}")
        except BaseException:
            self.con.close()
            raise

    def __enter__(self) -> _Sandbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.con.close()

    def _mirror(self, name: str, columns: list[tuple[str, str]]) -> None:
        # A view of a typed empty relation, not a table: the query binds against the declared
        # columns and types, a DELETE/UPDATE/INSERT aimed at it (a data-modifying CTE, say)
        # cannot bind, and the sandbox holds no table at all, so any scan its plan shows reads
        # something that is not declared.
        parts = name.split(".")
        if len(parts) == 3:
            self.con.sql(f"ATTACH ':memory:' AS {_quoted(parts[0])}")
        if len(parts) >= 2:
            self.con.sql(f"CREATE SCHEMA IF NOT EXISTS {_quoted('.'.join(parts[:-1]))}")

        def body(typed: bool) -> str:
            return ", ".join(
                f"CAST(NULL AS {kind if typed else 'VARCHAR'}) AS {_quoted(column)}"
                for column, kind in columns
            ) or "NULL AS __none"

        try:
            self.con.sql(f"CREATE VIEW {_quoted(name)} AS SELECT {body(True)} LIMIT 0")
        except duckdb.Error:
            # A type only the session's database knows (a user ENUM, say): text is enough to bind.
            self.con.sql(f"CREATE VIEW {_quoted(name)} AS SELECT {body(False)} LIMIT 0")

    def functions(self, sql: str) -> set[str]:
        """The function names the query calls, as DuckDB's own parser reads them."""
        text = self.con.execute("SELECT json_serialize_sql($q)", {"q": sql}).fetchall()[0][0]
        tree = json.loads(text)
        if tree.get("error"):  # not a query (DuckDB serializes SELECT statements only)
            raise UnsafeQuery(f"DuckDB does not read it as a query: {tree.get('error_message')}")
        if len(tree.get("statements") or []) != 1:
            raise UnsafeQuery("a tool runs exactly one statement")
        return {str(name).lower() for name in _values(tree, "function_name")}

    def check_plan(self, sql: str, params: list[str], declared: set[str]) -> None:
        values = {name: None for name in params}
        try:
            rows = self.con.execute(f"EXPLAIN (FORMAT JSON) {sql}", values or None).fetchall()
        except duckdb.Error as exc:
            raise UnsafeQuery(
                "the query does not bind where only its declared tables "
                f"({', '.join(sorted(declared)) or 'none'}) exist: {str(exc).splitlines()[0]}"
            ) from None
        for leaf in _leaves(json.loads(rows[0][1])):
            operator = str(leaf.get("name", "")).strip()
            extra = leaf.get("extra_info")
            info: dict[str, Any] = extra if isinstance(extra, dict) else {}
            if operator in _HARMLESS_LEAVES:
                continue
            what = info.get("Table") or info.get("Function") or operator
            raise UnsafeQuery(
                f"the query reads {str(what).lower()}, which is not one of its declared tables "
                f"({', '.join(sorted(declared)) or 'none'})"
            )


def _values(tree: Any, key: str) -> Iterator[Any]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield v
            else:
                yield from _values(v, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _values(item, key)


def _leaves(plan: Any) -> Iterator[dict[str, Any]]:
    nodes = plan if isinstance(plan, list) else [plan]
    for node in nodes:
        children = node.get("children") or []
        if children:
            yield from _leaves(children)
        else:
            yield node
