"""`Session`: the one place every front end goes through (`Session.execute(sql)`).

A session owns a DuckDB connection, the models it knows, and the LLM runtime. For each statement it
parses (our own statements with lark, SQL with sqlglot), builds the logical plan, lets the optimizer
rewrite it, chooses physical operators and runs them, recording what the statement cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError as SqlglotParseError

from halo_sql.agents.binder import AGENT_NAMES
from halo_sql.agents.catalog import AgentCatalog
from halo_sql.errors import (
    BinderError,
    HaloError,
    InternalError,
    ParseError,
    ProgrammingError,
    SourceLocation,
)
from halo_sql.executor.batch import BatchingRuntime
from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.executor.engine import ExecutionContext, SubplanCache, execute
from halo_sql.executor.runtime import BatchSizer, LLMRuntime, ResponseMemo, StatementStats
from halo_sql.llm.base import Backend
from halo_sql.llm.registry import BACKENDS, ModelSpec, backend_for, check_spec
from halo_sql.logical.builder import DIALECT, BindCatalog, PlanBuilder, PlannerOptions
from halo_sql.logical.functions import LLM_FUNCTION_NAMES
from halo_sql.logical.plan import DuckDBQuery, StatementPlan, explain_consolidated
from halo_sql.optimizer import OptimizerSettings, for_batch, optimize
from halo_sql.optimizer.explain import explain_json, explain_text
from halo_sql.optimizer.session_context import SessionContext
from halo_sql.optimizer.settings import apply_setting, is_optimizer_setting
from halo_sql.parser.statements import (
    AgentStatement,
    CreateModel,
    DropModel,
    OwnStatement,
    ShowModels,
    StatementText,
    is_own_statement,
    parse_own_statement,
    split_explain,
    split_statements,
)
from halo_sql.physical.planner import PhysicalSettings, physical_plan

Params = Sequence[Any] | Mapping[str, Any] | None

_LLM_NAME = re.compile(
    r"\b(" + "|".join(sorted(LLM_FUNCTION_NAMES | AGENT_NAMES)) + r")\s*\(", re.I
)
_MODELS_TABLE = "halo_catalog.models"


@dataclass
class Result:
    """The outcome of one statement."""

    table: pa.Table | None
    """The result set; None for statements that return none."""
    stats: StatementStats = field(default_factory=StatementStats)
    statement: str = ""
    error: HaloError | None = None
    """In a batch: why this query failed (the other queries still ran)."""

    @property
    def rowcount(self) -> int:
        if self.table is None:
            return -1
        if self.table.column_names == ["Count"] and self.table.num_rows == 1:
            return int(self.table.column(0)[0].as_py())
        return self.table.num_rows


class Session:
    """A connection to a DuckDB database with LLM functions and models."""

    def __init__(
        self,
        database: str = ":memory:",
        *,
        model: str | None = None,
        backend: str | None = None,
        model_options: Mapping[str, Any] | None = None,
        connection: duckdb.DuckDBPyConnection | None = None,
        read_only: bool = False,
        settings: PhysicalSettings | None = None,
    ) -> None:
        try:
            self.connection = connection or duckdb.connect(database, read_only=read_only)
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
        self.database = database
        self.models: dict[str, ModelSpec] = {}
        self.default_model: str | None = None
        self.settings = settings or PhysicalSettings()
        self.planner_options = PlannerOptions()
        """Planner switches (e.g. `lift_llm_calls=False` runs every LLM call as a DuckDB
        function; equivalence tests compare both)."""
        self.optimizer_settings = OptimizerSettings()
        """SET disable_rules / enable_rules / optimizer_sample_rows (halo_sql.optimizer.settings)."""
        self.runtime = LLMRuntime(self.backend, sizer_for=self._batch_sizer)
        self.last_stats = StatementStats()
        self.last_plan: StatementPlan | None = None
        self._current: StatementStats | None = None
        self._batch_stats: list[StatementStats] = []
        self.registrations: dict[str, Any] = {}
        self.memo_capacity = 50_000
        """Distinct answers a statement remembers for deduplication (bounds its memory)."""
        self._lock = threading.RLock()
        self._load_models()
        self.agents = AgentCatalog(self.connection, database)
        """Agents and tools (CREATE AGENT / CREATE TOOL), persisted with the database."""
        self._set_default_model(model, backend, dict(model_options or {}))

    # -- models ----------------------------------------------------------------------------------
    def _set_default_model(self, model: str | None, backend: str | None, options: dict[str, Any]) -> None:
        model = model or os.environ.get("HALO_MODEL") or None
        backend = (backend or os.environ.get("HALO_BACKEND") or ("vllm" if model else "")).lower()
        if backend and backend not in BACKENDS:
            raise BinderError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
        if model and model in self.models:
            self.default_model = model
            return
        if backend:
            self.models["default"] = ModelSpec("default", backend, model, options)
            self.default_model = "default"
        elif len(self.models) == 1:
            # A database that stores exactly one model: that model is the obvious default.
            self.default_model = next(iter(self.models))

    def _batch_sizer(self, model: str) -> BatchSizer:
        """Adaptive batching starts from the model's profile (its KV-cache capacity)."""
        from halo_sql.optimizer.profile import find_profile

        spec = self.models.get(model)
        profile = find_profile(spec.backend, spec.model) if spec else None
        return BatchSizer(kv_cache_tokens=profile.kv_cache_tokens) if profile else BatchSizer()

    def backend(self, model: str) -> Backend:
        """The running backend for a model name (started on first use, shared in the process)."""
        spec = self.models.get(model)
        if spec is None:
            raise BinderError(self._unknown_model(model))
        return backend_for(spec)

    def resolve_model(self, name: str) -> str:
        key = name if name in self.models else name.lower()
        if key not in self.models:
            raise BinderError(self._unknown_model(name))
        return key

    def _unknown_model(self, name: str) -> str:
        known = ", ".join(sorted(self.models)) or "none"
        return (
            f"unknown model {name!r} (models: {known}); create it with "
            f"CREATE MODEL {name} USING vllm WITH (model => 'path-or-hub-id')"
        )

    def _load_models(self) -> None:
        try:
            rows = self.connection.sql(
                f"SELECT name, backend, model, options FROM {_MODELS_TABLE}"
            ).fetchall()
        except duckdb.Error:
            return
        for name, backend, model, options in rows:
            self.models[name] = ModelSpec(name, backend, model, json.loads(options or "{}"))

    def _save_model(self, spec: ModelSpec | None, drop: str | None = None) -> None:
        if self.database == ":memory:" and not self._models_table_exists():
            return  # nothing outlives an in-memory database; keep its catalog clean
        con = self.connection
        con.sql("CREATE SCHEMA IF NOT EXISTS halo_catalog")
        con.sql(
            f"CREATE TABLE IF NOT EXISTS {_MODELS_TABLE} "
            "(name VARCHAR PRIMARY KEY, backend VARCHAR, model VARCHAR, options VARCHAR)"
        )
        if drop is not None:
            con.sql(f"DELETE FROM {_MODELS_TABLE} WHERE name = ?", params=[drop])
        if spec is not None:
            con.sql(f"DELETE FROM {_MODELS_TABLE} WHERE name = ?", params=[spec.name])
            con.sql(
                f"INSERT INTO {_MODELS_TABLE} VALUES (?, ?, ?, ?)",
                params=[spec.name, spec.backend, spec.model, json.dumps(spec.options, sort_keys=True)],
            )

    def _models_table_exists(self) -> bool:
        try:
            self.connection.sql(f"SELECT 1 FROM {_MODELS_TABLE} LIMIT 0").fetchall()
            return True
        except duckdb.Error:
            return False

    # -- statements ------------------------------------------------------------------------------
    def execute(
        self,
        sql: str,
        params: Params = None,
        *,
        progress: Callable[[StatementStats], None] | None = None,
    ) -> Result:
        """Run every statement of `sql`; returns the last statement's result."""
        statements = split_statements(sql)
        if not statements:
            raise ProgrammingError("empty statement: nothing to run")
        if params and len(statements) > 1:
            raise ProgrammingError("parameters can only be bound to a single statement")
        result = Result(None)
        with self._lock:
            for statement in statements:
                result = self._execute_one(statement, params, progress)
        return result

    def cancel(self) -> None:
        """Cancel the running statement (safe from another thread or a signal handler)."""
        current = self._current
        if current is not None:
            current.cancel.set()
        for stats in list(self._batch_stats):
            stats.cancel.set()
        with contextlib.suppress(duckdb.Error):
            self.connection.interrupt()

    def plan(self, sql: str, params: Params = None) -> StatementPlan:
        """The optimized logical plan of one statement."""
        statements = split_statements(sql)
        if len(statements) != 1:
            raise ProgrammingError(f"expected one statement, got {len(statements)}")
        return self._plan(statements[0], statements[0].text, params)

    def _execute_one(
        self,
        statement: StatementText,
        params: Params,
        progress: Callable[[StatementStats], None] | None,
    ) -> Result:
        stats = StatementStats(progress=progress, memo=ResponseMemo(self.memo_capacity))
        self._current = stats
        began = time.perf_counter()
        table: pa.Table | None = None
        try:
            if is_optimizer_setting(statement.text):  # SET disable_rules = '...' (optimizer)
                changed = apply_setting(self.optimizer_settings, statement.text)
                self.optimizer_settings = changed or self.optimizer_settings
            elif is_own_statement(statement.text):
                own = parse_own_statement(statement.text, line=statement.line, column=statement.column)
                table = self._run_own(own)
            else:
                is_explain, analyze, fmt, inner = split_explain(statement.text)
                plan = self._plan(statement, inner, params)
                self.last_plan = plan
                if is_explain and not analyze:
                    table = _plan_table(plan, fmt, settings=self.settings)
                else:
                    table = self._run_plan(plan, stats, params)
                    if is_explain:
                        table = _plan_table(plan, fmt, stats, self.settings)
        except HaloError:
            raise
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
        except Exception as exc:  # a bug of ours: still a HaloError, with the cause chained
            raise _internal(exc) from exc
        finally:
            stats.seconds = time.perf_counter() - began
            stats.rows_out = table.num_rows if table is not None else 0
            self.last_stats = stats
            self._current = None
        return Result(table, stats, statement.text)

    def _plan(
        self, statement: StatementText, text: str, params: Params, *, batch: bool = False
    ) -> StatementPlan:
        if not _LLM_NAME.search(text):
            return StatementPlan(DuckDBQuery(text))
        try:
            ast = sqlglot.parse_one(text, read=DIALECT)
        except SqlglotParseError as exc:
            detail = exc.errors[0] if exc.errors else {}
            near = str(detail.get("highlight") or "")
            # sqlglot gives the line within the statement and the token's last column.
            line = int(detail.get("line", 1))
            col = max(1, int(detail.get("col", 1)) - len(near) + 1)
            if line == 1:
                col += statement.column - 1
            message = str(detail.get("description", exc)).strip()
            if near:
                message = f"near {near!r}: {message}"
            raise ParseError(
                f"SQL syntax error {message}" if near else f"SQL syntax error: {message}",
                location=SourceLocation(line + statement.line - 1, col),
            ) from None
        if ast is None:
            raise ProgrammingError("empty statement: nothing to run")
        if params:
            ast = _bind_params(ast, params)
        catalog = BindCatalog(
            table_columns=self._table_columns,
            check_sql=self._check_sql,
            resolve_model=self.resolve_model,
            default_model=self.default_model,
            output_names=self._output_names,
            agents=self.agents,
        )
        plan = PlanBuilder(catalog, self.planner_options).build(ast, text)
        # The optimizer samples LLM predicates through the running statement's memo (_current);
        # in a batch it keeps sub-plans shareable across queries (optimizer.for_batch).
        settings = for_batch(self.optimizer_settings) if batch else self.optimizer_settings
        return optimize(plan, SessionContext(self, self._current), settings)

    def _run_plan(
        self,
        plan: StatementPlan,
        stats: StatementStats,
        params: Params,
        *,
        connection: duckdb.DuckDBPyConnection | None = None,
        runtime: LLMRuntime | None = None,
        shared: SubplanCache | None = None,
    ) -> pa.Table | None:
        root = plan.root
        con = connection or self.connection
        ctx = ExecutionContext(con, runtime or self.runtime, stats, shared=shared)
        try:
            if isinstance(root, DuckDBQuery) and not root.inputs and not root.udfs:
                return self._run_plain(root.sql, params, con)
            return execute(physical_plan(root, self.settings), ctx)
        finally:
            ctx.close()

    def _run_plain(
        self, sql: str, params: Params, connection: duckdb.DuckDBPyConnection | None = None
    ) -> pa.Table | None:
        con = connection or self.connection
        try:
            relation = con.sql(sql, params=params) if params else con.sql(sql)
            return relation.to_arrow_table() if relation is not None else None
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None

    # -- batches ---------------------------------------------------------------------------------
    def register(self, name: str, data: Any) -> None:
        """Expose a DataFrame/Arrow object as a view (remembered so batch workers see it too)."""
        self.connection.register(name, data)
        self.registrations[name] = data

    def unregister(self, name: str) -> None:
        self.connection.unregister(name)
        self.registrations.pop(name, None)

    def execute_batch(
        self,
        queries: str | Sequence[str | tuple[str, Params]],
        params: Any = None,
        *,
        workers: int | None = None,
        progress: Callable[[BatchProgress], None] | None = None,
    ) -> BatchResult:
        """Run a batch of queries as one workload; results come back in input order.

        `queries` is a list of SQL strings or (sql, params) pairs, or one SQL template with
        `params` a table of parameter rows (pyarrow Table, pandas DataFrame, list of dicts or
        tuples, or a SQL query whose rows are the parameters). A query that fails gets its
        `error` set; the others still complete.
        """
        items = _batch_items(self, queries, params)
        began = time.perf_counter()
        results: list[Result] = [
            Result(None, StatementStats(memo=ResponseMemo(self.memo_capacity)), sql) for sql, _ in items
        ]
        plans: list[StatementPlan | None] = []
        with self._lock:
            for index, (sql, values) in enumerate(items):
                try:
                    statements = split_statements(sql)
                    if len(statements) != 1:
                        raise ProgrammingError(f"a batch item must be one statement, got {len(statements)}")
                    plans.append(self._plan(statements[0], statements[0].text, values, batch=True))
                except HaloError as exc:
                    results[index].error = exc
                    plans.append(None)
                except duckdb.Error as exc:
                    results[index].error = duckdb_error(exc)
                    plans.append(None)
                except Exception as exc:  # a bug of ours must not cost the other queries
                    results[index].error = _internal(exc)
                    plans.append(None)
            runtime = BatchingRuntime(self.runtime)
            shared = SubplanCache()
            local = threading.local()
            cursors: list[duckdb.DuckDBPyConnection] = []
            cursors_lock = threading.Lock()
            done = [0]
            batch_progress = BatchProgress(total=len(items))

            def cursor() -> duckdb.DuckDBPyConnection:
                con = getattr(local, "con", None)
                if con is None:
                    con = self.connection.cursor()
                    for name, data in self.registrations.items():
                        con.register(name, data)
                    local.con = con
                    with cursors_lock:
                        cursors.append(con)
                return con

            def run(index: int) -> None:
                plan = plans[index]
                if plan is None:
                    return
                result = results[index]
                stats = result.stats
                self._batch_stats.append(stats)
                runtime.worker_started()
                began_query = time.perf_counter()
                try:
                    result.table = self._run_plan(
                        plan, stats, items[index][1], connection=cursor(), runtime=runtime, shared=shared
                    )
                except HaloError as exc:
                    result.error = exc
                except duckdb.Error as exc:
                    result.error = duckdb_error(exc)
                except Exception as exc:  # a bug of ours must not cost the other queries
                    result.error = _internal(exc)
                finally:
                    runtime.worker_finished()
                    stats.seconds = time.perf_counter() - began_query
                    stats.rows_out = result.table.num_rows if result.table is not None else 0
                    with cursors_lock:
                        done[0] += 1
                        batch_progress.done = done[0]
                        batch_progress.llm_requests = runtime.counters.requests_sent
                    if progress is not None:
                        progress(batch_progress)

            self._batch_stats = []
            pool_size = workers or min(64, max(1, len(items)))
            from concurrent.futures import ThreadPoolExecutor

            try:
                with ThreadPoolExecutor(pool_size, thread_name_prefix="halo-batch") as pool:
                    list(pool.map(run, range(len(items))))
            finally:
                for con in cursors:
                    con.close()
                self._batch_stats = []
        batch = BatchResult(results, runtime.counters, shared.computed, shared.reused)
        batch.seconds = time.perf_counter() - began
        self.last_stats = batch.total_stats()
        return batch

    def explain_batch(self, queries: str | Sequence[str | tuple[str, Params]], params: Any = None) -> str:
        """The consolidated plan of a batch: shared sub-plans and merged LLM operators."""
        items = _batch_items(self, queries, params)
        plans = []
        with self._lock:
            for sql, values in items:
                statements = split_statements(sql)
                plans.append(self._plan(statements[0], statements[0].text, values, batch=True))
        return explain_consolidated(plans)

    def _run_own(self, statement: OwnStatement) -> pa.Table | None:
        if isinstance(statement, AgentStatement):
            return self.agents.execute(statement, resolve_model=self.resolve_model)
        if isinstance(statement, CreateModel):
            if statement.backend not in BACKENDS:
                raise BinderError(
                    f"CREATE MODEL {statement.name}: unknown backend {statement.backend!r} "
                    f"(use one of {', '.join(BACKENDS)})"
                )
            exists = statement.name in self.models
            if exists and statement.if_not_exists:
                return None
            if exists and not statement.replace:
                raise BinderError(
                    f"model {statement.name!r} already exists (use CREATE OR REPLACE MODEL)"
                )
            options = dict(statement.options)
            path = options.pop("model", None)
            if statement.backend == "vllm" and not path:
                raise BinderError(
                    f"CREATE MODEL {statement.name}: the vllm backend needs "
                    "WITH (model => 'path-or-hub-id')"
                )
            spec = ModelSpec(statement.name, statement.backend, path, options)
            check_spec(spec)  # before it is stored: no API key may reach the database file
            self.models[statement.name] = spec
            if self.default_model is None:
                self.default_model = statement.name
            self._save_model(spec)
            return None
        if isinstance(statement, DropModel):
            if statement.name not in self.models:
                if statement.if_exists:
                    return None
                raise BinderError(self._unknown_model(statement.name))
            del self.models[statement.name]
            if self.default_model == statement.name:
                self.default_model = None
            self._save_model(None, drop=statement.name)
            return None
        assert isinstance(statement, ShowModels)
        rows = [
            {
                "name": spec.name,
                "backend": spec.backend,
                "model": spec.model,
                "options": json.dumps(spec.options, sort_keys=True),
                "is_default": spec.name == self.default_model,
            }
            for spec in sorted(self.models.values(), key=lambda s: s.name)
        ]
        schema = pa.schema(
            [("name", pa.string()), ("backend", pa.string()), ("model", pa.string()),
             ("options", pa.string()), ("is_default", pa.bool_())]
        )
        return pa.Table.from_pylist(rows, schema=schema)

    # -- catalog callbacks for the binder ---------------------------------------------------------
    def _table_columns(self, table: exp.Table) -> dict[str, str] | None:
        if isinstance(table.this, exp.Identifier):
            name = exp.table_(table.this, db=table.args.get("db"), catalog=table.args.get("catalog")).sql(DIALECT)
        else:  # a table function such as range(3)
            bare = table.copy()
            bare.set("alias", None)
            name = bare.sql(DIALECT)
        try:
            rows = self.connection.sql(f"DESCRIBE SELECT * FROM {name}").fetchall()
        except duckdb.Error:
            return None
        return {str(row[0]).lower(): str(row[1]) for row in rows}

    def _output_names(self, sql: str) -> list[str]:
        try:
            return [str(row[0]) for row in self.connection.sql(f"DESCRIBE {sql}").fetchall()]
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None

    def _check_sql(self, sql: str) -> None:
        try:
            relation = self.connection.sql(f"EXPLAIN {sql}")
            if relation is not None:
                relation.fetchall()
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None


