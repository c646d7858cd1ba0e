"""Bind agent calls in SQL: each becomes an `AgentCall` plan node read as a named input.

Part of the planner: it asks the statement's planner for what it needs through the narrow
`PlanningScope` (fresh input names, named inputs, planning an agent's input query), so it knows
nothing of `PlanBuilder` itself.

Three spellings, all rewritten before the LLM-call planner sees the statement:

    SELECT c_custkey, risk, steps, error
    FROM AGENT('analyst', input => (SELECT c_custkey, c_comment FROM customer)) AS a
        -> FROM __halo_agent_0 AS a          (input: the planned subquery)

    SELECT c.c_custkey, r.risk FROM customer c, LATERAL AGENT('analyst', input => (SELECT c.c_comment))
    AS r
        -> FROM customer c JOIN __halo_agent_0 AS r ON r.c_comment IS NOT DISTINCT FROM c.c_comment
           (input: SELECT DISTINCT c.c_comment FROM customer c WHERE <the outer WHERE's
            conjuncts over c>)

    SELECT id, AGENT_CALL('analyst', {'text': text}) AS risk FROM reviews
        -> SELECT id, __halo_ac_1.__v AS risk FROM reviews LEFT JOIN
           (SELECT text AS __k0, answer AS __v FROM __halo_agent_0) AS __halo_ac_1
           ON __halo_ac_1.__k0 IS NOT DISTINCT FROM text

Calls nest: the input of an agent may read another agent's output (a critic over a writer's
drafts), innermost first. Equal agent calls (same agent, same input plan) share one node.
Agent output tables are not in DuckDB's catalog while planning, so the binder wraps the
catalog: DuckDB's bind checks see them as typed empty subqueries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from halo_sql.agents.spec import RESERVED_COLUMNS, TOOL_CALL_TYPE, AgentSpec
from halo_sql.errors import BinderError, NotSupportedError
from halo_sql.logical.catalog import BindCatalog
from halo_sql.logical.functions import is_llm_call, location_of, struct_items
from halo_sql.logical.plan import AgentCall, PlanNode
from halo_sql.logical.sqlexpr import conjuncts
from halo_sql.sqltypes import sql_type_for

DIALECT = "duckdb"
AGENT = "agent"
AGENT_CALL = "agent_call"
AGENT_NAMES = frozenset({AGENT, AGENT_CALL})
_OVERRIDES = {"model", "max_steps", "max_tokens", "temperature", "seed"}
_AGENT_JOIN = "halo_agent_join"
_RESERVED_TYPES = (
    ("steps", "BIGINT"),
    ("tool_calls", sql_type_for(pa.list_(TOOL_CALL_TYPE))),
    ("error", "VARCHAR"),
)


def _is_named(node: exp.Expr, name: str) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.this).lower() == name


def _is_target(node: exp.Expr) -> bool:
    if isinstance(node, exp.Table | exp.Lateral):
        return _is_named(node.this, AGENT)
    return _is_named(node, AGENT_CALL)


def has_agent_calls(statement: exp.Expr) -> bool:
    """True if the statement calls an agent (AGENT in FROM, LATERAL AGENT, AGENT_CALL)."""
    return any(_is_target(node) for node in statement.walk())


class PlanningScope(Protocol):
    """What binding agent calls asks of the statement's planner (`PlanBuilder` is one)."""

    catalog: BindCatalog
    """The catalog the rest of the statement is planned with (replaced by one that knows the
    agents' output tables)."""

    def new_name(self, prefix: str) -> str:
        """A name unique in the statement (`__halo_agent_3`)."""
        ...

    def add_input(self, name: str, plan: PlanNode) -> None:
        """Make `plan`'s rows readable as the table `name` by the statement's queries."""
        ...

    def plan_input(self, query: exp.Expr, inputs: list[str]) -> PlanNode:
        """The plan of `query` on its own (it may read the named inputs `inputs`)."""
        ...


def lift_agent_calls(statement: exp.Expr, scope: PlanningScope) -> exp.Expr:
    """A copy of `statement` whose agent calls read named inputs of `scope` (see the module
    docstring); the scope's catalog is replaced by one that knows the agent outputs."""
    return _AgentBinder(scope).lift(statement.copy())


