"""Build the logical plan of a SQL statement with LLM calls (the binder).

The relational parts stay SQL that DuckDB runs; LLM calls are *lifted* into operators over the
rows that reach them (see `halo_sql.logical.plan`):

1. LLM calls are found and their arguments read (`functions.read_call_site`).
2. DuckDB binds the statement with every LLM call replaced by a typed NULL, so unknown tables and
   columns are reported by DuckDB before any model work.
3. sqlglot qualifies every column against the DuckDB catalog; template slots `{col}` are resolved
   in the scope of the SELECT they appear in.
4. CTEs, derived tables and set-operation branches that contain LLM calls become named inputs
   (planned recursively); a SELECT block with LLM calls becomes
   `source (FROM + relational WHERE) -> LLM predicates -> LIMIT -> LLM maps -> residual SQL`.
   A call under CASE/IF/COALESCE/OR is guarded: its slots are NULL (no request) on the rows
   where its answer cannot change the result (`_guard`).
5. Every query keeps only the CTEs it reads, and reads a named input whose plan is a row-local
   SELECT over another input through that input (`_read_through_row_local_inputs`): CTE chains
   are single chains of operators, and no CTE nothing reads is planned.
6. Calls the block planner does not lift (aggregate LLM functions, calls in correlated subqueries,
   HAVING, outer-join conditions, ...) run inside DuckDB as vectorized UDFs: still one batch per
   vector, still correct, just not reordered by the planner.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from halo_sql.errors import BinderError
from halo_sql.llm.base import OutputKind
from halo_sql.logical.agent_calls import has_agent_calls, lift_agent_calls
from halo_sql.logical.catalog import BindCatalog
from halo_sql.logical.functions import (
    CallSite,
    check_condition_use,
    is_llm_call,
    location_of,
    read_call_site,
    struct_items,
)
from halo_sql.logical.llm_call import LLMFunction
from halo_sql.logical.plan import (
    DuckDBQuery,
    Limit,
    LLMFilter,
    LLMMap,
    LLMUdf,
    NamedInput,
    PlanNode,
    Project,
    SQLFilter,
    StatementPlan,
)
from halo_sql.logical.sqlexpr import (
    VOLATILE_FUNCTIONS,
    conjuncts,
    drop_unused_ctes,
    row_local_select,
)
from halo_sql.sqltypes import sql_type_for

DIALECT = "duckdb"
ROW_ALIAS = "__halo_r"
_CALL_TAG = "halo_call"


@dataclass(frozen=True)
class PlannerOptions:
    """Switches for the planner's rewrites (tests compare plans with each one on and off)."""

    lift_llm_calls: bool = True
    """False: no call is lifted into LLM operators; every call runs as a DuckDB function (the
    path taken where lifting does not apply). Answers must be the same either way."""


@dataclass
class _Names:
    counter: itertools.count = field(default_factory=lambda: itertools.count())

    def next(self, prefix: str) -> str:
        return f"{prefix}_{next(self.counter)}"


def contains_llm_call(node: exp.Expr) -> bool:
    return any(is_llm_call(n) for n in node.walk())


