"""SQL tools see only the tables they declare.

Two independent lines hold each escape route: the sandbox (DuckDB binds and plans the query in a
database that holds only empty copies of the declared tables, external access off, configuration
locked; halo_sql.agents.sandbox) and the parse check (one read-only SELECT over declared tables,
scope by scope; halo_sql.agents.safety). Each route is tried against both, alone, and through
CREATE TOOL and an agent run."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from agent_script import ScriptedBackend, use_backend

import halo_sql
from halo_sql.agents import sandbox
from halo_sql.agents.safety import UnsafeQuery, check_read_only
from halo_sql.agents.sandbox import admit
from halo_sql.agents.spec import ToolKind, ToolSpec

SETUP = """
CREATE TABLE orders AS SELECT range AS order_id, range % 3 AS customer_id FROM range(12);
CREATE TABLE secret AS SELECT 'hunter2' AS p;
CREATE VIEW secret_view AS SELECT * FROM secret;
CREATE SCHEMA sales;
CREATE TABLE sales.items AS SELECT 1 AS item_id;
CREATE MACRO leak() AS (SELECT max(p) FROM secret);
CREATE MACRO leak_rows() AS TABLE SELECT * FROM secret;
CREATE MACRO lower(x) AS (SELECT max(p) FROM secret);
CREATE SEQUENCE seq;
SET VARIABLE api_key = 'sk-123';
"""


@pytest.fixture
def con() -> Iterator[halo_sql.Connection]:
    con = halo_sql.connect(backend="sim")
    con.sql(SETUP)
    sandbox._cache.clear()
    yield con
    con.close()


def tool(sql: str, tables: tuple[str, ...] = ("orders",), params: str = "{}") -> ToolSpec:
    schema = '{"type": "object", "properties": {}, "additionalProperties": false}'
    if params != "{}":
        schema = params
    return ToolSpec("t", ToolKind.SQL, sql, schema, tables=tables)


ESCAPES = {
    "cte_named_like_the_table_reads_it": "WITH secret AS (SELECT * FROM secret) SELECT * FROM secret",
    "cte_of_another_scope": "SELECT * FROM (WITH secret AS (SELECT 1 AS p) SELECT * FROM secret) s, secret",
    "qualified_undeclared_table": "SELECT * FROM main.secret",
    "catalog_qualified_table": "SELECT * FROM memory.main.secret",
    "undeclared_view": "SELECT * FROM secret_view",
    "scalar_subquery": "SELECT (SELECT max(p) FROM secret) AS p FROM orders",
    "lateral_subquery": "SELECT * FROM orders, LATERAL (SELECT p FROM secret) s",
    "union_branch": "SELECT order_id::VARCHAR FROM orders UNION ALL SELECT p FROM secret",
    "in_subquery": "SELECT * FROM orders WHERE 'hunter2' IN (SELECT p FROM secret)",
    "current_setting": "SELECT current_setting('secret_directory') AS s FROM orders",
    "getvariable": "SELECT getvariable('api_key') AS k FROM orders",
    "version": "SELECT version() AS v",
    "getenv": "SELECT getenv('HOME') AS h FROM orders",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "settings_in_a_subquery": "SELECT (SELECT max(value) FROM duckdb_settings()) AS v FROM orders",
    "duckdb_secrets": "SELECT * FROM duckdb_secrets()",
    "duckdb_tables": "SELECT * FROM duckdb_tables()",
    "information_schema": "SELECT table_name FROM information_schema.tables",
    "pg_catalog": "SELECT relname FROM pg_catalog.pg_class",
    "sqlite_master": "SELECT * FROM sqlite_master",
    "catalog_macro": "SELECT pg_get_viewdef(1) AS d FROM orders",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "file_path_as_table": "SELECT * FROM '/etc/passwd'",
    "glob": "SELECT * FROM glob('/etc/*')",
    "user_macro": "SELECT leak() AS p FROM orders",
    "user_macro_shadowing_a_builtin": "SELECT lower('X') AS p FROM orders",
    "table_macro": "SELECT * FROM leak_rows()",
    "sequence": "SELECT nextval('seq') AS n",
    "multiple_statements": "SELECT * FROM orders; SELECT * FROM secret",
    "attach": "ATTACH '/tmp/halo-attached.db' AS x",
    "copy": "COPY orders TO '/tmp/halo-out.csv'",
    "set": "SET threads = 1",
    "pragma": "PRAGMA database_list",
    "data_modifying_cte": "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
}


@pytest.mark.parametrize("sql", list(ESCAPES.values()), ids=list(ESCAPES))
def test_each_escape_route_is_refused_by_the_sandbox_and_by_create_tool(
    con: halo_sql.Connection, sql: str
) -> None:
    with pytest.raises(UnsafeQuery):
        admit(tool(sql), con.session.connection)
    quoted = sql.replace("'", "''")
    with pytest.raises(halo_sql.BinderError, match="CREATE TOOL bad"):
        con.sql(f"CREATE TOOL bad AS SQL '{quoted}' WITH (tables => [orders])")


# Routes that only the engine can see through: the parse check alone lets them pass, so the
# sandbox is what stops them.
PARSE_BLIND = {"user_macro_shadowing_a_builtin", "user_macro"}


@pytest.mark.parametrize("sql", list(ESCAPES.values()), ids=list(ESCAPES))
def test_the_sandbox_alone_refuses_each_route(
    con: halo_sql.Connection, sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "check_read_only", lambda text, tables: text)  # no second line
    with pytest.raises(UnsafeQuery):
        admit(tool(sql), con.session.connection)


@pytest.mark.parametrize(
    "sql", [v for k, v in ESCAPES.items() if k not in PARSE_BLIND],
    ids=[k for k in ESCAPES if k not in PARSE_BLIND],
)
def test_the_parse_check_alone_refuses_each_route(sql: str) -> None:
    with pytest.raises(UnsafeQuery):
        check_read_only(sql, ["orders"])


def test_a_refused_tool_is_an_observation_at_run_time(con: halo_sql.Connection) -> None:
    # A definition that slipped past CREATE TOOL (an edited catalog): refused before it runs.
    con.sql("CREATE TOOL orders_of AS SQL 'SELECT order_id FROM orders WHERE customer_id = :c' "
            "WITH (parameters => '{\"c\": \"integer\"}')")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [orders_of])")
    spec = con.session.agents.tools["orders_of"]
    con.session.agents.tools["orders_of"] = dataclasses.replace(
        spec, target="SELECT lower('x') AS order_id FROM orders WHERE customer_id = :c"
    )
    use_backend(con, ScriptedBackend(
        lambda t: {"action": "orders_of", "arguments": {"c": 1}} if t.step == 1
        else {"action": "final", "answer": t.results[0]}
    ))
    answer = con.sql("SELECT answer FROM AGENT('a', input => (SELECT 1 AS id))").column("answer")
    text = answer[0].as_py()
    assert text.startswith("error: refused: function lower() is defined in this database")
    assert "hunter2" not in text


ALLOWED = {
    "plain_lookup": ("SELECT order_id FROM orders WHERE customer_id = :c ORDER BY order_id",
                     ("orders",), '{"c": "integer"}'),
    "cte_reading_a_declared_table": ("WITH o AS (SELECT * FROM orders) SELECT count(*) AS n FROM o",
                                     ("orders",), "{}"),
    "recursive_cte": ("WITH RECURSIVE secret AS (SELECT 1 AS p UNION ALL SELECT p + 1 FROM secret "
                      "WHERE p < 3) SELECT count(*) AS n FROM secret, orders", ("orders",), "{}"),
    "declared_view": ("SELECT * FROM secret_view", ("secret_view",), "{}"),
    "declared_schema_table": ("SELECT item_id FROM sales.items", ("sales.items",), "{}"),
    "builtin_functions": ("SELECT upper(order_id::VARCHAR) || '-' || abs(-1) AS x, now() IS NOT NULL AS t "
                          "FROM orders LIMIT 1", ("orders",), "{}"),
}


@pytest.mark.parametrize(("sql", "tables", "params"), list(ALLOWED.values()), ids=list(ALLOWED))
def test_queries_over_declared_tables_are_admitted(
    con: halo_sql.Connection, sql: str, tables: tuple[str, ...], params: str
) -> None:
    from halo_sql.agents.spec import parameter_schema

    spec = tool(sql, tables, '{"type": "object"}')
    if params != "{}":
        import json

        spec = dataclasses.replace(spec, parameters=json.dumps(parameter_schema(params, "t")))
    text = admit(spec, con.session.connection)
    values = {"c": 1} if ":c" in sql else None
    assert con.session.connection.sql(text, params=values).fetchall() is not None


def test_a_tool_runs_end_to_end_with_bound_arguments(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL orders_of AS SQL 'SELECT order_id FROM orders WHERE customer_id = :c "
            "ORDER BY order_id' WITH (parameters => '{\"c\": \"integer\"}')")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [orders_of])")
    use_backend(con, ScriptedBackend(
        lambda t: {"action": "orders_of", "arguments": {"c": 2}} if t.step == 1
        else {"action": "final", "answer": t.results[0]}
    ))
    answer = con.sql("SELECT answer FROM AGENT('a', input => (SELECT 1 AS id))").column("answer")
    assert answer[0].as_py() == '[{"order_id": 2}, {"order_id": 5}, {"order_id": 8}, {"order_id": 11}]'


class _Recording:
    """A connection that records the SQL it is asked to run."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con, self.seen = con, []  # type: ignore[var-annotated]

    def sql(self, query: str, **kwargs: Any) -> Any:
        self.seen.append(query)
        return self.con.sql(query, **kwargs)


def test_admission_reads_schemas_never_rows_and_is_cached() -> None:
    con = duckdb.connect()
    con.sql("CREATE TABLE lineitem AS SELECT range AS l_orderkey, range % 7 AS l_qty "
            "FROM range(3000000)")
    spec = tool("SELECT sum(l_qty) AS q FROM lineitem WHERE l_orderkey = :k", ("lineitem",),
                '{"type": "object", "properties": {"k": {"type": "integer"}}}')
    recording = _Recording(con)
    began = time.perf_counter()
    admit(spec, recording)  # type: ignore[arg-type]
    first = time.perf_counter() - began
    assert all(q.startswith("DESCRIBE") or "duckdb_functions()" in q for q in recording.seen), recording.seen
    began = time.perf_counter()
    admit(spec, recording)  # type: ignore[arg-type]
    assert time.perf_counter() - began < first  # the second admission is a cache hit
    assert first < 2.0, f"admission took {first:.2f} s for a 3M-row table"