class _AgentBinder:
    def __init__(self, scope: PlanningScope) -> None:
        self.scope = scope
        base = scope.catalog
        if getattr(base, "agents", None) is None:
            raise BinderError("agents are not available here (no agent catalog in this session)")
        self.agents = base.agents
        self.schemas: dict[str, list[tuple[str, str]]] = {}
        """Output columns (name, DuckDB type) of every agent table made so far."""
        self.tables: dict[AgentCall, str] = {}
        self.catalog = _agent_aware(base, self.schemas)
        scope.catalog = self.catalog

    def lift(self, statement: exp.Expr) -> exp.Expr:
        while True:
            targets = [n for n in statement.walk() if _is_target(n)]
            if not targets:
                return statement
            # Innermost first (an agent whose arguments hold no other agent call), and calls in
            # earlier CTEs before later ones, which may read them.
            innermost = [
                n for n in targets if not any(_is_target(d) for d in n.walk() if d is not n)
            ]
            node = min(innermost, key=lambda n: _cte_position(n, statement))
            if isinstance(node, exp.Table):
                self._lift_table(node, statement)
            elif isinstance(node, exp.Lateral):
                self._lift_lateral(node, statement)
            else:
                self._lift_scalar(node, statement)

    # -- the three spellings ---------------------------------------------------------------------
    def _lift_table(self, node: exp.Table, statement: exp.Expr) -> None:
        call = node.this
        name, value, overrides = self._arguments(call, "AGENT")
        query = value.this if isinstance(value, exp.Subquery) else value
        if not isinstance(query, exp.Query):
            raise BinderError(
                f"AGENT('{name}', ...): the input must be a query, as in "
                f"AGENT('{name}', input => (SELECT ...))",
                location=location_of(call),
            )
        table, agent = self._agent_table(name, overrides, _with_ctes(query, statement), call)
        alias = node.args.get("alias")
        replacement = exp.to_table(table)
        replacement.set("alias", alias.copy() if alias is not None else exp.TableAlias(
            this=exp.to_identifier(agent.name)))
        node.replace(replacement)

    def _lift_lateral(self, node: exp.Lateral, statement: exp.Expr) -> None:
        call = node.this
        name, value, overrides = self._arguments(call, "LATERAL AGENT")
        query = value.this if isinstance(value, exp.Subquery) else value
        join, select = node.parent, node.parent.parent if node.parent is not None else None
        usage = (
            f"LATERAL AGENT('{name}', input => (SELECT t.col AS name, ...)) takes a SELECT of the "
            "outer row's columns with no FROM; for anything else use FROM AGENT('...', "
            "input => (SELECT ... FROM ... JOIN ...))"
        )
        if not isinstance(join, exp.Join) or not isinstance(select, exp.Select):
            raise NotSupportedError(usage, location=location_of(call))
        if not isinstance(query, exp.Select) or any(
            query.args.get(k) for k in ("from_", "from", "joins", "where", "group", "having")
        ):
            raise NotSupportedError(usage, location=location_of(call))
        joins = list(select.args.get("joins") or [])
        preceding = joins[: joins.index(join)]
        items = _named_items(query, name, call)
        source = self._input_select(items, select, preceding, allow_unqualified=False)
        table, agent = self._agent_table(name, overrides, _with_ctes(source, statement), call)
        alias = node.args.get("alias")
        alias_name = alias.name if alias is not None and alias.name else agent.name
        replacement = exp.to_table(table)
        replacement.set("alias", alias.copy() if alias is not None else exp.TableAlias(
            this=exp.to_identifier(alias_name)))
        join.set("this", replacement)
        on = [_same(exp.column(exp.to_identifier(k, quoted=True), table=alias_name), v)
              for k, v in items]
        if join.args.get("on") is not None:
            on.insert(0, join.args["on"])
        join.set("on", exp.and_(*on, copy=False))
        if (join.kind or "").upper() == "CROSS":
            join.set("kind", None)

    def _lift_scalar(self, node: exp.Expr, statement: exp.Expr) -> None:
        name, value, overrides = self._arguments(node, "AGENT_CALL")
        select = node.parent
        while select is not None and not isinstance(select, exp.Select):
            select = select.parent
        if select is None:
            raise NotSupportedError("AGENT_CALL is supported in SELECT queries only",
                                    location=location_of(node))
        if isinstance(value, exp.Struct):
            items = [(str(k), v) for k, v in struct_items(value).items()]
        else:
            items = [("input", value)]
        if len({k.lower() for k, _ in items}) != len(items):
            raise BinderError(f"AGENT_CALL('{name}', ...): input field names must be distinct",
                              location=location_of(node))
        referenced = {c.table.lower() for _, v in items for c in v.find_all(exp.Column) if c.table}
        joins = [
            j for j in select.args.get("joins") or []
            if not j.meta.get(_AGENT_JOIN) or j.alias_or_name.lower() in referenced
        ]
        source = self._input_select(items, select, joins, allow_unqualified=True)
        table, agent = self._agent_table(name, overrides, _with_ctes(source, statement), node)
        shape = agent.shape
        if shape.many:
            raise NotSupportedError(
                f"AGENT_CALL('{name}', ...) needs an agent with one answer per input; "
                f"'{agent.name}' answers with a list: use FROM AGENT('{name}', input => (...))",
                location=location_of(node),
            )
        if shape.per_property:
            result: exp.Expr = exp.Struct(expressions=[
                exp.PropertyEQ(this=exp.to_identifier(n),
                               expression=exp.column(exp.to_identifier(n, quoted=True)))
                for n, _ in shape.columns
            ])
        else:
            result = exp.column("answer")
        keys = [f"__k{i}" for i in range(len(items))]
        alias = self.scope.new_name("__halo_ac")
        lookup = exp.select(
            *[exp.column(exp.to_identifier(k, quoted=True)).as_(key)
              for (k, _), key in zip(items, keys, strict=True)],
            exp.alias_(result, "__v"),
        ).from_(table).subquery(alias)
        if select.args.get("from_") is None and select.args.get("from") is None:
            select.set("from_", exp.From(this=lookup))
        else:
            condition = exp.and_(*[
                _same(exp.column(key, table=alias), v) for key, (_, v) in zip(keys, items, strict=True)
            ], copy=False)
            join = exp.Join(this=lookup, side="LEFT", on=condition)
            join.meta[_AGENT_JOIN] = True
            select.append("joins", join)
        node.replace(exp.column("__v", table=alias))

    # -- shared steps ----------------------------------------------------------------------------
    def _arguments(
        self, call: exp.Expr, spelling: str
    ) -> tuple[str, exp.Expr, dict[str, Any]]:
        args = list(call.expressions)
        positional = [a for a in args if not isinstance(a, exp.Kwarg)]
        options = {str(a.this.name).lower(): a.expression for a in args if isinstance(a, exp.Kwarg)}
        where = location_of(call)
        usage = (
            f"{spelling}('agent name', input => (SELECT ...))" if spelling != "AGENT_CALL"
            else "AGENT_CALL('agent name', {'field': expression, ...})"
        )
        if not positional or not (isinstance(positional[0], exp.Literal) and positional[0].is_string):
            raise BinderError(f"{spelling}: the first argument is the agent's name as a string; "
                              f"usage: {usage}", location=where)
        name = str(positional[0].this)
        value = options.pop("input", None)
        rest = positional[1:]
        if value is None and rest:
            value, rest = rest[0], rest[1:]
        if value is None or rest:
            raise BinderError(f"{spelling}('{name}', ...) takes one input; usage: {usage}",
                              location=where)
        unknown = sorted(set(options) - _OVERRIDES)
        if unknown:
            raise BinderError(f"{spelling}('{name}', ...): unknown option(s) {unknown} "
                              f"(options: input, {', '.join(sorted(_OVERRIDES))})", location=where)
        overrides: dict[str, Any] = {}
        for key, node in options.items():
            if not isinstance(node, exp.Literal | exp.Neg):
                raise BinderError(f"{spelling}('{name}', ...): {key} must be a literal",
                                  location=where)
            text = node.sql(DIALECT).strip("'")
            overrides[key] = text if key == "model" else float(text)
        return name, value, overrides

    def _input_select(
        self,
        items: list[tuple[str, exp.Expr]],
        select: exp.Select,
        joins: list[exp.Join],
        *,
        allow_unqualified: bool,
    ) -> exp.Select:
        """SELECT DISTINCT <items> FROM <select's sources> WHERE <conjuncts over them>."""
        source = exp.select(
            *[exp.alias_(v.copy(), exp.to_identifier(k, quoted=True)) for k, v in items]
        ).distinct()
        from_ = select.args.get("from_") or select.args.get("from")
        if from_ is None:
            return source
        source.set("from_", from_.copy())
        for join in joins:
            source.append("joins", join.copy())
        aliases = {from_.this.alias_or_name.lower()} | {j.alias_or_name.lower() for j in joins}
        where = select.args.get("where")
        pushed = [
            c.copy() for c in (conjuncts(where.this) if where is not None else [])
            if _pushable(c, aliases, allow_unqualified)
        ]
        if pushed:
            source.set("where", exp.Where(this=exp.and_(*pushed, copy=False)))
        return source

    def _agent_table(
        self, name: str, overrides: dict[str, Any], query: exp.Expr, call: exp.Expr
    ) -> tuple[str, AgentSpec]:
        where = location_of(call)
        try:
            agent = self.agents.agent(name)
            tools = self.agents.tools_of(agent)
        except BinderError as exc:
            raise BinderError(exc.message, location=where) from None
        model = overrides.get("model") or agent.model or self.catalog.default_model
        if model is None:
            raise BinderError(
                f"agent {agent.name!r} has no model and the session has no default model; "
                "CREATE AGENT ... WITH (model => ...) or connect(model=...)",
                location=where,
            )
        try:
            model = self.catalog.resolve_model(str(model))
        except BinderError as exc:
            raise BinderError(f"agent {agent.name!r}: {exc.message}", location=where) from None
        changes: dict[str, Any] = {"model": model}
        for key in ("max_steps", "max_tokens", "seed"):
            if key in overrides:
                if overrides[key] < (0 if key == "seed" else 1):
                    raise BinderError(f"AGENT('{name}'): {key} must be positive", location=where)
                changes[key] = int(overrides[key])
        if "temperature" in overrides:
            changes["temperature"] = float(overrides["temperature"])
        agent = dataclasses.replace(agent, **changes)

        plan = self._plan_input(query)
        columns = self._describe(query)
        answer = [n.lower() for n, _ in agent.shape.columns]
        clash = sorted({c.lower() for c, _ in columns} & (set(answer) | set(RESERVED_COLUMNS)))
        if clash:
            raise BinderError(
                f"AGENT('{name}'): input column(s) {clash} have the names of output columns of "
                f"the agent ({', '.join([*answer, *RESERVED_COLUMNS])}); rename them in the input",
                location=where,
            )
        node = AgentCall(plan, agent, tools, tuple(c for c, _ in columns))
        table = self.tables.get(node)
        if table is None:
            table = self.scope.new_name("__halo_agent")
            self.tables[node] = table
            self.scope.add_input(table, node)
            self.schemas[table] = [*columns, *agent.shape.columns, *_RESERVED_TYPES]
        return table, agent

    def _plan_input(self, query: exp.Expr) -> PlanNode:
        return self.scope.plan_input(query, list(self.tables.values()))

    def _describe(self, query: exp.Expr) -> list[tuple[str, str]]:
        return self.agents.describe(_substitute(query.sql(DIALECT), self.schemas))  # type: ignore[no-any-return]