class PlanBuilder:
    """Builds one statement's plan; see the module docstring for the steps."""

    def __init__(self, catalog: BindCatalog, options: PlannerOptions | None = None) -> None:
        self.catalog = catalog
        self.options = options or PlannerOptions()
        self.names = _Names()
        self.notes: list[str] = []
        self.sites: dict[int, CallSite] = {}
        self.inputs: dict[str, NamedInput] = {}
        self.udfs: dict[str, LLMUdf] = {}
        self._udf_names: dict[str, str] = {}
        self.llm_columns: dict[str, str] = {}
        """Column name of each distinct lifted call (call and slot SQL), across blocks."""
        self.qualified = False

    # -- the planning scope of agent calls (halo_sql.logical.agent_calls.PlanningScope) -------
    def new_name(self, prefix: str) -> str:
        return self.names.next(prefix)

    def add_input(self, name: str, plan: PlanNode) -> None:
        self.inputs[name] = NamedInput(name, plan)

    def plan_input(self, query: exp.Expr, inputs: list[str]) -> PlanNode:
        sub = PlanBuilder(self.catalog, self.options)
        sub.names = self.names  # one counter: input names are unique in the statement
        sub.inputs.update({name: self.inputs[name] for name in inputs})
        plan = sub.build(query, query.sql(DIALECT))
        self.notes.extend(n for n in plan.notes if n not in self.notes)
        return plan.root

    # -- entry point -------------------------------------------------------------------------
    def build(self, statement: exp.Expr, sql: str) -> StatementPlan:
        if has_agent_calls(statement):
            # Agent calls become named inputs first (halo_sql.logical.agent_calls); the rest of the
            # statement is then planned as usual, reading their outputs as tables.
            statement = lift_agent_calls(statement, self)
        if not contains_llm_call(statement):
            if self.inputs:  # agent outputs (possibly planned by an enclosing statement)
                return StatementPlan(self._duckdb(statement), tuple(self.notes))
            return StatementPlan(DuckDBQuery(sql))
        statement = statement.copy()
        _alias_unnamed_projections(statement)
        calls = [node for node in statement.walk() if is_llm_call(node)]
        for tag, node in enumerate(calls):
            # The tag survives the copies qualification makes (it may also duplicate a call, e.g.
            # when it expands `GROUP BY 1`), so every copy finds its call site again.
            node.meta[_CALL_TAG] = tag
            site = read_call_site(node, default_model=self.catalog.default_model)
            check_condition_use(site)
            site.call = _with_model(site.call, self._resolve_model(site.call.model, node))
            self.sites[id(node)] = site
        self.catalog.check_sql(_placeholder_sql(statement, self.sites))
        names = self._output_names(statement)
        statement = self._qualify(statement)
        query = _top_level_query(statement)
        if self.qualified and names is not None and query is not None:
            _set_output_names(query, names)
        if query is None:
            self.notes.append("LLM calls in this statement run as DuckDB functions")
            self._udf_all(statement)
            return StatementPlan(self._duckdb(statement), tuple(self.notes))
        planned = self._plan_query(query, ctes=[])
        if query is statement:
            return StatementPlan(planned, tuple(self.notes))
        name = self.names.next("__halo_in")
        self.inputs[name] = NamedInput(name, planned)
        query.replace(exp.select("*").from_(name))
        return StatementPlan(self._duckdb(statement), tuple(self.notes))

    # -- qualification -------------------------------------------------------------------------
    def _qualify(self, statement: exp.Expr) -> exp.Expr:
        schema: dict[str, object] = {}
        cte_names = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
        # The table a CREATE TABLE AS / INSERT writes is not read (and may not exist yet).
        target = statement.this if isinstance(statement, exp.Create | exp.Insert) else None
        written = {id(t) for t in target.find_all(exp.Table)} if target is not None else set()
        for table in statement.find_all(exp.Table):
            if table.name.lower() in cte_names or not table.name or id(table) in written:
                continue
            if table.args.get("db") or table.args.get("catalog") or table.this is None:
                self.notes.append("tables outside the main schema: columns were not qualified")
                return self._relink(statement, statement)
            columns = self.catalog.table_columns(table)
            if columns is None:
                return self._relink(statement, statement)
            schema[table.name.lower()] = columns
        original = statement
        try:
            qualified = qualify(
                statement.copy(),
                schema=schema,
                dialect=DIALECT,
                validate_qualify_columns=True,
                quote_identifiers=False,
                identify=False,
            )
        except (OptimizeError, SqlglotError, KeyError, ValueError) as exc:
            self.notes.append(f"columns were not qualified ({exc}); LLM calls run as DuckDB functions")
            return self._relink(statement, original)
        if not all(_CALL_TAG in n.meta for n in qualified.walk() if is_llm_call(n)):
            self.notes.append("qualification lost track of an LLM call; LLM calls run as DuckDB functions")
            return self._relink(statement, original)
        self.qualified = True
        return self._relink(qualified, original)

    def _relink(self, new: exp.Expr, old: exp.Expr) -> exp.Expr:
        """Carry call sites over to `new`, a qualified copy of `old`: each call there has the tag
        of the call it was copied from (more than one copy when qualification expanded a
        positional reference such as `GROUP BY 1`)."""
        by_tag = {n.meta[_CALL_TAG]: self.sites[id(n)] for n in old.walk() if is_llm_call(n)}
        sites = {}
        for node in new.walk():
            if not is_llm_call(node):
                continue
            site = by_tag[node.meta[_CALL_TAG]]
            slot_exprs, item_expr = site.slot_exprs, site.item_expr
            args = node.expressions
            if site.call.template.data_last:  # FlockMTL struct values are SQL: take the new ones
                if len(args) == 3 and isinstance(args[2], exp.Struct):
                    if item_expr is not None:
                        item_expr = exp.Struct(expressions=[i.copy() for i in args[2].expressions])
                        slot_exprs = []
                    else:
                        slot_exprs = list(struct_items(args[2]).values())
            elif site.call.function is LLMFunction.AGG:  # LLM_AGG(template, item)
                item_expr = [a for a in args if not isinstance(a, exp.Kwarg)][1]
            sites[id(node)] = CallSite(node, site.call, slot_exprs, item_expr)
        self.sites = sites
        return new

    def _resolve_model(self, name: str, node: exp.Expr) -> str:
        try:
            return self.catalog.resolve_model(name)
        except BinderError as exc:
            raise BinderError(exc.message, location=exc.location or location_of(node)) from None

    def _output_names(self, statement: exp.Expr) -> list[str] | None:
        """The result column names DuckDB gives the statement's query (None if unknown)."""
        query = _top_level_query(statement)
        if query is None or self.catalog.output_names is None:
            return None
        return self.catalog.output_names(_placeholder_sql(query, self.sites))

    # -- queries -------------------------------------------------------------------------------
    def _plan_query(self, query: exp.Expr, ctes: list[exp.CTE]) -> PlanNode:
        """Plan a query (SELECT or set operation) that contains LLM calls; returns its rows."""
        with_ = query.args.get("with_") or query.args.get("with")
        local_ctes = list(ctes)
        if with_ is not None:
            for cte in list(with_.expressions):
                body = cte.this
                if contains_llm_call(body) and isinstance(body, exp.Query):
                    name = self._plan_subquery(body, local_ctes)
                    cte.set("this", _select_from(name, body))
                local_ctes.append(cte)
        scope_ctes = local_ctes
        if isinstance(query, exp.SetOperation):
            for side in ("this", "expression"):
                branch = query.args[side]
                if contains_llm_call(branch):
                    name = self._plan_subquery(branch, scope_ctes)
                    query.set(side, _select_from(name, branch))
            return self._duckdb(query, ctes=ctes)
        if not isinstance(query, exp.Select):
            self._udf_all(query)
            return self._duckdb(query, ctes=ctes)
        for source in _derived_tables(query):
            if contains_llm_call(source.this):
                name = self._plan_subquery(source.this, scope_ctes)
                alias = source.alias_or_name
                source.replace(_table(name, alias))
        return self._plan_select(query, ctes=ctes, scope_ctes=scope_ctes)

    def _plan_subquery(self, query: exp.Expr, ctes: list[exp.CTE]) -> str:
        plan = self._plan_query(query, ctes)
        name = self.names.next("__halo_in")
        self.inputs[name] = NamedInput(name, plan)
        return name

    def _plan_select(
        self, select: exp.Select, ctes: list[exp.CTE], scope_ctes: list[exp.CTE]
    ) -> PlanNode:
        block_sites = [s for s in self._sites_in(select) if _enclosing_select(s.node) is select]
        # Calls in nested subqueries are evaluated by DuckDB (correlation makes lifting unsafe).
        for site in self._sites_in(select):
            if site not in block_sites:
                self._to_udf(site)
        if not block_sites:
            return self._duckdb(select, ctes=ctes)
        scope = self._scope_of(select, scope_ctes)
        aliases = _source_aliases(select)
        reason = None if self.qualified and scope is not None else "columns could not be qualified"
        reason = reason or _unliftable_reason(select, aliases)
        if not self.options.lift_llm_calls:
            reason = "lifting is switched off (PlannerOptions.lift_llm_calls)"
        if reason:
            self.notes.append(f"LLM calls run as DuckDB functions: {reason}")
            for site in block_sites:
                self._to_udf(site)
            return self._duckdb(select, ctes=ctes)
        assert scope is not None
        for site in block_sites:
            self._resolve_slots(site, scope)
        return self._lift_block(select, block_sites, aliases, ctes, scope_ctes)

    # -- the block planner ---------------------------------------------------------------------
    def _lift_block(
        self,
        select: exp.Select,
        sites: list[CallSite],
        aliases: set[str],
        ctes: list[exp.CTE],
        scope_ctes: list[exp.CTE],
    ) -> PlanNode:
        liftable: list[CallSite] = []
        for site in sites:
            if self._must_stay_in_duckdb(site, select):
                self._to_udf(site)
            else:
                liftable.append(site)
        if not liftable:
            return self._duckdb(select, ctes=ctes)
        _move_inner_join_llm_conditions(select)
        where = select.args.get("where")
        terms = conjuncts(where.this) if where is not None else []
        relational = [c for c in terms if not contains_llm_call(c)]
        llm_conjuncts = [c for c in terms if contains_llm_call(c)]

        # One output column per distinct call (same call, same arguments -> computed once), and
        # one argument column per distinct slot expression and guard. A guard is the condition
        # outside which a call's answer cannot change the result (CASE WHEN stars > 2 THEN
        # LLM(...), stars > 3 OR LLM_FILTER(...)): the argument is NULL there, and a NULL slot
        # sends no request.
        columns: dict[str, str] = {}
        arg_columns: dict[str, tuple[str, ...]] = {}
        site_column: dict[int, str] = {}
        arg_names: dict[tuple[str, str], str] = {}
        projections: list[exp.Expr] = []
        guards: dict[str, list[exp.Expr | None]] = {}
        for site in liftable:
            guards.setdefault(self._call_key(site), []).append(_guard(site.node, select, aliases))
        for site in liftable:
            key = self._call_key(site)
            if key not in columns:
                # The same call on the same slots gets the same column name in every block, so
                # equal CTEs or derived tables are equal plans (share_identical_subplans).
                column = self.llm_columns.setdefault(key, self.names.next("__llm"))
                columns[key] = column
                guard = _any_of(guards[key])
                guard_sql = guard.sql(DIALECT) if guard is not None else ""
                args = []
                for slot_expr in site.slot_exprs:
                    arg_key = (slot_expr.sql(DIALECT), guard_sql)
                    if arg_key not in arg_names:
                        arg_names[arg_key] = f"__arg_{len(arg_names)}"
                        value: exp.Expr = exp.cast(slot_expr.copy(), exp.DataType.build("VARCHAR"))
                        if guard is not None:
                            value = exp.Case(ifs=[exp.If(this=guard.copy(), true=value)])
                        projections.append(value.as_(arg_names[arg_key], quoted=True))
                    args.append(arg_names[arg_key])
                arg_columns[column] = tuple(args)
            site_column[id(site.node)] = columns[key]

        # Decide where each LLM conjunct runs: as an LLM filter, as LLM maps plus a batch filter,
        # or (when it needs the catalog, e.g. a subquery) in the residual query.
        stage_conjuncts: list[exp.Expr] = []
        residual_conjuncts: list[exp.Expr] = []
        for conjunct in sorted(llm_conjuncts, key=self._conjunct_cost):
            calls = [n for n in conjunct.walk() if is_llm_call(n)]
            if any(id(n) not in site_column for n in calls) or any(
                isinstance(n, exp.Query) for n in conjunct.walk()
            ):
                residual_conjuncts.append(conjunct)
            else:
                stage_conjuncts.append(conjunct)

        limit = _pushable_limit(select, aliases, residual_conjuncts)
        order = _order_over_sources(select, aliases) if limit is not None else None
        from_ = select.args.get("from_") or select.args.get("from")
        joins = list(select.args.get("joins") or [])
        select.set("where", exp.Where(this=exp.and_(*residual_conjuncts, copy=False)) if residual_conjuncts else None)
        needed = _needed_columns(select, aliases, liftable, extra=stage_conjuncts)
        row_columns = [_row_column_name(c) for c in needed]

        source = exp.select(
            *[c.copy().as_(_row_column_name(c), quoted=True) for c in needed], *projections
        )
        if not needed and not projections:
            source = source.select(exp.Literal.number(1).as_("__one", quoted=True))
        assert from_ is not None  # a block without FROM is never lifted (_unliftable_reason)
        source.set("from_", from_.copy())
        for join in joins:
            source.append("joins", join.copy())
        if relational:
            source.set("where", exp.Where(this=exp.and_(*[c.copy() for c in relational])))
        if order is not None:
            source.set("order", order.copy())
        if limit is not None and not stage_conjuncts:
            source.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
        node: PlanNode = self._duckdb(source, ctes=scope_ctes)

        evaluated: set[str] = set()
        added: list[str] = []

        def add_map(site: CallSite, current: PlanNode) -> PlanNode:
            column = site_column[id(site.node)]
            if column in evaluated:
                return current
            evaluated.add(column)
            added.append(column)
            return LLMMap(current, site.call, arg_columns[column], column)

        for conjunct in stage_conjuncts:
            if is_llm_call(conjunct) and self.sites[id(conjunct)].call.function is LLMFunction.FILTER:
                site = self.sites[id(conjunct)]
                column = site_column[id(conjunct)]
                node = LLMFilter(node, site.call, arg_columns[column], limit_hint=limit)
                evaluated.add(column)
                continue
            for call_node in [n for n in conjunct.walk() if is_llm_call(n)]:
                node = add_map(self.sites[id(call_node)], node)
            predicate = _rewrite_to_rows(conjunct, aliases, site_column, qualify_rows=False)
            node = SQLFilter(node, predicate.sql(DIALECT))
        if limit is not None:
            node = Limit(node, limit)
        for site in liftable:
            if _still_used(site, select):
                node = add_map(site, node)
        kept = tuple(row_columns) + tuple(added)
        if not kept:
            # count(*) over LLM-filtered rows needs the rows, not their values; a table needs at
            # least one column, so one argument column (or the constant) stays.
            kept = (projections[0].alias,) if projections else ("__one",)
        node = Project(node, kept)

        rows_name = self.names.next("__halo_rows")
        self.inputs[rows_name] = NamedInput(rows_name, node)
        residual = select
        residual.set("joins", None)
        residual.set("from_", exp.From(this=_table(rows_name, ROW_ALIAS)))
        _rewrite_to_rows(residual, aliases, site_column, qualify_rows=True)
        return self._duckdb(residual, ctes=ctes)

    @staticmethod
    def _call_key(site: CallSite) -> str:
        return repr((site.call, [e.sql(DIALECT) for e in site.slot_exprs]))

    def _conjunct_cost(self, conjunct: exp.Expr) -> int:
        """Cheap LLM predicates first: short constrained answers before free text."""
        cost = 0
        for node in conjunct.walk():
            if is_llm_call(node) and id(node) in self.sites:
                kind = self.sites[id(node)].call.output.kind
                cost += 1 if kind in (OutputKind.BOOLEAN, OutputKind.CHOICE) else 10
        return cost

    def _must_stay_in_duckdb(self, site: CallSite, select: exp.Select) -> bool:
        if site.call.function.is_aggregate:
            return True
        for ancestor in _ancestors(site.node, stop=select):
            # A call inside a window (its argument, PARTITION BY or ORDER BY) is a per-row
            # value like any other: lifted, the window reads its column.
            if isinstance(ancestor, exp.Having | exp.Qualify):
                return True
            if isinstance(ancestor, exp.Join) and (ancestor.side or ancestor.kind not in ("", "INNER", "CROSS", None)):
                return True
            if is_llm_call(ancestor):
                return True
        if _per_group_call(site.node, select):
            return True
        return any(
            isinstance(n, exp.AggFunc | exp.Window) or is_llm_call(n)
            for e in site.slot_exprs
            for n in e.walk()
        )

    # -- slots ---------------------------------------------------------------------------------
    def _scope_of(self, select: exp.Select, ctes: list[exp.CTE]) -> Scope | None:
        standalone = _with_ctes(select, ctes)
        try:
            for scope in traverse_scope(standalone):
                if scope.expression is standalone:
                    return scope
        except (OptimizeError, SqlglotError):
            return None
        return None

    def _resolve_slots(self, site: CallSite, scope: Scope) -> None:
        if site.call.template.data_last:
            return  # FlockMTL inputs are SQL expressions, already qualified
        visible: dict[str, list[str]] = {}
        # Only what this SELECT's FROM names: CTEs defined around it are not in scope.
        for alias, source in scope.selected_sources.items():
            visible[alias] = _source_columns(source[1], self.catalog)
        resolved: list[exp.Expr] = []
        for slot in site.call.template.slots:
            where = location_of(site.node)
            name = slot.name.lower()
            if slot.qualifier is not None:
                cols = visible.get(slot.qualifier.lower())
                if cols is None:
                    raise BinderError(
                        f"template slot {{{slot}}}: no table or alias {slot.qualifier!r} in FROM "
                        f"(available: {', '.join(sorted(visible)) or 'none'})",
                        location=where,
                    )
                if name not in cols:
                    raise BinderError(
                        f"template slot {{{slot}}}: {slot.qualifier!r} has no column {slot.name!r} "
                        f"(its columns: {', '.join(cols)})",
                        location=where,
                    )
                resolved.append(exp.column(name, table=slot.qualifier.lower()))
                continue
            owners = [alias for alias, cols in visible.items() if name in cols]
            if not owners:
                everything = sorted({c for cols in visible.values() for c in cols})
                raise BinderError(
                    f"template slot {{{slot}}}: no column {slot.name!r} in FROM "
                    f"(available: {', '.join(everything) or 'none'})",
                    location=where,
                )
            if len(owners) > 1:
                raise BinderError(
                    f"template slot {{{slot}}} is ambiguous: it is a column of "
                    f"{', '.join(sorted(owners))}; write {{{sorted(owners)[0]}.{slot.name}}}",
                    location=where,
                )
            resolved.append(exp.column(name, table=owners[0]))
        site.slot_exprs = resolved

    # -- UDF fallback --------------------------------------------------------------------------
    def _udf_all(self, node: exp.Expr) -> None:
        for site in self._sites_in(node):
            self._to_udf(site)

    def _to_udf(self, site: CallSite) -> None:
        call = site.call
        if call.function.is_aggregate:
            assert site.item_expr is not None
            item = site.item_expr.copy()
            if isinstance(item, exp.Struct):
                item = exp.Anonymous(this="to_json", expressions=[item])
            item_sql = exp.cast(item, exp.DataType.build("VARCHAR")).sql(DIALECT)
            # LIST(x ORDER BY x): a deterministic item order makes the prompt, and so the answer,
            # reproducible (and puts equal items next to each other).
            args = [sqlglot.parse_one(f"LIST({item_sql} ORDER BY {item_sql})", read=DIALECT)]
            arity = 1
        else:
            args = [exp.cast(e.copy(), exp.DataType.build("VARCHAR")) for e in site.slot_exprs]
            arity = len(args)
            if not args:  # see register_llm_udf: the vector length comes from a dummy argument
                args = [exp.Literal.string("")]
        # The same call on the same arguments is one function: DuckDB must see `GROUP BY f(x)`
        # and `SELECT f(x)` as the same expression.
        key = repr((call, [a.sql(DIALECT) for a in args]))
        name = self._udf_names.get(key)
        if name is None:
            name = self._udf_names[key] = self.names.next("__halo_fn")
            self.udfs[name] = LLMUdf(name, call, arity, aggregate=call.function.is_aggregate)
        self.sites.pop(id(site.node), None)
        site.node.replace(exp.Anonymous(this=name, expressions=args))

    def _sites_in(self, node: exp.Expr) -> list[CallSite]:
        return [self.sites[id(n)] for n in node.walk() if id(n) in self.sites]

    def _duckdb(self, query: exp.Expr, ctes: Sequence[exp.CTE] = ()) -> DuckDBQuery:
        standalone = _with_ctes(query, ctes)
        if isinstance(standalone, exp.Query):
            standalone = self._read_through_row_local_inputs(standalone.copy())
            # Only the CTEs the query reads: a dead one would still make its named input (and
            # the LLM work that computes it) part of the plan.
            drop_unused_ctes(standalone)
        sql = standalone.sql(DIALECT)
        referenced = {t.name for t in standalone.find_all(exp.Table)}
        names = {n.this for n in standalone.find_all(exp.Anonymous)}
        inputs = tuple(self.inputs[n] for n in sorted(referenced) if n in self.inputs)
        udfs = tuple(self.udfs[n] for n in sorted(self.udfs) if n in names)
        return DuckDBQuery(sql, inputs, udfs)


    def _read_through_row_local_inputs(self, query: exp.Query) -> exp.Query:
        """`query` reading the input of each named input that is only a row-local SELECT over
        one other input (the residual query of a CTE or derived table computed by LLM
        operators), so that a chain of CTEs is one chain of operators:

            WITH s AS (SELECT "k", "summary" FROM __halo_in_2) SELECT s.k AS "s.k" FROM s AS s
              __halo_in_2: SELECT __halo_r."t.k" AS k, __halo_r."__llm_0" AS summary
                           FROM __halo_rows_1 AS __halo_r
        becomes
            SELECT __halo_r."t.k" AS "s.k" FROM __halo_rows_1 AS __halo_r

        (flattened with sqlglot's merge_subqueries when the columns can be qualified; else the
        input's SELECT stays a derived table of the query). A query reading a named input
        through CTEs is flattened too, so the step between two LLM operators of a chain is a
        plain SELECT over one input wherever the SQL allows (`row_local_select`)."""
        replaced = reads_input = False
        for table in list(query.find_all(exp.Table)):
            named = self.inputs.get(table.name)
            if named is None or table.args.get("db"):
                continue
            reads_input = True
            if not isinstance(named.plan, DuckDBQuery):
                continue
            plan = named.plan
            if plan.udfs or len(plan.inputs) != 1:
                continue
            body = row_local_select(plan.sql, plan.inputs[0].name)
            if body is None:
                continue
            alias = exp.TableAlias(this=exp.to_identifier(table.alias or table.name))
            table.replace(exp.Subquery(this=body, alias=alias))
            replaced = True
        if not replaced and not (reads_input and query.args.get("with_")):
            return query
        return self._flatten(query) or query

    def _flatten(self, query: exp.Query) -> exp.Query | None:
        """`query` with derived tables and CTEs merged into their readers where sqlglot's
        merge_subqueries can (None if the columns cannot be qualified)."""
        from sqlglot.optimizer.merge_subqueries import merge_subqueries

        schema: dict[str, object] = {}
        cte_names = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
        for table in query.find_all(exp.Table):
            name = table.name
            if name.lower() in cte_names or name in schema:
                continue
            if table.args.get("db") or table.args.get("catalog"):
                return None
            if name in self.inputs:
                columns = _plan_columns(self.inputs[name].plan)
                if columns is None:
                    return None
                schema[name] = {c: "VARCHAR" for c in columns}
                continue
            catalog_columns = self.catalog.table_columns(table)
            if catalog_columns is None:
                return None
            schema[name] = dict(catalog_columns)
        try:
            qualified = qualify(
                query,
                schema=schema,
                dialect=DIALECT,
                validate_qualify_columns=True,
                quote_identifiers=False,
                identify=False,
            )
            merged = merge_subqueries(qualified)
        except (OptimizeError, SqlglotError, KeyError, ValueError):
            return None
        return merged if isinstance(merged, exp.Query) else None


