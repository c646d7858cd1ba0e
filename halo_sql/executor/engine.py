"""Run physical plans as pull-based streams of Arrow record batches.

Each operator is a generator: nothing runs before the first batch is pulled, and an operator only
pulls as much input as its output needs, so a LIMIT above an LLM filter stops model work early.
Every operator yields at least one batch (possibly empty) so schemas flow to the consumer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import singledispatch
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from halo_sql.errors import HaloError
from halo_sql.executor.duckdb_bridge import duckdb_error, register_llm_udf
from halo_sql.executor.llm_eval import evaluate_rows
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.physical import operators as po


class SubplanCache:
    """Results of sub-plans shared by several queries of a batch, computed once.

    Plans are immutable values, so equal sub-plans (the same CTE over the same tables in many
    queries) are the same key; a second query asking while the first computes waits for it.
    """

    def __init__(self) -> None:
        self._done: dict[po.PhysicalOp, pa.Table] = {}
        self._running: dict[po.PhysicalOp, threading.Event] = {}
        self._lock = threading.Lock()
        self.computed = 0
        self.reused = 0

    def get(self, op: po.PhysicalOp, compute: Callable[[], pa.Table]) -> pa.Table:
        while True:
            with self._lock:
                if op in self._done:
                    self.reused += 1
                    return self._done[op]
                event = self._running.get(op)
                if event is None:
                    event = self._running[op] = threading.Event()
                    break
            event.wait()
        try:
            table = compute()
            with self._lock:
                self._done[op] = table
                self.computed += 1
            return table
        finally:
            with self._lock:
                self._running.pop(op, None)
            event.set()


@dataclass
class ExecutionContext:
    connection: duckdb.DuckDBPyConnection
    runtime: LLMRuntime
    stats: StatementStats
    materialized: dict[str, pa.Table] = field(default_factory=dict)
    shared: SubplanCache | None = None
    """Across the queries of a batch: each distinct sub-plan runs once (keyed by plan value)."""
    tool_cache: Any = None
    """Agent tool calls of this statement (halo_sql.agents.tools.ToolCallCache, made on use)."""
    prefetch_depth: int = 2
    """Batches a purely relational input may run ahead of the LLM operator reading it (0: off)."""
    _scratch: threading.local = field(default_factory=threading.local)
    _scratches: list[duckdb.DuckDBPyConnection] = field(default_factory=list)

    @property
    def scratch(self) -> duckdb.DuckDBPyConnection:
        """A private in-memory DuckDB for batch-local expressions (the main connection may be
        streaming a result, and DuckDB allows one open result per connection); one per thread,
        since a prefetching input evaluates its filters in its own thread."""
        con = getattr(self._scratch, "con", None)
        if con is None:
            con = self._scratch.con = duckdb.connect()
            self._scratches.append(con)
        return con

    def close(self) -> None:
        for con in self._scratches:
            con.close()
        self._scratches.clear()
        self._scratch = threading.local()


_RELATIONAL = (po.DuckDBSubplan, po.BatchSQLFilter, po.ProjectOp, po.LimitOp)


def _model_input(child: po.PhysicalOp, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    """The input of an LLM operator. A purely relational input (DuckDB reading and filtering,
    no model calls, no sub-plans to materialize) runs ahead in its own thread by at most
    `prefetch_depth` batches: DuckDB prepares the next batch while the model answers this one,
    and memory stays bounded by the queue."""
    if ctx.prefetch_depth > 0 and _purely_relational(child):
        return _prefetch(stream(child, ctx), ctx.prefetch_depth)
    return stream(child, ctx)


def _purely_relational(op: po.PhysicalOp) -> bool:
    if not isinstance(op, _RELATIONAL):
        return False
    if isinstance(op, po.DuckDBSubplan) and (op.inputs or op.udfs):
        return False
    return all(_purely_relational(child) for child in op.children)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _prefetch(source: Iterator[pa.RecordBatch], depth: int) -> Iterator[pa.RecordBatch]:
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in source:
                if not put(batch):
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            # Closing runs the source's cleanup (DuckDB reader, registrations) in this thread,
            # the one that opened them.
            if hasattr(source, "close"):
                source.close()
            put(_END)

    producer = threading.Thread(target=produce, name="halo-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()


def execute(op: po.PhysicalOp, ctx: ExecutionContext) -> pa.Table | None:
    """Run a plan to completion; None for statements that return no rows."""
    batches = list(stream(op, ctx))
    if not batches or batches[0] is None:
        return None
    return pa.Table.from_batches(batches, schema=batches[0].schema)


def materialize(op: po.PhysicalOp, ctx: ExecutionContext) -> pa.Table:
    table = execute(op, ctx)
    if table is None:
        raise HaloError("a sub-plan returned no result set")
    return table


_udf_serial = itertools.count(1)


@singledispatch
def stream(op: po.PhysicalOp, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    raise TypeError(f"cannot execute {type(op).__name__}")


@stream.register
def _(op: po.DuckDBSubplan, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    for named in op.inputs:
        if named.name not in ctx.materialized:
            if ctx.shared is not None:
                ctx.materialized[named.name] = ctx.shared.get(
                    named.op, functools.partial(materialize, named.op, ctx)
                )
            else:
                ctx.materialized[named.name] = materialize(named.op, ctx)
    con = ctx.connection
    registered: list[str] = []
    functions: list[str] = []
    reader = None
    try:
        for named in op.inputs:
            con.register(named.name, ctx.materialized[named.name])
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
                yield None  # type: ignore[misc]  # a statement without a result set
                return
            reader = relation.to_arrow_reader(op.batch_rows)
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
        produced = False
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except duckdb.Error as exc:
                raise duckdb_error(exc) from None
            produced = True
            yield batch
        if not produced:
            yield pa.RecordBatch.from_pylist([], schema=reader.schema)
    finally:
        if reader is not None:
            reader.close()
        for name in functions:
            with contextlib.suppress(duckdb.Error):
                con.remove_function(name)
        for name in registered:
            with contextlib.suppress(duckdb.Error):
                con.unregister(name)


@stream.register
def _(op: po.LLMBatchFilter, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    passed = seen = 0
    for batch in _model_input(op.child, ctx):
        if batch.num_rows == 0:
            yield batch
            continue
        offset = 0
        while offset < batch.num_rows:
            size = op.batch_rows
            if op.limit_hint is not None:
                # The consumer stops pulling once it has its rows. Past the hint (a later filter
                # rejected some), keep going in chunks sized for the hint again: never stop here.
                needed = op.limit_hint - passed if passed < op.limit_hint else op.limit_hint
                # Ask for about as many rows as should pass, given the selectivity seen so far.
                selectivity = max(passed / seen, 0.05) if seen else 0.5
                size = min(op.batch_rows, max(8, math.ceil(needed / selectivity)))
            piece = batch.slice(offset, size)
            offset += piece.num_rows
            mask = evaluate_rows(op.call, [piece.column(a) for a in op.arguments], ctx.runtime, ctx.stats, rows=piece.num_rows)
            kept = piece.filter(pc.fill_null(mask, False))
            seen += piece.num_rows
            passed += kept.num_rows
            yield kept


@stream.register
def _(op: po.LLMBatchMap, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    # Small input batches (the branches of a UNION ALL, say) are gathered up to `batch_rows`
    # first: one model batch for them all rather than one each.
    pending: list[pa.RecordBatch] = []
    rows = 0

    def evaluate(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(batches).combine_chunks()
        for batch in table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]:
            for offset in range(0, max(batch.num_rows, 1), op.batch_rows):
                piece = batch.slice(offset, op.batch_rows)
                values = evaluate_rows(
                    op.call, [piece.column(a) for a in op.arguments], ctx.runtime, ctx.stats,
                    rows=piece.num_rows,
                )
                yield piece.append_column(pa.field(op.output_column, values.type), values)

    for batch in _model_input(op.child, ctx):
        pending.append(batch)
        rows += batch.num_rows
        if rows >= op.batch_rows:
            yield from evaluate(pending)
            pending, rows = [], 0
    if pending:
        yield from evaluate(pending)


@stream.register
def _(op: po.BatchSQLFilter, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    scratch = ctx.scratch
    for batch in stream(op.child, ctx):
        if batch.num_rows == 0:
            yield batch
            continue
        scratch.register("__halo_batch", batch)
        try:
            mask = scratch.sql(f"SELECT ({op.predicate}) AS m FROM __halo_batch").to_arrow_table()
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
        finally:
            scratch.unregister("__halo_batch")
        yield batch.filter(pc.fill_null(mask.column("m").combine_chunks(), False))


@stream.register
def _(op: po.ProjectOp, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    for batch in stream(op.child, ctx):
        yield batch.select(list(op.columns))


@stream.register
def _(op: po.LimitOp, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    remaining = op.count
    child = stream(op.child, ctx)
    try:
        for batch in child:
            if batch.num_rows >= remaining:
                yield batch.slice(0, remaining)
                return
            remaining -= batch.num_rows
            yield batch
    finally:
        if isinstance(child, Generator):
            child.close()  # stop upstream work (and close DuckDB readers) right away


@stream.register
def _(op: po.AgentLoop, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:
    from halo_sql.agents.loop import run_agent_loop

    # Every step batches all running rows, so the whole input is read first. Reading it also
    # closes any DuckDB result the input streams from: SQL tools use the same connection.
    batches = [batch for batch in stream(op.child, ctx) if batch is not None]
    yield from run_agent_loop(op, batches, ctx)


# -- per-operator counters for EXPLAIN ANALYZE (issue 4) ------------------------------------------
# Every stream is wrapped once, here at the end, so the operators above stay as they are: the
# counters are inclusive (a consumer pulls its inputs while it runs); EXPLAIN subtracts inputs.


@dataclass
class OperatorCounters:
    """What one physical operator did, including the work of its inputs."""

    rows: int = 0
    llm_requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_unknown_requests: int = 0
    """Requests whose backend did not report cached tokens: `cached_prompt_tokens` is unknown."""
    output_tokens: int = 0
    seconds: float = 0.0


_operator_stream = stream


def stream(op: po.PhysicalOp, ctx: ExecutionContext) -> Iterator[pa.RecordBatch]:  # type: ignore[no-redef]
    return _counted(op, ctx, _operator_stream(op, ctx))


def _counted(
    op: po.PhysicalOp, ctx: ExecutionContext, inner: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    counters = ctx.stats.operators.setdefault(op, OperatorCounters())
    stats = ctx.stats
    try:
        while True:
            before = (
                stats.llm_requests, stats.prompt_tokens, stats.cached_prompt_tokens,
                stats.output_tokens, stats.cached_unknown_requests,
            )
            began = time.perf_counter()
            try:
                batch = next(inner)
            except StopIteration:
                return
            finally:
                counters.seconds += time.perf_counter() - began
                counters.llm_requests += stats.llm_requests - before[0]
                counters.prompt_tokens += stats.prompt_tokens - before[1]
                counters.cached_prompt_tokens += stats.cached_prompt_tokens - before[2]
                counters.output_tokens += stats.output_tokens - before[3]
                counters.cached_unknown_requests += stats.cached_unknown_requests - before[4]
            if batch is not None:
                counters.rows += batch.num_rows
            yield batch
    finally:
        if isinstance(inner, Generator):
            inner.close()
