"""`Session`: the one place every front end goes through (`Session.execute(sql)`).

A session owns a DuckDB connection, the models it knows, and the LLM runtime. For each statement it
parses (our own statements with lark, SQL with sqlglot), builds the logical plan, lets the optimizer
rewrite it, chooses physical operators and runs them, recording what the statement cost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError as SqlglotParseError

from halo_sql.agents.catalog import AgentCatalog
from halo_sql.errors import (
    BinderError,
    HaloError,
    InternalError,
    ModelError,
    NotSupportedError,
    ParseError,
    ProgrammingError,
    QueryCancelled,
    SourceLocation,
)
from halo_sql.executor.batch import BatchProgress, BatchResult, BatchRun, Result, run_batch
from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.executor.engine import ConnectionSource, ExecutionContext, SubplanCache, execute
from halo_sql.executor.response_cache import (
    FileResponseCache,
    MemoryResponseCache,
    ResponseCache,
    cache_path_for,
)
from halo_sql.executor.runtime import LLMRuntime, ResponseMemo, StatementStats
from halo_sql.llm import aio
from halo_sql.llm.base import Backend
from halo_sql.llm.model_options import check_model_options
from halo_sql.llm.registry import BACKENDS, ModelSpec, backend_for, check_spec
from halo_sql.logical.agent_calls import AGENT_NAMES
from halo_sql.logical.builder import DIALECT, BindCatalog, PlanBuilder, PlannerOptions
from halo_sql.logical.functions import LLM_FUNCTION_NAMES, is_template_argument, literal_template
from halo_sql.logical.instantiate import instantiate
from halo_sql.logical.plan import DuckDBQuery, StatementPlan, explain_consolidated
from halo_sql.optimizer import OptimizerSettings, for_batch, optimize
from halo_sql.optimizer.explain import explain_json, explain_text
from halo_sql.optimizer.session_context import SessionContext
from halo_sql.optimizer.settings import apply_setting, is_optimizer_setting
from halo_sql.parser.shapes import shape_of
from halo_sql.parser.statements import (
    AgentStatement,
    ClearResponseCache,
    CreateModel,
    DropModel,
    OwnStatement,
    ShowModels,
    StatementText,
    is_own_statement,
    option_locations,
    parse_own_statement,
    split_explain,
    split_statements,
)
from halo_sql.physical.planner import PhysicalSettings, physical_plan

Params = Sequence[Any] | Mapping[str, Any] | None

_PROTECTED_CALLS = frozenset(LLM_FUNCTION_NAMES)
"""Calls whose arguments are part of a query's shape (templates, labels, options); of agent
calls only the direct arguments are (their input query's literals are values)."""
_LLM_NAME = re.compile(
    r"\b(" + "|".join(sorted(LLM_FUNCTION_NAMES | AGENT_NAMES)) + r")\s*\(", re.I
)
_MODELS_TABLE = "halo_catalog.models"


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
        response_cache: bool | str | None = None,
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
        self.runtime = LLMRuntime(self.backend)
        self.statistics_sql: Callable[[str], str] | None = None
        """While a query shape is planned with sentinel values: puts real values back into the
        optimizer's statistics queries (see `plan_for_batch`)."""
        self.on_llm_failure = "raise"
        """What a request the model could not answer does to its statement: 'raise' (the
        statement fails, naming how many failed and the first cause; answers received stay in
        the response cache) or 'null' (its value is NULL, counted in `failed_requests`).
        `SET llm_failures = 'null'` / `'raise'`."""
        self.last_stats = StatementStats()
        self.last_plan: StatementPlan | None = None
        self._current: StatementStats | None = None
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._batches: set[BatchRun] = set()
        self._online: ConnectionSource | None = None
        self._online_shapes: dict[str, StatementPlan | None] = {}
        self.registrations: dict[str, Any] = {}
        self.memo_capacity = 50_000
        """Distinct answers a statement remembers for deduplication (bounds its memory)."""
        self._lock = threading.RLock()
        self._load_models()
        self.agents = AgentCatalog(self.connection, database)
        """Agents and tools (CREATE AGENT / CREATE TOOL), persisted with the database."""
        self._set_default_model(model, backend, dict(model_options or {}))
        self.database_file = _database_file(self.connection)
        """The database's file (absolute), or None for an in-memory database."""
        self._cache: ResponseCache | None = None
        self._cache_location: str | None = None
        self.set_response_cache(self.database_file is not None if response_cache is None
                                else response_cache)

    # -- the persistent response cache ------------------------------------------------------------
    def set_response_cache(self, value: bool | str) -> None:
        """Turn the persistent response cache on (True: beside the database file, or in memory
        for the session's life when the database is `:memory:`; a path: that file) or off
        (False). `SET response_cache = on | off | '/path/file'` calls this."""
        if value is False:
            self.runtime.cache = None
            return
        location = self._cache_target(value)
        if self._cache is None or self._cache_location != location:
            if self._cache is not None:
                self._cache.close()
            self._cache = (
                MemoryResponseCache() if location == ":memory:" else FileResponseCache(location)
            )
            self._cache_location = location
        self.runtime.cache = self._cache

    @property
    def response_cache(self) -> ResponseCache | None:
        """The response cache answers are looked up in and stored to (None when off)."""
        return self.runtime.cache

    def clear_response_cache(self) -> int:
        """Remove every stored answer of this session's cache (also while it is off: then the
        cache it would use); returns how many there were. `CLEAR RESPONSE CACHE` calls this."""
        cache = self._cache
        if cache is None:
            location = self._cache_target(True)
            if location == ":memory:":
                return 0  # an in-memory cache that was never on holds nothing
            cache = FileResponseCache(location)
            try:
                return cache.clear()
            finally:
                cache.close()
        return cache.clear()

    def _cache_target(self, value: bool | str) -> str:
        if isinstance(value, str):
            return os.path.abspath(os.path.expanduser(value))
        if self._cache_location is not None:
            return self._cache_location  # `SET response_cache = on` after a path keeps it
        if self.database_file is None:
            return ":memory:"
        return cache_path_for(self.database_file)

    def close(self, *, close_connection: bool = True) -> None:
        """Commit the answers the response cache still holds and close the DuckDB connection
        (unless `close_connection` is False: a connection handed in stays open)."""
        if self._cache is not None:
            self._cache.close()
        if close_connection:
            self.connection.close()

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
            self._online_shapes.clear()  # any statement may change the catalog shapes rely on
            for statement in statements:
                result = self._execute_one(statement, params, progress)
        return result

    def cancel(self) -> None:
        """Cancel the running statement (safe from another thread or a signal handler)."""
        current = self._current
        if current is not None:
            current.cancel.set()
        for future in list(self._running):
            future.cancel()
        for batch in list(self._batches):
            batch.cancel()
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
            failures = _LLM_FAILURES.match(statement.text)
            caching = _RESPONSE_CACHE.match(statement.text)
            if failures:  # SET llm_failures = 'raise' | 'null'
                self.on_llm_failure = _llm_failure_mode(failures.group(1))
            elif caching:  # SET response_cache = on | off | '/path/file'
                self.set_response_cache(_response_cache_value(caching.group(1)))
            elif is_optimizer_setting(statement.text):  # SET disable_rules = '...' (optimizer)
                changed = apply_setting(self.optimizer_settings, statement.text)
                self.optimizer_settings = changed or self.optimizer_settings
            elif is_own_statement(statement.text):
                own = parse_own_statement(statement.text, line=statement.line, column=statement.column)
                table = self._run_own(own)
            else:
                is_explain, analyze, fmt, inner = split_explain(statement.text)
                if is_explain:
                    self._check_explained(inner, params)
                planning = time.perf_counter()
                plan = self._plan(statement, inner, params)
                stats.planning_seconds = time.perf_counter() - planning
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

    def _check_explained(self, inner: str, params: Params) -> None:
        """The statement after EXPLAIN must be one that could run: plain EXPLAIN runs nothing,
        so without this check any text would 'explain' fine."""
        if not _strip_sql_comments(inner).strip():
            raise ParseError("EXPLAIN needs a statement to explain, e.g. EXPLAIN SELECT ...")
        if is_own_statement(inner) or is_optimizer_setting(inner):
            words = " ".join(inner.split()[:2]).upper()
            raise NotSupportedError(
                f"EXPLAIN explains queries and SQL statements; {words} is one of halo-sql's own "
                "statements, which have no plan: run it directly"
            )
        if _LLM_NAME.search(inner):
            return  # the planner binds it (LLM calls and all) and reports what is wrong
        try:
            relation = self.connection.sql(f"EXPLAIN {inner}", params=params or None)
            if relation is not None:
                relation.fetchall()
        except duckdb.Error as exc:
            error = duckdb_error(exc)
            raise type(error)(f"EXPLAIN: {error.message}", location=error.location) from None

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

    def _run_plan(self, plan: StatementPlan, stats: StatementStats, params: Params) -> pa.Table | None:
        """Run one statement's plan on this session's own connection (waits; Ctrl-C or
        `cancel()` from another thread stops it and its model requests)."""
        root = plan.root
        if isinstance(root, DuckDBQuery) and not root.inputs and not root.udfs:
            return self._run_plain(root.sql, params)
        source = ConnectionSource.exclusive(self.connection)
        started, stopped = threading.Event(), threading.Event()

        async def run() -> pa.Table | None:
            started.set()
            try:
                return await self.arun_plan(plan, stats, params, source, None)
            finally:
                stopped.set()

        def wait_until_stopped() -> None:
            # A cancelled statement returns once its work has stopped: no answer arrives
            # afterwards and the next statement has the connection to itself. (One cancelled
            # before it started never runs past its first step.)
            if started.is_set():
                stopped.wait(_STOP_SECONDS)

        future = aio.spawn(run())
        self._running.add(future)
        try:
            while True:
                try:
                    # Waking up now and then lets a Ctrl-C that the kernel delivered to another
                    # thread (SIGINT goes to any thread of the process) interrupt this one.
                    return future.result(timeout=_WAKE_SECONDS)
                except TimeoutError:
                    continue
        except concurrent.futures.CancelledError:
            wait_until_stopped()
            raise QueryCancelled("statement cancelled; answers received so far are kept") from None
        except BaseException:
            future.cancel()
            wait_until_stopped()
            raise
        finally:
            self._running.discard(future)

    async def arun_plan(
        self,
        plan: StatementPlan,
        stats: StatementStats,
        params: Params,
        connections: ConnectionSource,
        shared: SubplanCache | None,
    ) -> pa.Table | None:
        """Run a plan on the halo loop (the executor's entry point for one query)."""
        root = plan.root
        if isinstance(root, DuckDBQuery) and not root.inputs and not root.udfs:
            async with connections.acquire() as con:
                return await asyncio.get_running_loop().run_in_executor(
                    None, self._run_plain, root.sql, params, con
                )
        ctx = ExecutionContext(connections, self.runtime, stats, shared=shared)
        physical = plan.prepared if plan.prepared is not None else physical_plan(root, self.settings)
        try:
            table = await execute(physical, ctx)
        finally:
            await ctx.aclose()
        if stats.null_failures and self.on_llm_failure == "raise":
            raise ModelError(
                f"{stats.null_failures} LLM request(s) failed; first: {stats.first_failure} "
                "(answers received are kept; SET llm_failures = 'null' turns failures into "
                "NULL values instead)"
            )
        return table

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
        progress: Callable[[BatchProgress], None] | None = None,
        max_queries_in_flight: int | None = None,
    ) -> BatchResult:
        """Run a batch of queries as one workload; results come back in input order.

        `queries` is a list of SQL strings or (sql, params) pairs, or one SQL template with
        `params` a table of parameter rows (pyarrow Table, pandas DataFrame, list of dicts or
        tuples, or a SQL query whose rows are the parameters). A query that fails gets its
        `error` set; the others still complete. Statements that change state run in input
        order; the queries between them run concurrently (halo_sql.executor.batch), all at once
        unless `max_queries_in_flight` caps how many (1: one after another, for comparisons).
        """
        items = _batch_items(self, queries, params)
        runs = self._batches

        def started(run: BatchRun) -> None:
            runs.add(run)

        try:
            batch = run_batch(
                self, items, progress, on_start=started, max_queries_in_flight=max_queries_in_flight
            )
        finally:
            runs.clear()
        self.last_stats = batch.total_stats()
        return batch

    def plan_for_batch(
        self,
        sql: str,
        params: Params,
        stats: StatementStats,
        shapes: dict[str, StatementPlan | None] | None = None,
    ) -> StatementPlan:
        """Plan one query of a batch (the batch driver calls it in input order).

        With `shapes` (one dict per batch segment: the catalog does not change within it),
        queries that differ only in literal values share one plan: the first query of a shape
        is planned, the shape with sentinel values too, and when the sentinel plan with the first
        query's values put back equals that query's plan, every later query of the shape gets
        the sentinel plan with its own values (halo_sql.parser.shapes) instead of a planning run.
        """
        statements = split_statements(sql)
        if len(statements) != 1:
            raise ProgrammingError(f"a batch item must be one statement, got {len(statements)}")
        statement = statements[0]
        with self._lock:
            previous, self._current = self._current, stats
            try:
                shape = (
                    shape_of(statement.text, _PROTECTED_CALLS, params, shallow_calls=AGENT_NAMES)
                    if shapes is not None and _LLM_NAME.search(statement.text)
                    else None
                )
                if shape is None or shapes is None:
                    return self._plan(statement, statement.text, params, batch=True)
                if shape.key in shapes:
                    shaped = shapes[shape.key]
                    if shaped is not None:
                        return instantiate(shaped, shape.substitute)
                    return self._plan(statement, statement.text, params, batch=True)
                plan = self._plan(statement, statement.text, params, batch=True)
                shapes[shape.key] = None
                sentinel = split_statements(shape.sentinel_sql)[0]
                # The optimizer's statistics queries see the first query's values, so the
                # sentinel plan makes the choices the real query's plan made.
                self.statistics_sql = shape.substitute
                try:
                    with contextlib.suppress(HaloError, duckdb.Error):
                        shaped = self._plan(sentinel, sentinel.text, None, batch=True)
                        if instantiate(shaped, shape.substitute).root == plan.root:
                            # Every query of the shape gets this physical plan, values put in.
                            physical = physical_plan(shaped.root, self.settings)
                            shapes[shape.key] = dataclasses.replace(shaped, prepared=physical)
                finally:
                    self.statistics_sql = None
                return plan
            except duckdb.Error as exc:
                raise duckdb_error(exc) from None
            except HaloError:
                raise
            except Exception as exc:
                raise _internal(exc) from exc
            finally:
                self._current = previous

    def submit(self, sql: str, params: Params = None) -> concurrent.futures.Future[Result]:
        """Online mode: start one statement now and return a future of its Result.

        A query is planned here and joins the running work at once: its requests share the
        engine and every in-flight identical request with the statements already running (no
        mini-batch window). A statement that changes state runs before this returns.

            >>> session = Session(backend="sim")
            >>> session.submit("SELECT 41 + 1 AS answer").result().table.to_pylist()
            [{'answer': 42}]
        """
        from halo_sql.executor.batch import is_query

        future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        if not is_query(sql):
            try:
                future.set_result(self.execute(sql, params))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        stats = StatementStats(memo=ResponseMemo(self.memo_capacity))
        began = time.perf_counter()
        try:
            # Arrivals of one shape are planned once (the catalog holds until a statement that
            # changes state runs: `execute` then forgets the shapes).
            plan = self.plan_for_batch(sql, params, stats, self._online_shapes)
        except BaseException as exc:
            future.set_exception(exc)
            return future
        stats.planning_seconds = time.perf_counter() - began
        with self._lock:
            if self._online is None:
                self._online = ConnectionSource.pool(self.connection, self.registrations)
            source = self._online

        async def run() -> Result:
            try:
                table = await self.arun_plan(plan, stats, params, source, None)
            finally:
                stats.seconds = time.perf_counter() - began
            stats.rows_out = table.num_rows if table is not None else 0
            return Result(table, stats, sql)

        inner = aio.spawn(run())
        self._running.add(inner)

        def relay(done: concurrent.futures.Future[Result]) -> None:
            self._running.discard(done)
            if done.cancelled():
                future.set_exception(QueryCancelled("statement cancelled"))
            elif done.exception() is not None:
                future.set_exception(_as_halo_error(done.exception()))  # type: ignore[arg-type]
            else:
                future.set_result(done.result())

        inner.add_done_callback(relay)
        return future

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
            locations = option_locations(statement.options)
            options = dict(statement.options)
            path = options.pop("model", None)
            if path is not None and not isinstance(path, str):
                raise BinderError(
                    f"CREATE MODEL {statement.name}: model must be a path or hub id string, "
                    f"got {path!r}", location=locations.get("model"),
                )
            # The backend's own refusals first (an API key given as an option is never stored).
            check_spec(ModelSpec(statement.name, statement.backend, path, options))
            options = check_model_options(statement.name, statement.backend, options, locations)
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
        if isinstance(statement, ClearResponseCache):
            removed = self.clear_response_cache()
            return pa.table({"removed_responses": pa.array([removed], pa.int64())})
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