# -- helpers ---------------------------------------------------------------------------------


def _table(name: str, alias: str | None = None) -> exp.Table:
    """`name AS alias` as sqlglot parses it (a TableAlias, which its optimizer expects)."""
    table = exp.to_table(name)
    if alias:
        table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return table


def _plan_columns(node: PlanNode) -> list[str] | None:
    """Output columns of a plan the builder made (None when its SQL does not tell)."""
    if isinstance(node, DuckDBQuery):
        try:
            tree = sqlglot.parse_one(node.sql, read=DIALECT)
        except SqlglotError:
            return None
        if not isinstance(tree, exp.Query) or "*" in tree.named_selects:
            return None
        return list(tree.named_selects)
    if isinstance(node, Project):
        return list(node.columns)
    if isinstance(node, LLMMap):
        below = _plan_columns(node.child)
        return None if below is None else [*below, node.output_column]
    if isinstance(node, LLMFilter | SQLFilter | Limit):
        return _plan_columns(node.children[0])
    return None


def _select_from(name: str, original: exp.Expr) -> exp.Select:
    """`SELECT <original's output columns> FROM name`: keeps the columns visible to scoping."""
    columns = original.named_selects if isinstance(original, exp.Query) else []
    if not columns or "*" in columns:
        return exp.select("*").from_(name)
    return exp.select(*[exp.column(exp.to_identifier(c, quoted=True)) for c in columns]).from_(name)