@dataclass
class BatchProgress:
    total: int
    done: int = 0
    llm_requests: int = 0


@dataclass
class BatchResult:
    """Results of a batch in input order, plus what the batch runtime did."""

    results: list[Result]
    counters: Any
    subplans_computed: int = 0
    subplans_reused: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Result:
        return self.results[index]

    @property
    def tables(self) -> list[pa.Table | None]:
        return [r.table for r in self.results]

    @property
    def errors(self) -> list[tuple[int, HaloError]]:
        return [(i, r.error) for i, r in enumerate(self.results) if r.error is not None]

    def total_stats(self) -> StatementStats:
        total = StatementStats()
        for result in self.results:
            total.merge(result.stats)
            total.rows_out += result.stats.rows_out
        total.backend_calls = self.counters.backend_calls
        total.seconds = self.seconds
        return total

    def stats(self) -> dict[str, Any]:
        """Totals over the batch, with the batch runtime's own counters."""
        out = self.total_stats().as_dict()
        out.update(
            queries=len(self.results),
            failed_queries=len(self.errors),
            flushes=self.counters.flushes,
            largest_flush=self.counters.largest_flush,
            shared_requests=self.counters.shared_requests,
            subplans_computed=self.subplans_computed,
            subplans_reused=self.subplans_reused,
        )
        return out