_LLM_FAILURES = re.compile(
    r"^\s*SET\s+(?:SESSION\s+)?llm_failures\s*(?:=|\bTO\b)\s*'?(\w+)'?\s*;?\s*$", re.I
)


_WAKE_SECONDS = 0.1
"""How often a statement's waiting thread wakes up to notice a Ctrl-C."""

_STOP_SECONDS = 10.0
"""How long a cancelled statement waits for its work to stop (aborting engine requests takes
milliseconds; a DuckDB query being interrupted may take longer)."""

_RESPONSE_CACHE = re.compile(
    r"^\s*SET\s+(?:SESSION\s+)?response_cache\s*(?:=|\bTO\b)\s*(.*?)\s*;?\s*$", re.I | re.S
)


def _response_cache_value(value: str) -> bool | str:
    """on / off (also true/false), or a quoted path of a cache file."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        text = value[1:-1].replace("''", "'")
        if text.lower() in ("on", "off", "true", "false"):
            return text.lower() in ("on", "true")
        if not text.strip():
            raise ProgrammingError("SET response_cache: the path of a cache file is empty")
        return text
    word = value.lower()
    if word in ("on", "true"):
        return True
    if word in ("off", "false"):
        return False
    raise ProgrammingError(
        f"SET response_cache takes on, off or a quoted path of a cache file, not {value!r}"
    )


def _database_file(connection: duckdb.DuckDBPyConnection) -> str | None:
    """The file of the connection's current database (None when it lives in memory)."""
    try:
        rows = connection.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchall()
    except duckdb.Error:
        return None
    if not rows or not rows[0][0] or str(rows[0][0]) == ":memory:":
        return None
    return os.path.abspath(str(rows[0][0]))