def _with_model(call, model: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return call if call.model == model else replace(call, model=model)


def _top_level_query(statement: exp.Expr) -> exp.Expr | None:
    if isinstance(statement, exp.Query):
        return statement
    if isinstance(statement, exp.Create | exp.Insert):
        inner = statement.expression
        if isinstance(inner, exp.Query) and not any(
            is_llm_call(n) for part in (statement.this,) if part is not None for n in part.walk()
        ):
            return inner
    return None


def _placeholder_sql(statement: exp.Expr, sites: dict[int, CallSite]) -> str:
    """The statement with each LLM call replaced by a typed NULL (for a DuckDB bind check)."""
    copy = statement.copy()
    originals = [n for n in statement.walk() if is_llm_call(n)]
    copies = [n for n in copy.walk() if is_llm_call(n)]
    for original, node in zip(originals, copies, strict=True):
        site = sites[id(original)]
        type_sql = sql_type_for(site.call.arrow_type)
        if site.call.function.is_aggregate and site.item_expr is not None:
            item = site.item_expr.copy()
            placeholder = exp.cast(
                exp.Anonymous(this="any_value", expressions=[item]), exp.DataType.build("VARCHAR")
            )
        else:
            placeholder = exp.cast(exp.Null(), exp.DataType.build(type_sql, dialect=DIALECT))
        node.replace(placeholder)
    return copy.sql(DIALECT)


def _set_output_names(query: exp.Expr, names: list[str]) -> None:
    """Alias a qualified query's result columns with the names DuckDB gives the original.

    Qualification lowercases identifiers and names expressions `_col_N`:

        SELECT "Id", count(*) ... GROUP BY "Id"     (DuckDB's names: Id, count_star())
        SELECT t.id AS id, COUNT(*) AS _col_1 ...   (qualified)
        SELECT t.id AS "Id", COUNT(*) AS "count_star()" ...
    """
    orders = []
    while isinstance(query, exp.SetOperation):
        orders.append(query.args.get("order"))
        query = query.this
    if not isinstance(query, exp.Select) or len(query.expressions) != len(names):
        return
    if any(isinstance(p, exp.Star) or p.is_star for p in query.expressions):
        return
    orders.append(query.args.get("order"))
    renamed: dict[str, str] = {}
    named: list[exp.Expr] = []
    for projection, name in zip(list(query.expressions), names, strict=True):
        # In place, not copied: call sites are keyed by the identity of their nodes.
        if isinstance(projection, exp.Alias):
            renamed[projection.alias.lower()] = name
            projection.set("alias", exp.to_identifier(name, quoted=True))
            named.append(projection)
        else:
            named.append(exp.alias_(projection, name, quoted=True, copy=False))
    query.set("expressions", named)
    # ORDER BY may name result columns by their old aliases (e.g. `ORDER BY 1` -> `_col_0`).
    for order in orders:
        for column in list(order.find_all(exp.Column)) if order is not None else []:
            if not column.table and column.name.lower() in renamed:
                column.set("this", exp.to_identifier(renamed[column.name.lower()], quoted=True))


def _alias_unnamed_projections(statement: exp.Expr) -> None:
    """Keep the output names a user sees: name unaliased LLM expressions by their text."""
    query = _top_level_query(statement) if not isinstance(statement, exp.Query) else statement
    while isinstance(query, exp.SetOperation):
        query = query.this
    if not isinstance(query, exp.Select):
        return
    for projection in list(query.expressions):
        if isinstance(projection, exp.Alias | exp.Column | exp.Star):
            continue
        if contains_llm_call(projection):
            projection.replace(exp.alias_(projection.copy(), projection.sql(DIALECT), quoted=True))


def _derived_tables(select: exp.Select) -> list[exp.Subquery]:
    out = []
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is not None and isinstance(from_.this, exp.Subquery):
        out.append(from_.this)
    for join in select.args.get("joins") or []:
        if isinstance(join.this, exp.Subquery):
            out.append(join.this)
    return out


def _guard(node: exp.Expr, select: exp.Select, aliases: set[str]) -> exp.Expr | None:
    """A condition over the block's source rows outside which the value of the call `node`
    cannot change the statement's result, or None (every row needs it). Cheap sides first: only
    conditions DuckDB can evaluate on the source rows (no LLM call, aggregate, window, subquery
    or volatile function) guard a call.

        CASE WHEN s > 2 THEN LLM(..) END         ->  s > 2
        CASE WHEN a THEN 1 WHEN LLM_FILTER(..)   ->  NOT COALESCE(a, FALSE)
        s > 3 OR LLM_FILTER(..)                  ->  NOT COALESCE(s > 3, FALSE)
        s > 3 AND LLM_FILTER(..)                 ->  COALESCE(s > 3, TRUE)   (inside a CASE/OR)
        COALESCE(x, LLM(..))                     ->  x IS NULL
    """
    # The WHERE's own conjunction is not a guard: its relational conjuncts already run in the
    # source, and its LLM conjuncts are applied one after the other.
    where = select.args.get("where")
    spine: set[int] = set()
    pending = [where.this] if where is not None else []
    while pending:
        top = pending.pop()
        if isinstance(top, exp.And | exp.Paren):
            spine.add(id(top))
            pending += [top.this, top.expression] if isinstance(top, exp.And) else [top.this]
    parts: list[exp.Expr] = []
    child, parent = node, node.parent
    while parent is not None and parent is not select:
        if id(parent) not in spine:
            parts += [p for p in _guard_step(child, parent) if _cheap_condition(p, aliases)]
        child, parent = parent, parent.parent
    return exp.and_(*[exp.paren(p, copy=False) for p in parts], copy=False) if parts else None


def _guard_step(child: exp.Expr, parent: exp.Expr) -> list[exp.Expr]:
    """Conditions under which `child` matters to `parent` (none: always)."""

    def not_true(c: exp.Expr) -> exp.Expr:
        return exp.not_(exp.func("COALESCE", c.copy(), exp.false()))

    def not_false(c: exp.Expr) -> exp.Expr:
        return exp.func("COALESCE", c.copy(), exp.true())

    if isinstance(parent, exp.If) and isinstance(parent.parent, exp.Case):
        case = parent.parent
        whens = case.args.get("ifs") or []
        position = next(i for i, w in enumerate(whens) if w is parent)
        conditions = [_when_condition(case, w) for w in whens]
        earlier = [not_true(c) for c in conditions[:position]]
        if child is parent.args.get("true"):
            return [conditions[position].copy(), *earlier]
        return earlier  # the WHEN condition itself: asked only if no earlier branch was taken
    if isinstance(parent, exp.Case) and child is parent.args.get("default"):
        return [not_true(_when_condition(parent, w)) for w in parent.args.get("ifs") or []]
    if isinstance(parent, exp.If):  # IF(c, a, b)
        condition = parent.this
        if child is parent.args.get("true"):
            return [condition.copy()]
        if child is parent.args.get("false"):
            return [not_true(condition)]
        return []
    if isinstance(parent, exp.Or | exp.And):
        other = parent.expression if child is parent.this else parent.this
        return [not_true(other)] if isinstance(parent, exp.Or) else [not_false(other)]
    if isinstance(parent, exp.Coalesce):
        values = [parent.this, *parent.expressions]
        position = next((i for i, v in enumerate(values) if v is child), 0)
        return [exp.Is(this=v.copy(), expression=exp.null()) for v in values[:position]]
    return []


def _when_condition(case: exp.Case, when: exp.Expr) -> exp.Expr:
    operand = case.this
    if operand is None:
        return when.this
    return exp.EQ(this=operand.copy(), expression=when.this.copy())


def _cheap_condition(condition: exp.Expr, aliases: set[str]) -> bool:
    for n in condition.walk():
        if is_llm_call(n) or isinstance(
            n, exp.AggFunc | exp.Window | exp.Query | exp.Placeholder | exp.Parameter | exp.Rand
        ):
            return False
        if isinstance(n, exp.Anonymous) and str(n.this).lower().startswith("__halo_fn"):
            return False
        if isinstance(n, exp.Func) and n.sql_name().lower() in VOLATILE_FUNCTIONS:
            return False
        if isinstance(n, exp.Column) and n.table.lower() not in aliases:
            return False
    return True


def _any_of(guards: list[exp.Expr | None]) -> exp.Expr | None:
    """The union of the guards of every use of one call (None if one use needs every row)."""
    if not guards or any(g is None for g in guards):
        return None
    distinct: dict[str, exp.Expr] = {}
    for guard in guards:
        assert guard is not None
        distinct.setdefault(guard.sql(DIALECT), guard)
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    return exp.or_(*[exp.paren(g.copy(), copy=False) for g in distinct.values()], copy=False)


def _per_group_call(node: exp.Expr, select: exp.Select) -> bool:
    """True for a call of a grouped SELECT evaluated once per group, not per input row.

        SELECT cat, LLM('{cat}') FROM t GROUP BY cat      -- per group: DuckDB evaluates it
        SELECT LLM('{x}') k, count(*) FROM t GROUP BY k   -- a group key: lifted (per row)
        SELECT AVG(CASE WHEN LLM_FILTER('{x}') ...)       -- inside an aggregate: lifted
    """
    group = select.args.get("group")
    if group is None:
        return False
    ancestors = _ancestors(node, stop=select)
    if any(isinstance(a, exp.AggFunc | exp.Group) for a in ancestors):
        return False
    if group.args.get("all"):
        return False  # GROUP BY ALL groups by every projection that is not an aggregate
    keys = group.expressions
    return not any(candidate == key for candidate in (node, *ancestors) for key in keys)


def _enclosing_select(node: exp.Expr) -> exp.Select | None:
    parent = node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        parent = parent.parent
    return parent


def _ancestors(node: exp.Expr, stop: exp.Expr) -> list[exp.Expr]:
    out = []
    parent = node.parent
    while parent is not None and parent is not stop:
        out.append(parent)
        parent = parent.parent
    return out


def _source_aliases(select: exp.Select) -> set[str]:
    aliases = set()
    from_ = select.args.get("from_") or select.args.get("from")
    sources = [from_.this] if from_ is not None else []
    sources += [j.this for j in select.args.get("joins") or []]
    for source in sources:
        aliases.add(source.alias_or_name.lower())
    return aliases


def _unliftable_reason(select: exp.Select, aliases: set[str]) -> str | None:
    if not aliases:
        return "the SELECT has no FROM clause"
    for nested in select.find_all(exp.Select):
        if nested is select:
            continue
        if _source_aliases(nested) & aliases:
            return "a subquery reuses an alias of its outer query"
    if select.args.get("laterals"):
        return "LATERAL views"
    return None


def _with_ctes(query: exp.Expr, ctes: Sequence[exp.CTE]) -> exp.Expr:
    if not ctes:
        return query
    standalone = query.copy()
    existing = standalone.args.get("with_") or standalone.args.get("with")
    if existing is not None:
        return standalone
    standalone.set("with_", exp.With(expressions=[c.copy() for c in ctes]))
    return standalone


def _source_columns(source: object, catalog: BindCatalog) -> list[str]:
    if isinstance(source, exp.Table):
        columns = catalog.table_columns(source)
        return [c.lower() for c in columns] if columns else []
    if isinstance(source, Scope):
        expression = source.expression
        if isinstance(expression, exp.Query):
            return [c.lower() for c in expression.named_selects]
        if isinstance(expression, exp.Values) and expression.expressions:
            # (VALUES ...) AS t(a, b); DuckDB names unnamed VALUES columns col0, col1, ...
            named = [c.lower() for c in expression.alias_column_names]
            width = len(expression.expressions[0].expressions)
            return named + [f"col{i}" for i in range(len(named), width)]
    return []


def _move_inner_join_llm_conditions(select: exp.Select) -> None:
    """For inner joins, `ON llm(...)` filters the joined rows exactly as WHERE does."""
    moved = []
    for join in select.args.get("joins") or []:
        on = join.args.get("on")
        if on is None or not contains_llm_call(on):
            continue
        if join.side or (join.kind or "").upper() not in ("", "INNER", "CROSS"):
            continue
        keep = [c for c in conjuncts(on) if not contains_llm_call(c)]
        moved += [c for c in conjuncts(on) if contains_llm_call(c)]
        join.set("on", exp.and_(*keep, copy=False) if keep else exp.true())
    if moved:
        where = select.args.get("where")
        existing = [where.this] if where is not None else []
        select.set("where", exp.Where(this=exp.and_(*existing, *moved, copy=False)))


def _pushable_limit(
    select: exp.Select, aliases: set[str], residual_conjuncts: list[exp.Expr]
) -> int | None:
    """Rows needed from the LLM stage when LIMIT can stop it early, else None."""
    limit = select.args.get("limit")
    if limit is None or select.args.get("group") or select.args.get("having"):
        return None
    if residual_conjuncts:  # the residual query still filters rows after the stage
        return None
    if select.args.get("distinct") or select.args.get("qualify"):
        return None
    count = limit.expression
    if not (isinstance(count, exp.Literal) and not count.is_string and str(count.this).isdigit()):
        return None
    for projection in select.expressions:
        if any(isinstance(n, exp.AggFunc | exp.Window) for n in projection.walk()):
            return None
    if select.args.get("order") is not None and _order_over_sources(select, aliases) is None:
        return None
    offset = select.args.get("offset")
    extra = 0
    if offset is not None:
        value = offset.expression
        if not (isinstance(value, exp.Literal) and str(value.this).isdigit()):
            return None
        extra = int(value.this)
    return int(count.this) + extra


def _order_over_sources(select: exp.Select, aliases: set[str]) -> exp.Order | None:
    """A copy of the ORDER BY in terms of the sources' columns, or None if it needs more.

    References to result columns are replaced by what they name, so the source query can sort
    (and stop at the LIMIT) before any LLM work:

        SELECT r.id AS k, LLM(...) FROM r ... ORDER BY k LIMIT 5   -- source: ORDER BY r.id
    """
    order = select.args.get("order")
    if order is None:
        return None
    named = {
        p.alias.lower(): p.this for p in select.expressions if isinstance(p, exp.Alias) and p.alias
    }
    order = order.copy()
    for column in list(order.find_all(exp.Column)):
        if not column.table and column.name.lower() in named:
            column.replace(named[column.name.lower()].copy())
    for node in order.walk():
        if is_llm_call(node) or isinstance(node, exp.AggFunc | exp.Window | exp.Query):
            return None
        if isinstance(node, exp.Anonymous) and str(node.this).lower().startswith("__halo_fn"):
            return None  # an LLM call left to DuckDB: not cheap, keep it above the LLM stage
        if isinstance(node, exp.Column) and node.table.lower() not in aliases:
            return None
    return order


def _needed_columns(
    select: exp.Select,
    aliases: set[str],
    lifted: list[CallSite],
    extra: Sequence[exp.Expr] = (),
) -> list[exp.Column]:
    """Columns of the block's sources that the residual query still reads."""
    skip = {id(n) for site in lifted for n in site.node.walk()}
    skip |= {id(n) for j in select.args.get("joins") or [] for n in j.walk()}
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is not None:
        skip |= {id(n) for n in from_.walk()}
    seen: dict[str, exp.Column] = {}
    for node in itertools.chain(select.walk(), *(e.walk() for e in extra)):
        if id(node) in skip or not isinstance(node, exp.Column):
            continue
        if node.table and node.table.lower() in aliases:
            seen.setdefault(_row_column_name(node), node)
    # WHERE conjuncts that are pure relational run in the source; their columns are not needed,
    # but keeping them is harmless and keeps this function simple.
    return [seen[k] for k in sorted(seen)]


def _row_column_name(column: exp.Column) -> str:
    return f"{column.table.lower()}.{column.name.lower()}"


def _still_used(site: CallSite, select: exp.Select) -> bool:
    node: exp.Expr | None = site.node
    while node is not None and node is not select:
        node = node.parent
    return node is select


def _rewrite_to_rows(
    node: exp.Expr,
    aliases: set[str],
    site_column: dict[int, str],
    *,
    qualify_rows: bool,
) -> exp.Expr:
    """Point column references and lifted calls at the stage's row columns."""
    table = ROW_ALIAS if qualify_rows else None

    def transform(n: exp.Expr) -> exp.Expr:
        if id(n) in site_column:
            return exp.column(exp.to_identifier(site_column[id(n)], quoted=True), table=table)
        if isinstance(n, exp.Column) and n.table and n.table.lower() in aliases:
            name = exp.to_identifier(_row_column_name(n), quoted=True)
            return exp.column(name, table=table)
        return n

    # Collect first: replacing while walking would skip siblings.
    targets = [n for n in node.walk() if id(n) in site_column or (
        isinstance(n, exp.Column) and n.table and n.table.lower() in aliases)]
    for target in targets:
        if target is node:
            return transform(target)
        if target.parent is not None:
            target.replace(transform(target))
    return node
