"""Run physical plans as asynchronous streams of Arrow record batches.

Every operator is an async generator on the halo loop (`halo_sql.llm.aio`): nothing runs before
the first batch is pulled, LLM work is row by row (`pipeline.run_pipeline`) and DuckDB work runs
in worker threads, so one thread drives any number of running statements and a whole batch of
queries is one running DAG. Inputs of a DuckDB step are computed concurrently. Every operator
yields at least one batch (possibly empty) so schemas flow to the consumer.

    >>> import halo_sql
    >>> con = halo_sql.connect(backend="sim")
    >>> con.sql("SELECT LLM_FILTER('Is {x} even?') AS even FROM (SELECT 2 AS x)").num_rows
    1
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import singledispatch
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from halo_sql.errors import HaloError
from halo_sql.executor.duckdb_bridge import duckdb_error, register_llm_udf
from halo_sql.executor.pipeline import run_pipeline, scratch_sql
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.llm.base import LLMResponse
from halo_sql.physical import operators as po

T = TypeVar("T")

_SCRATCH: list[duckdb.DuckDBPyConnection] = []
"""Private in-memory DuckDBs for row-local SQL over batches, free for the next call."""
_SCRATCH_LOCK = threading.Lock()

_THREADS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="halo-duckdb")
"""DuckDB work (and other blocking work: agent loops, DuckDB steps whose LLM functions wait for
answers) runs here, never on the loop. Threads are made on demand; a thread blocked in an LLM
function waiting for its answers costs no CPU."""


@dataclass
class OperatorCounters:
    """What one operator did (EXPLAIN ANALYZE): its own requests; rows it emitted; the seconds
    from its first pull to its end (operators run concurrently, so these overlap)."""

    rows: int = 0
    llm_requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_unknown_requests: int = 0
    """Requests whose backend did not report cached tokens: `cached_prompt_tokens` is unknown."""
    output_tokens: int = 0
    seconds: float = 0.0

    def charge(self, response: LLMResponse) -> None:
        self.llm_requests += 1
        self.prompt_tokens += response.prompt_tokens
        if response.cached_prompt_tokens is None:
            self.cached_unknown_requests += 1
        else:
            self.cached_prompt_tokens += response.cached_prompt_tokens
        self.output_tokens += response.output_tokens


class ConnectionSource:
    """Where a statement's DuckDB steps get a connection.

    `exclusive(con)`: every step uses `con` in turn (a single statement on its session's own
    connection, so its temporary tables and settings are visible; DuckDB allows one open result
    per connection). `pool(con, registrations)`: every step takes a cursor of `con` of its own
    (a batch: many queries' steps run at once), with the session's registered tables.
    """

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        *,
        shared: bool,
        registrations: dict[str, Any] | None = None,
    ) -> None:
        self.connection = connection
        self.shared = shared
        self.registrations = registrations or {}
        self._lock: asyncio.Lock | None = None
        self._free: list[duckdb.DuckDBPyConnection] = []
        self._all: list[duckdb.DuckDBPyConnection] = []
        self._guard = threading.Lock()

    @classmethod
    def exclusive(cls, connection: duckdb.DuckDBPyConnection) -> ConnectionSource:
        return cls(connection, shared=False)

    @classmethod
    def pool(
        cls, connection: duckdb.DuckDBPyConnection, registrations: dict[str, Any]
    ) -> ConnectionSource:
        return cls(connection, shared=True, registrations=registrations)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[duckdb.DuckDBPyConnection]:
        if not self.shared:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                yield self.connection
            return
        with self._guard:
            con = self._free.pop() if self._free else None
        if con is None:
            con = await asyncio.get_running_loop().run_in_executor(_THREADS, self._new_cursor)
        try:
            yield con
        finally:
            with self._guard:
                self._free.append(con)

    def _new_cursor(self) -> duckdb.DuckDBPyConnection:
        con = self.connection.cursor()
        for name, data in self.registrations.items():
            con.register(name, data)
        with self._guard:
            self._all.append(con)
        return con

    def close(self) -> None:
        with self._guard:
            cursors, self._all, self._free = self._all, [], []
        for con in cursors:
            with contextlib.suppress(duckdb.Error):
                con.close()

    def interrupt(self) -> None:
        with self._guard:
            cursors = list(self._all)
        for con in [self.connection, *cursors] if not self.shared else cursors:
            with contextlib.suppress(duckdb.Error):
                con.interrupt()


class SubplanCache:
    """Results of sub-plans shared by several queries of a batch, computed once.

    Plans are immutable values, so equal sub-plans (the same CTE over the same tables in many
    queries) are the same key; a query asking while another computes it awaits the same task.
    """

    def __init__(self) -> None:
        self._tasks: dict[po.PhysicalOp, asyncio.Task[pa.Table]] = {}
        self.computed = 0
        self.reused = 0

    async def get(self, op: po.PhysicalOp, compute: Callable[[], Any]) -> pa.Table:
        task = self._tasks.get(op)
        if task is None:
            task = asyncio.get_running_loop().create_task(compute())
            self._tasks[op] = task
            self.computed += 1
        else:
            self.reused += 1
        return await asyncio.shield(task)


@dataclass
class ExecutionContext:
    """What a running statement needs: its connections, the runtime and its statistics."""

    connections: ConnectionSource
    runtime: LLMRuntime
    stats: StatementStats
    shared: SubplanCache | None = None
    """Across the queries of a batch: each distinct sub-plan runs once (keyed by plan value)."""
    tool_cache: Any = None
    """Agent tool calls of this statement (halo_sql.agents.tools.ToolCallCache, made on use)."""
    materialized: dict[str, asyncio.Task[pa.Table]] = field(default_factory=dict)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The session's connection (agent tools read the catalog through it)."""
        return self.connections.connection

    def counters(self, origin: int) -> OperatorCounters:
        counters = self.stats.operators.get(origin)
        if counters is None:
            counters = self.stats.operators[origin] = OperatorCounters()
        return counters  # type: ignore[no-any-return]

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(_THREADS, fn, *args)

    def scratch_sql(self, sql: str, batch: pa.RecordBatch) -> pa.Table:
        """`sql` over `batch` (as `__halo_batch`) on a private in-memory DuckDB."""
        # Opening a DuckDB costs milliseconds: a few are kept for every statement and thread
        # (one holds nothing between calls but the registration of the batch in hand).
        with _SCRATCH_LOCK:
            con = _SCRATCH.pop() if _SCRATCH else None
        if con is None:
            con = duckdb.connect()
        try:
            return scratch_sql(con, sql, batch)
        finally:
            with _SCRATCH_LOCK:
                _SCRATCH.append(con)

    async def aclose(self) -> None:
        """Release what the statement holds (its scratch DuckDBs are the threads', kept), once
        its work has stopped.

        Inputs still being computed are cancelled and awaited: they run as shielded tasks
        (several operators of the statement await one), so a statement cancelled by Ctrl-C
        would otherwise leave them sending requests. A batch's shared sub-plans are awaited
        through their own tasks, which other queries may still need: those go on."""
        running = [task for task in self.materialized.values() if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def execute(op: po.PhysicalOp, ctx: ExecutionContext) -> pa.Table | None:
    """Run a plan to completion; None for statements that return no rows."""
    batches = [batch async for batch in stream(op, ctx)]
    if not batches or batches[0] is None:
        return None
    return pa.Table.from_batches(batches, schema=batches[0].schema)


async def materialize(op: po.PhysicalOp, ctx: ExecutionContext) -> pa.Table:
    table = await execute(op, ctx)
    if table is None:
        raise HaloError("a sub-plan returned no result set")
    return table


def stream(op: po.PhysicalOp, ctx: ExecutionContext) -> AsyncIterator[pa.RecordBatch]:
    """The operator's output batches, counted for EXPLAIN ANALYZE."""
    return _counted(op, ctx, _stream(op, ctx))


async def _counted(
    op: po.PhysicalOp, ctx: ExecutionContext, inner: AsyncIterator[pa.RecordBatch]
) -> AsyncIterator[pa.RecordBatch]:
    origin = getattr(op, "origin", 0)
    counters = ctx.counters(origin) if origin else OperatorCounters()
    began = time.perf_counter()
    try:
        async for batch in inner:
            if batch is not None:
                counters.rows += batch.num_rows
            yield batch
    finally:
        counters.seconds += time.perf_counter() - began
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()


@singledispatch
def _stream(op: po.PhysicalOp, ctx: ExecutionContext) -> AsyncIterator[pa.RecordBatch]:
    raise TypeError(f"cannot execute {type(op).__name__}")


_udf_serial = itertools.count(1)


async def _input_table(named: po.PhysicalInput, ctx: ExecutionContext) -> pa.Table:
    task = ctx.materialized.get(named.name)
    if task is None:
        if ctx.shared is not None:
            shared = ctx.shared
            coro = shared.get(named.op, lambda: materialize(named.op, ctx))
        else:
            coro = materialize(named.op, ctx)
        task = asyncio.get_running_loop().create_task(coro)
        ctx.materialized[named.name] = task
    return await asyncio.shield(task)


@_stream.register
async def _(op: po.DuckDBSubplan, ctx: ExecutionContext) -> AsyncIterator[pa.RecordBatch]:
    # All inputs at once: independent branches of the DAG (two CTEs, UNION branches) overlap.
    tables = await asyncio.gather(*(_input_table(named, ctx) for named in op.inputs))
    async with ctx.connections.acquire() as con:
        table = await ctx.in_thread(_run_duckdb, op, ctx, con, tables)
    if table is None:
        yield None  # type: ignore[misc]  # a statement without a result set
        return
    batches = table.to_batches(max_chunksize=op.batch_rows)
    if not batches:
        yield pa.RecordBatch.from_pylist([], schema=table.schema)
        return
    for batch in batches:
        yield batch


def _run_duckdb(
    op: po.DuckDBSubplan,
    ctx: ExecutionContext,
    con: duckdb.DuckDBPyConnection,
    tables: list[pa.Table],
) -> pa.Table | None:
    """One DuckDB step, start to end, in a worker thread: register the inputs and LLM functions,
    run, fetch everything, clean up (DuckDB holds one open result per connection)."""
    registered: list[str] = []
    functions: list[str] = []
    try:
        for named, table in zip(op.inputs, tables, strict=True):
            con.register(named.name, table)
            registered.append(named.name)
        sql = op.sql
        for udf in op.udfs:
            # Functions live in the database's catalog, shared by every cursor: a name unique to
            # this execution keeps concurrent queries of a batch from colliding.
            unique = f"{udf.name}_{next(_udf_serial)}"
            sql = re.sub(rf"\b{re.escape(udf.name)}\b", unique, sql, flags=re.IGNORECASE)
            register_llm_udf(con, dataclasses.replace(udf, name=unique), ctx.runtime, ctx.stats)
            functions.append(unique)
        try:
            relation = con.sql(sql)
            if relation is None:
                return None
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
    finally:
        for name in functions:
            with contextlib.suppress(duckdb.Error):
                con.remove_function(name)
        for name in registered:
            with contextlib.suppress(duckdb.Error):
                con.unregister(name)


@_stream.register
async def _(op: po.RowPipeline, ctx: ExecutionContext) -> AsyncIterator[pa.RecordBatch]:
    async for batch in run_pipeline(op, ctx, stream(op.child, ctx)):
        yield batch


@_stream.register
async def _(op: po.LimitOp, ctx: ExecutionContext) -> AsyncIterator[pa.RecordBatch]:
    remaining = op.count
    child = stream(op.child, ctx)
    try:
        async for batch in child:
            if batch.num_rows >= remaining:
                yield batch.slice(0, remaining)
                return
            remaining -= batch.num_rows
            yield batch
    finally:
        await child.aclose()  # type: ignore[attr-defined]  # stop upstream work (running rows, their requests) right away


@_stream.register
async def _(op: po.AgentLoop, ctx: ExecutionContext) -> AsyncIterator[pa.RecordBatch]:
    from halo_sql.executor.agent_loop import run_agent_loop

    # Every step batches all running rows, so the whole input is read first; the loop itself
    # blocks on model answers and tool calls, so it runs in a worker thread.
    batches = [batch async for batch in stream(op.child, ctx) if batch is not None]
    async with ctx.connections.acquire() as con:
        agent_ctx = dataclasses.replace(ctx, connections=ConnectionSource.exclusive(con))
        out = await ctx.in_thread(lambda: list(run_agent_loop(op, batches, agent_ctx)))
    if ctx.tool_cache is None:
        ctx.tool_cache = agent_ctx.tool_cache
    for batch in out:
        yield batch