# -- helpers ---------------------------------------------------------------------------------------
def _agent_aware(base: BindCatalog, schemas: dict[str, list[tuple[str, str]]]) -> BindCatalog:
    """The catalog with agent output tables added (as typed empty tables for DuckDB's checks)."""

    def table_columns(table: exp.Table) -> dict[str, str] | None:
        if not table.args.get("db") and table.name in schemas:
            return {name.lower(): kind for name, kind in schemas[table.name]}
        return base.table_columns(table)

    def check_sql(sql: str) -> None:
        base.check_sql(_substitute(sql, schemas))

    output_names: Callable[[str], list[str]] | None = None
    if base.output_names is not None:
        names = base.output_names

        def output_names(sql: str) -> list[str]:
            return names(_substitute(sql, schemas))

    return dataclasses.replace(
        base, table_columns=table_columns, check_sql=check_sql, output_names=output_names
    )


def _substitute(sql: str, schemas: dict[str, list[tuple[str, str]]]) -> str:
    """`sql` with every agent table replaced by an empty SELECT of its typed columns."""
    if not schemas or not any(name in sql for name in schemas):
        return sql
    try:
        tree = sqlglot.parse_one(sql, read=DIALECT)
    except SqlglotError:
        return sql
    for table in list(tree.find_all(exp.Table)):
        columns = schemas.get(table.name)
        if columns is None or table.args.get("db"):
            continue
        empty = exp.select(*[
            exp.cast(exp.Null(), _data_type(kind)).as_(exp.to_identifier(name, quoted=True))
            for name, kind in columns
        ]).where(exp.false())
        alias = table.args.get("alias")
        table.replace(exp.Subquery(
            this=empty,
            alias=alias.copy() if alias is not None else exp.TableAlias(
                this=exp.to_identifier(table.name)),
        ))
    return tree.sql(DIALECT)


