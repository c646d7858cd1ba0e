"""Batches: many queries, one running DAG.

`run_batch` plans the queries one by one in the caller's thread and starts each on the halo loop
as soon as it is planned, so execution overlaps planning. Every query of the batch is a task on
one event loop: there is no worker pool capping how many run at once, and memory is bounded by
the rows in flight, not by the number of queries. Their requests meet in the runtime: identical
requests are sent once (the queries share one response memo, and in-flight requests are shared
process-wide), equal sub-plans run once (`SubplanCache`), and the engine gets every ready request
at once (continuous batching keeps it full).

Statements that change state (CREATE, INSERT, SET, CREATE MODEL, ...) run in input order: the
queries before one finish before it runs, the queries after it are planned after it ran. Only
the queries between two such statements run concurrently.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import pyarrow as pa
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from halo_sql.errors import HaloError, InternalError, ProgrammingError
from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.executor.engine import ConnectionSource, SubplanCache
from halo_sql.executor.runtime import ResponseMemo, Slots, StatementStats
from halo_sql.llm import aio
from halo_sql.parser.statements import (
    is_own_statement,
    split_explain,
    split_statements,
    tokens_of,
)


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


@dataclass
class BatchProgress:
    total: int
    done: int = 0
    llm_requests: int = 0


@dataclass
class BatchResult:
    """Results of a batch in input order, plus what the batch shared."""

    results: list[Result]
    subplans_computed: int = 0
    subplans_reused: int = 0
    seconds: float = 0.0
    planning_seconds: float = 0.0

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
        total.seconds = self.seconds
        total.planning_seconds = self.planning_seconds
        return total

    def stats(self) -> dict[str, Any]:
        """Totals over the batch, with what it shared."""
        out = self.total_stats().as_dict()
        out.update(
            queries=len(self.results),
            failed_queries=len(self.errors),
            subplans_computed=self.subplans_computed,
            subplans_reused=self.subplans_reused,
            planning_seconds=round(self.planning_seconds, 4),
        )
        return out


class BatchSession(Protocol):
    """What the batch driver needs of a session (halo_sql.session.Session)."""

    connection: duckdb.DuckDBPyConnection
    registrations: dict[str, Any]
    memo_capacity: int

    def execute(self, sql: str, params: Any = None) -> Result: ...

    def plan_for_batch(
        self, sql: str, params: Any, stats: StatementStats, shapes: dict[str, Any] | None = None
    ) -> Any: ...

    async def arun_plan(
        self,
        plan: Any,
        stats: StatementStats,
        params: Any,
        connections: ConnectionSource,
        shared: SubplanCache | None,
    ) -> pa.Table | None: ...


def is_query(sql: str) -> bool:
    """True for the statements a batch runs concurrently: one SELECT / set operation / VALUES.
    Everything else (statements that may change state, halo's own statements, EXPLAIN) runs on
    its own, in input order.

    >>> is_query("SELECT 1"), is_query("CREATE TABLE t AS SELECT 1"), is_query("EXPLAIN SELECT 1")
    (True, False, False)
    """
    try:
        statements = split_statements(sql)
    except HaloError:
        return False
    if len(statements) != 1:
        return False
    text = statements[0].text
    if is_own_statement(text) or split_explain(text)[0]:
        return False
    try:
        tokens = tokens_of(text)
    except TokenError:
        return False
    return _main_keyword(tokens) in _QUERY_STARTS


_QUERY_STARTS = {TokenType.SELECT, TokenType.VALUES, TokenType.FROM, TokenType.TABLE}


def _main_keyword(tokens: Sequence[Any]) -> Any:
    """The token type that starts the statement proper: the first one, or after a WITH the first
    one past its CTE definitions (`WITH a AS (...), b AS (...) SELECT ...`). A leading
    parenthesis, as in `(SELECT 1) UNION (SELECT 2)`, is skipped."""
    index = 0
    while index < len(tokens) and tokens[index].token_type == TokenType.L_PAREN:
        index += 1
    if index >= len(tokens):
        return None
    if tokens[index].token_type != TokenType.WITH:
        return tokens[index].token_type
    depth = 0
    seen_body = False
    for token in tokens[index + 1 :]:
        kind = token.token_type
        if kind == TokenType.L_PAREN:
            depth += 1
            seen_body = True
        elif kind == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and seen_body and kind != TokenType.COMMA:
            if kind in (TokenType.VAR, TokenType.ALIAS, TokenType.RECURSIVE) or token.text.upper() in (
                "AS", "MATERIALIZED", "NOT"
            ):
                seen_body = False  # the next CTE's name and AS
                continue
            return kind
    return None


class BatchRun:
    """One execution of a batch (`run_batch`), cancellable from another thread."""

    def __init__(
        self,
        session: BatchSession,
        items: Sequence[tuple[str, Any]],
        max_queries_in_flight: int | None = None,
    ) -> None:
        if max_queries_in_flight is not None and max_queries_in_flight < 1:
            raise ProgrammingError("max_queries_in_flight must be at least 1")
        self.session = session
        self.items = list(items)
        self.max_queries_in_flight = max_queries_in_flight
        self._slots = Slots(max_queries_in_flight)
        self.results = [
            Result(None, StatementStats(), sql) for sql, _ in self.items
        ]
        self.subplans = (0, 0)
        self._futures: list[concurrent.futures.Future[Any]] = []
        self._lock = threading.Lock()
        self._cancelled = False
        self._connections: list[ConnectionSource] = []

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            futures = list(self._futures)
            connections = list(self._connections)
        for result in self.results:
            result.stats.cancel.set()
        for future in futures:
            future.cancel()
        for source in connections:
            source.interrupt()

    def run(self, progress: Callable[[BatchProgress], None] | None = None) -> BatchResult:
        began = time.perf_counter()
        state = BatchProgress(total=len(self.items))
        done_lock = threading.Lock()
        computed = reused = 0
        planning = 0.0

        def finished(result: Result) -> None:
            with done_lock:
                state.done += 1
                state.llm_requests += result.stats.llm_requests
            if progress is not None:
                progress(state)

        for segment in _segments(self.items):
            if self._cancelled:
                break
            if isinstance(segment, int):  # a statement that changes state: alone, in order
                self._run_statement(segment)
                finished(self.results[segment])
                continue
            shared = SubplanCache()
            memo = ResponseMemo(self.session.memo_capacity)
            connections = ConnectionSource.pool(
                self.session.connection, dict(self.session.registrations)
            )
            with self._lock:
                self._connections.append(connections)
            waiting: list[tuple[int, concurrent.futures.Future[Any]]] = []
            shapes: dict[str, Any] = {}  # query shapes planned in this segment
            try:
                for index in segment:
                    if self._cancelled:
                        break
                    result = self.results[index]
                    result.stats = StatementStats(memo=memo)
                    sql, params = self.items[index]
                    plan_began = time.perf_counter()
                    try:
                        plan = self.session.plan_for_batch(sql, params, result.stats, shapes)
                    except BaseException as exc:
                        result.error = _as_halo(exc)
                        finished(result)
                        continue
                    finally:
                        result.stats.planning_seconds = time.perf_counter() - plan_began
                        planning += result.stats.planning_seconds
                    future = aio.spawn(
                        self._run_query(index, plan, params, connections, shared)
                    )
                    future.add_done_callback(_calls(finished, result))
                    with self._lock:
                        self._futures.append(future)
                    waiting.append((index, future))
                for index, future in waiting:
                    try:
                        future.result()
                    except concurrent.futures.CancelledError:
                        self.results[index].error = _cancelled()
            except BaseException:  # Ctrl-C while waiting: nothing of the batch keeps running
                self.cancel()
                raise
            finally:
                computed += shared.computed
                reused += shared.reused
                connections.close()
        batch = BatchResult(self.results, computed, reused)
        batch.seconds = time.perf_counter() - began
        batch.planning_seconds = planning
        return batch

    async def _run_query(
        self,
        index: int,
        plan: Any,
        params: Any,
        connections: ConnectionSource,
        shared: SubplanCache,
    ) -> None:
        async with self._slots():
            await self._run_query_now(index, plan, params, connections, shared)

    async def _run_query_now(
        self,
        index: int,
        plan: Any,
        params: Any,
        connections: ConnectionSource,
        shared: SubplanCache,
    ) -> None:
        result = self.results[index]
        began = time.perf_counter()
        try:
            result.table = await self.session.arun_plan(
                plan, result.stats, params, connections, shared
            )
        except HaloError as exc:
            result.error = exc
        except duckdb.Error as exc:
            result.error = duckdb_error(exc)
        except Exception as exc:  # a bug of ours must not cost the other queries
            result.error = _as_halo(exc)
        finally:
            result.stats.seconds = time.perf_counter() - began + result.stats.planning_seconds
            result.stats.rows_out = result.table.num_rows if result.table is not None else 0

    def _run_statement(self, index: int) -> None:
        sql, params = self.items[index]
        try:
            outcome = self.session.execute(sql, params)
            self.results[index] = Result(outcome.table, outcome.stats, sql)
        except BaseException as exc:
            self.results[index].error = _as_halo(exc)


def _calls(fn: Callable[[Result], None], result: Result) -> Callable[[Any], None]:
    return lambda _future: fn(result)


def _segments(items: Sequence[tuple[str, Any]]) -> list[int | list[int]]:
    """Runs of queries (lists of indices) between statements that change state (single ints)."""
    out: list[int | list[int]] = []
    run: list[int] = []
    for index, (sql, _) in enumerate(items):
        if is_query(sql):
            run.append(index)
            continue
        if run:
            out.append(run)
            run = []
        out.append(index)
    if run:
        out.append(run)
    return out


def _cancelled() -> HaloError:
    from halo_sql.errors import QueryCancelled

    return QueryCancelled("the batch was cancelled")


def _as_halo(exc: BaseException) -> HaloError:
    if isinstance(exc, HaloError):
        return exc
    if isinstance(exc, duckdb.Error):
        return duckdb_error(exc)
    if isinstance(exc, KeyboardInterrupt):
        return _cancelled()
    error = InternalError(
        f"internal error ({type(exc).__name__}: {exc}); please report it with the statement"
    )
    error.__cause__ = exc
    return error


def run_batch(
    session: BatchSession,
    items: Sequence[tuple[str, Any]],
    progress: Callable[[BatchProgress], None] | None = None,
    on_start: Callable[[BatchRun], None] | None = None,
    max_queries_in_flight: int | None = None,
) -> BatchResult:
    """Run a batch (see the module docstring); `on_start` receives the run (for cancelling)."""
    run = BatchRun(session, items, max_queries_in_flight)
    if on_start is not None:
        on_start(run)
    return run.run(progress)