def _batch_items(session: Session, queries: Any, params: Any) -> list[tuple[str, Params]]:
    if isinstance(queries, str):
        if params is None:
            return [(queries, None)]
        return [(queries, row) for row in _param_rows(session, params)]
    items: list[tuple[str, Params]] = []
    for item in queries:
        if isinstance(item, str):
            items.append((item, None))
        else:
            sql, values = item
            items.append((sql, values))
    return items


def _param_rows(session: Session, params: Any) -> list[Params]:
    if isinstance(params, str):  # a query whose rows are the parameters
        table = session.execute(params).table
        if table is None:
            raise ProgrammingError("the parameter query returned no rows")
        return list(table.to_pylist())
    if isinstance(params, pa.Table):
        return list(params.to_pylist())
    if hasattr(params, "to_dict") and hasattr(params, "columns"):  # pandas
        return list(params.to_dict(orient="records"))
    return list(params)


def _internal(exc: BaseException) -> InternalError:
    error = InternalError(
        f"internal error ({type(exc).__name__}: {exc}); please report it with the statement"
    )
    error.__cause__ = exc
    return error


def _bind_params(ast: exp.Expr, params: Params) -> exp.Expr:
    """Substitute parameter values as literals (they may sit inside LLM templates)."""
    ast = ast.copy()
    placeholders = [n for n in ast.walk() if isinstance(n, exp.Placeholder | exp.Parameter)]
    if isinstance(params, Mapping):
        for node in placeholders:
            key = str(node.name or node.this)
            if key not in params:
                raise ProgrammingError(f"no value for parameter ${key}")
            node.replace(exp.convert(params[key]))
        return ast
    values = list(params or [])
    # `?` has no `this` (its `name` is "?"); `$1` has this == "1".
    positional = [n for n in placeholders if not n.this]
    numbered = [n for n in placeholders if n.this]
    if positional and len(positional) != len(values):
        raise ProgrammingError(
            f"statement has {len(positional)} parameter(s) but {len(values)} value(s) were given"
        )
    for node, value in zip(positional, values, strict=False):
        node.replace(exp.convert(value))
    for node in numbered:
        if not str(node.this).isdigit():
            raise ProgrammingError(f"parameter ${node.this} needs a mapping of names to values")
        index = int(str(node.this)) - 1
        if not 0 <= index < len(values):
            raise ProgrammingError(f"no value for parameter ${index + 1}")
        node.replace(exp.convert(values[index]))
    return ast


