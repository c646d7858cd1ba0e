"""The session's agents and tools: CREATE/DROP/SHOW AGENT and TOOL, kept across sessions.

When the database is a file they are stored, like models, in `halo_catalog.agents` and
`halo_catalog.tools` (name, definition as JSON); an in-memory database keeps them in the session.

    >>> import duckdb
    >>> catalog = AgentCatalog(duckdb.connect())
    >>> from halo_sql.parser.statements import parse_own_statement
    >>> _ = catalog.execute(parse_own_statement(
    ...     "CREATE AGENT a WITH (instructions => 'Say yes.', output => 'BOOLEAN')"),
    ...     resolve_model=lambda m: m)
    >>> catalog.agents["a"].shape.columns
    (('answer', 'BOOLEAN'),)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from halo_sql.agents.safety import check_read_only, tables_read
from halo_sql.agents.sandbox import admit
from halo_sql.agents.spec import AgentSpec, ToolKind, ToolSpec
from halo_sql.agents.tools import python_parameters, registered_function, registered_names
from halo_sql.errors import BinderError, duckdb_error
from halo_sql.parser.statements import (
    AgentStatement,
    CreateAgent,
    CreateTool,
    DropAgent,
    DropTool,
    ShowAgents,
    ShowTools,
    option_locations,
)

_AGENTS_TABLE = "halo_catalog.agents"
_TOOLS_TABLE = "halo_catalog.tools"


class AgentCatalog:
    """Agents and tools by name (lower case unless quoted), loaded from and saved to DuckDB."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, database: str = ":memory:") -> None:
        self.connection = connection
        self.database = database
        self.agents: dict[str, AgentSpec] = {}
        self.tools: dict[str, ToolSpec] = {}
        self._load()

    # -- lookups for the binder -------------------------------------------------------------------
    def agent(self, name: str) -> AgentSpec:
        key = name if name in self.agents else name.lower()
        if key not in self.agents:
            known = ", ".join(sorted(self.agents)) or "none"
            raise BinderError(
                f"unknown agent {name!r} (agents: {known}); create it with "
                f"CREATE AGENT {name} WITH (instructions => '...', tools => [...])"
            )
        return self.agents[key]

    def tools_of(self, agent: AgentSpec) -> tuple[ToolSpec, ...]:
        missing = [t for t in agent.tools if t not in self.tools]
        if missing:
            raise BinderError(f"agent {agent.name!r} uses tool(s) {missing} that no longer exist")
        return tuple(self.tools[t] for t in agent.tools)

    def describe(self, sql: str) -> list[tuple[str, str]]:
        """(name, DuckDB type) of each result column of a query, without running it."""
        try:
            rows = self.connection.sql(f"DESCRIBE {sql}").fetchall()
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
        return [(str(row[0]), str(row[1])) for row in rows]

    # -- statements -------------------------------------------------------------------------------
    def execute(
        self, statement: AgentStatement, *, resolve_model: Callable[[str], str]
    ) -> pa.Table | None:
        if isinstance(statement, CreateTool):
            return self._create_tool(statement)
        if isinstance(statement, CreateAgent):
            return self._create_agent(statement, resolve_model)
        if isinstance(statement, DropTool):
            return self._drop_tool(statement)
        if isinstance(statement, DropAgent):
            if statement.name not in self.agents:
                if statement.if_exists:
                    return None
                self.agent(statement.name)  # raises, naming the agents there are
            del self.agents[statement.name]
            self._save(_AGENTS_TABLE, statement.name, None)
            return None
        if isinstance(statement, ShowAgents):
            return self._show_agents()
        assert isinstance(statement, ShowTools)
        return self._show_tools()

    def _create_tool(self, statement: CreateTool) -> pa.Table | None:
        name, where = statement.name, f"CREATE TOOL {statement.name}"
        if name in self.tools and statement.if_not_exists:
            return None
        if name in self.tools and not statement.replace:
            raise BinderError(f"tool {name!r} already exists (use CREATE OR REPLACE TOOL)")
        if name == "final":
            raise BinderError(f"{where}: 'final' is reserved for an agent's final answer")
        options = dict(statement.options)
        if statement.kind == "sql" and "tables" not in options:
            options["tables"] = tables_read(statement.target)
        if statement.kind == "python" and "parameters" not in options:
            fn = registered_function(statement.target)
            if fn is not None:
                options["parameters"] = python_parameters(fn)
        try:
            tool = ToolSpec.create(
                name, statement.kind, statement.target, options, option_locations(statement.options)
            )
        except BinderError as exc:
            message = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
            raise BinderError(message, location=exc.location) from None
        if tool.kind is ToolKind.SQL:
            try:
                sql = check_read_only(tool.target, tool.tables)
            except BinderError as exc:
                raise BinderError(f"{where}: refused: {exc.message}") from None
            self._check_binds(sql, tool, where)  # typos and unknown columns, named as DuckDB does
            try:
                admit(tool, self.connection)
            except BinderError as exc:
                raise BinderError(f"{where}: refused: {exc.message}") from None
        elif tool.kind is ToolKind.PYTHON and registered_function(tool.target) is None:
            known = ", ".join(registered_names()) or "none"
            raise BinderError(
                f"{where}: python function {tool.target!r} is not registered (registered: "
                f"{known}); decorate it with @halo_sql.agents.tool_function first"
            )
        elif tool.kind is ToolKind.HTTP and urlsplit(tool.target).scheme not in ("http", "https"):
            raise BinderError(f"{where}: an HTTP tool needs an http:// or https:// URL")
        self.tools[name] = tool
        self._save(_TOOLS_TABLE, name, tool.to_json())
        return None

    def _check_binds(self, sql: str, tool: ToolSpec, where: str) -> None:
        """DuckDB binds the query (NULL for every parameter) so typos fail at CREATE TOOL."""
        params = {name: None for name in tool.parameter_schema.get("properties", {})}
        try:
            self.connection.sql(f"DESCRIBE {sql}", params=params or None).fetchall()
        except duckdb.Error as exc:
            raise BinderError(f"{where}: {duckdb_error(exc).message}") from None

    def _create_agent(
        self, statement: CreateAgent, resolve_model: Callable[[str], str]
    ) -> pa.Table | None:
        name = statement.name
        if name in self.agents and statement.if_not_exists:
            return None
        if name in self.agents and not statement.replace:
            raise BinderError(f"agent {name!r} already exists (use CREATE OR REPLACE AGENT)")
        agent = AgentSpec.create(name, statement.options, option_locations(statement.options))
        missing = [t for t in agent.tools if t not in self.tools]
        if missing:
            known = ", ".join(sorted(self.tools)) or "none"
            raise BinderError(
                f"CREATE AGENT {name}: unknown tool(s) {missing} (tools: {known}); create them "
                "first with CREATE TOOL"
            )
        if agent.model is not None:
            agent = replace(agent, model=resolve_model(agent.model))
        self.agents[name] = agent
        self._save(_AGENTS_TABLE, name, agent.to_json())
        return None

    def _drop_tool(self, statement: DropTool) -> pa.Table | None:
        name = statement.name
        if name not in self.tools:
            if statement.if_exists:
                return None
            known = ", ".join(sorted(self.tools)) or "none"
            raise BinderError(f"unknown tool {name!r} (tools: {known})")
        users = sorted(a.name for a in self.agents.values() if name in a.tools)
        if users:
            raise BinderError(f"tool {name!r} is used by agent(s) {users}; drop or replace them first")
        del self.tools[name]
        self._save(_TOOLS_TABLE, name, None)
        return None

    def _show_agents(self) -> pa.Table:
        rows = [
            {
                "name": a.name, "model": a.model, "tools": list(a.tools), "max_steps": a.max_steps,
                "output": a.output, "instructions": a.instructions,
            }
            for a in sorted(self.agents.values(), key=lambda a: a.name)
        ]
        schema = pa.schema(
            [("name", pa.string()), ("model", pa.string()), ("tools", pa.list_(pa.string())),
             ("max_steps", pa.int64()), ("output", pa.string()), ("instructions", pa.string())]
        )
        return pa.Table.from_pylist(rows, schema=schema)

    def _show_tools(self) -> pa.Table:
        rows = [
            {
                "name": t.name, "kind": t.kind.name, "target": t.target, "parameters": t.parameters,
                "tables": list(t.tables), "timeout": t.timeout, "description": t.description,
            }
            for t in sorted(self.tools.values(), key=lambda t: t.name)
        ]
        schema = pa.schema(
            [("name", pa.string()), ("kind", pa.string()), ("target", pa.string()),
             ("parameters", pa.string()), ("tables", pa.list_(pa.string())),
             ("timeout", pa.float64()), ("description", pa.string())]
        )
        return pa.Table.from_pylist(rows, schema=schema)

    # -- persistence ------------------------------------------------------------------------------
    def _load(self) -> None:
        for name, spec in self._rows(_TOOLS_TABLE):
            try:
                self.tools[name] = ToolSpec.from_json(spec)
            except (TypeError, ValueError, KeyError):
                continue  # written by another version: skip it rather than fail to connect
        for name, spec in self._rows(_AGENTS_TABLE):
            try:
                self.agents[name] = AgentSpec.from_json(spec)
            except (TypeError, ValueError, KeyError):
                continue

    def _rows(self, table: str) -> list[tuple[str, str]]:
        try:
            return [(str(n), str(s)) for n, s in
                    self.connection.sql(f"SELECT name, spec FROM {table}").fetchall()]
        except duckdb.Error:
            return []

    def _save(self, table: str, name: str, spec: str | None) -> None:
        if self.database == ":memory:" and not self._exists(table):
            return  # nothing outlives an in-memory database; keep its catalog clean
        con = self.connection
        con.sql("CREATE SCHEMA IF NOT EXISTS halo_catalog")
        con.sql(f"CREATE TABLE IF NOT EXISTS {table} (name VARCHAR PRIMARY KEY, spec VARCHAR)")
        con.sql(f"DELETE FROM {table} WHERE name = ?", params=[name])
        if spec is not None:
            con.sql(f"INSERT INTO {table} VALUES (?, ?)", params=[name, spec])

    def _exists(self, table: str) -> bool:
        try:
            self.connection.sql(f"SELECT 1 FROM {table} LIMIT 0").fetchall()
            return True
        except duckdb.Error:
            return False