def _data_type(kind: str) -> exp.DataType:
    try:
        return exp.DataType.build(kind, dialect=DIALECT)
    except (SqlglotError, ValueError):
        return exp.DataType.build("VARCHAR")


def _statement_ctes(statement: exp.Expr) -> list[exp.CTE]:
    with_ = statement.args.get("with_") or statement.args.get("with")
    return list(with_.expressions) if with_ is not None else []


def _cte_position(node: exp.Expr, statement: exp.Expr) -> int:
    ctes = _statement_ctes(statement)
    parent: exp.Expr | None = node
    while parent is not None:
        if isinstance(parent, exp.CTE) and parent in ctes:
            return ctes.index(parent)
        parent = parent.parent
    return len(ctes)


def _with_ctes(query: exp.Expr, statement: exp.Expr) -> exp.Expr:
    """The input query with the statement's CTEs it reads (directly or through other CTEs), so
    it can be planned on its own."""
    ctes = _statement_ctes(statement)
    if not ctes or not isinstance(query, exp.Query):
        return query
    if query.args.get("with_") or query.args.get("with"):
        return query
    needed = {t.name.lower() for t in query.find_all(exp.Table)}
    for cte in reversed(ctes):
        if cte.alias_or_name.lower() in needed:
            needed |= {t.name.lower() for t in cte.this.find_all(exp.Table)}
    used = [c for c in ctes if c.alias_or_name.lower() in needed and not has_agent_calls(c)]
    if not used:
        return query
    standalone = query.copy()
    standalone.set("with_", exp.With(expressions=[c.copy() for c in used]))
    return standalone