def _llm_failure_mode(value: str) -> str:
    mode = value.lower()
    if mode not in ("raise", "null"):
        raise ProgrammingError(f"SET llm_failures takes 'raise' or 'null', not {value!r}")
    return mode


def _as_halo_error(exc: BaseException) -> BaseException:
    if isinstance(exc, HaloError):
        return exc
    if isinstance(exc, duckdb.Error):
        return duckdb_error(exc)
    if isinstance(exc, Exception):
        return _internal(exc)
    return exc


def _strip_sql_comments(text: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.S)


def _internal(exc: BaseException) -> InternalError:
    error = InternalError(
        f"internal error ({type(exc).__name__}: {exc}); please report it with the statement"
    )
    error.__cause__ = exc
    return error


def _bind_params(ast: exp.Expr, params: Params) -> exp.Expr:
    """Substitute parameter values as literals. A parameter is data: one that stands as an LLM
    call's template becomes a template without slots (its `{...}` text reaches the prompt
    verbatim and never names a column)."""
    ast = ast.copy()
    placeholders = [n for n in ast.walk() if isinstance(n, exp.Placeholder | exp.Parameter)]

    def bind(node: exp.Expr, value: Any) -> None:
        if isinstance(value, str) and is_template_argument(node):
            value = literal_template(value)
        node.replace(exp.convert(value))

    if isinstance(params, Mapping):
        for node in placeholders:
            key = str(node.name or node.this)
            if key not in params:
                raise ProgrammingError(f"no value for parameter ${key}")
            bind(node, params[key])
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
        bind(node, value)
    for node in numbered:
        if not str(node.this).isdigit():
            raise ProgrammingError(f"parameter ${node.this} needs a mapping of names to values")
        index = int(str(node.this)) - 1
        if not 0 <= index < len(values):
            raise ProgrammingError(f"no value for parameter ${index + 1}")
        bind(node, values[index])
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
        operators = stats.operators

        def actual(node: Any) -> Any:
            return operators.get(id(node))

    render = explain_json if fmt == "json" else explain_text
    return pa.table({"plan": [render(plan, actual, stats)]})


def _silence_duckdb_copy_warning() -> None:
    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")


_silence_duckdb_copy_warning()