def _plan_table(
    plan: StatementPlan,
    fmt: str | None,
    stats: StatementStats | None = None,
    settings: PhysicalSettings | None = None,
) -> pa.Table:
    """EXPLAIN [ANALYZE] [(FORMAT JSON)]: the plan with the optimizer's estimates per operator
    and, after a run, each operator's measured counters (halo_sql.optimizer.explain)."""
    actual = None
    if stats is not None and stats.operators:  # a plain DuckDB query ran without operators
        ops = _physical_ops(plan.root, settings)

        def actual(node: Any) -> Any:
            op = ops.get(id(node))
            return stats.operators.get(op) if op is not None else None

    render = explain_json if fmt == "json" else explain_text
    return pa.table({"plan": [render(plan, actual, stats)]})


def _physical_ops(root: Any, settings: PhysicalSettings | None) -> dict[int, Any]:
    """id(logical node) -> the physical operator that ran it (the trees have the same shape)."""
    out: dict[int, Any] = {}

    def walk(node: Any, op: Any) -> None:
        out.setdefault(id(node), op)
        for child, child_op in zip(node.children, op.children, strict=False):
            walk(child, child_op)

    walk(root, physical_plan(root, settings))
    return out


def _silence_duckdb_copy_warning() -> None:
    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")


_silence_duckdb_copy_warning()