def _named_items(query: exp.Select, name: str, call: exp.Expr) -> list[tuple[str, exp.Expr]]:
    items = []
    for projection in query.expressions:
        if isinstance(projection, exp.Alias):
            items.append((projection.alias, projection.this))
        elif isinstance(projection, exp.Column) and not isinstance(projection.this, exp.Star):
            items.append((projection.name, projection))
        else:
            raise BinderError(
                f"LATERAL AGENT('{name}'): name the input {projection.sql(DIALECT)} "
                f"(write it as ... AS name)",
                location=location_of(call),
            )
    if len({k.lower() for k, _ in items}) != len(items):
        raise BinderError(f"LATERAL AGENT('{name}'): input names must be distinct",
                          location=location_of(call))
    return items


def _same(column: exp.Expr, value: exp.Expr) -> exp.Expr:
    return exp.NullSafeEQ(this=column, expression=value.copy())


def _pushable(condition: exp.Expr, aliases: set[str], allow_unqualified: bool) -> bool:
    """A WHERE conjunct that only reads the agent input's sources (so it can filter the rows
    before the agent runs rather than after)."""
    for node in condition.walk():
        if isinstance(node, exp.Query) or _is_target(node):
            return False
        if is_llm_call(node) and not allow_unqualified:
            return False  # its template slots may name the agent's own output
        if isinstance(node, exp.Column):
            if node.table and node.table.lower() not in aliases:
                return False
            if not node.table and not allow_unqualified:
                return False
    return True
