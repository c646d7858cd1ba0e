"""Row pipelines: every input row runs through a chain of per-row steps on its own.

A workflow chain (answer -> critique -> revise) is one `RowPipeline`: its stages are LLM calls
and the row-local SQL between them. Each input row becomes a task that awaits its first request,
then runs its next stage the moment the answer arrives, while other rows are still decoding: no
row waits for the slowest row of a step. Rows leave the pipeline in input order (so results and
LIMITs are those of one-by-one execution); memory is bounded by the rows admitted and not yet
emitted (`max_in_flight`). Under a LIMIT, rows are admitted at about the pace they pass, so model
work stops soon after enough rows have passed; closing the pipeline cancels the rows still
running, and the runtime aborts their requests in the engine.

Row-local SQL stages are evaluated in micro-batches: the rows that reach a SQL stage in the same
round of the event loop go to DuckDB together; pure renames (most CTE glue) never reach DuckDB.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.logical.llm_call import InvalidAnswer, to_arrow_value
from halo_sql.physical import operators as po

if TYPE_CHECKING:
    from halo_sql.executor.engine import ExecutionContext

Row = dict[str, Any]
_ROWID = "__halo_rowid"


class _LLMRunner:
    def __init__(self, stage: po.LLMStage, priority: int, ctx: ExecutionContext) -> None:
        self.stage = stage
        self.call = stage.call
        self.priority = priority
        self.ctx = ctx
        self.arrow_type = stage.call.arrow_type
        self.counters = ctx.counters(stage.origin)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if self.stage.output_column is None:
            return schema
        return schema.append(pa.field(self.stage.output_column, self.arrow_type))

    async def apply(self, row: Row) -> Row | None:
        stage = self.stage
        values = [row.get(a) for a in stage.arguments]
        value: Any = None
        if not any(v is None for v in values):  # NULL in, NULL out: no request
            ctx = self.ctx
            request = self.call.request([v if isinstance(v, str) else str(v) for v in values])
            response = await ctx.runtime.request(
                self.call.model, request, ctx.stats, priority=self.priority, counters=self.counters
            )
            if response.error is not None:
                ctx.stats.failed_to_null(response)
            else:
                try:
                    value = to_arrow_value(self.call.parse_answer(response.text), self.arrow_type)
                except InvalidAnswer:
                    ctx.stats.invalid_answers += 1
        if stage.output_column is None:
            return row if value is True else None
        row[stage.output_column] = value
        return row


class _ProjectRunner:
    def __init__(self, stage: po.ProjectStage) -> None:
        self.columns = stage.columns

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return pa.schema([schema.field(c) for c in self.columns])

    async def apply(self, row: Row) -> Row | None:
        return {c: row[c] for c in self.columns}


class _SQLRunner:
    """Row-local SQL over each row; rows reaching it in one loop round share one DuckDB call."""

    def __init__(self, stage: po.SQLStage, schema: pa.Schema, ctx: ExecutionContext) -> None:
        self.ctx = ctx
        flat = stage.sql
        self.renames: list[tuple[str, str]] | None = None
        if flat.columns is not None and flat.predicate is None:
            renames = []
            for name, expression in flat.columns:
                source = _identity_source(expression, schema)
                if source is None:
                    break
                renames.append((name, source))
            else:
                self.renames = renames
        if self.renames is not None:
            self.schema = pa.schema(
                [pa.field(name, schema.field(source).type) for name, source in self.renames]
            )
            return
        columns = (
            '"__halo_batch".*' if flat.columns is None
            else ", ".join(
                f"{expression} AS {_quote(name)}" for name, expression in flat.columns
            )
        )
        where = f" WHERE {flat.predicate}" if flat.predicate else ""
        self.sql = f"SELECT {_quote(_ROWID)}, {columns} FROM __halo_batch{where}"
        if flat.columns is None:  # the batch's own rowid comes first already
            self.sql = f"SELECT {columns} FROM __halo_batch{where}"
        self.input_schema = schema.append(pa.field(_ROWID, pa.int64()))
        self.schema = _output_schema(ctx, self.sql, self.input_schema)
        self._pending: list[tuple[Row, asyncio.Future[Row | None]]] = []
        self._scheduled = False

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return self.schema

    async def apply(self, row: Row) -> Row | None:
        if self.renames is not None:
            return {name: row[source] for name, source in self.renames}
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        live = [(row, future) for row, future in pending if not future.done()]
        if live:
            asyncio.get_running_loop().create_task(self._evaluate(live))

    async def _evaluate(self, items: list[tuple[Row, asyncio.Future[Row | None]]]) -> None:
        rows = [{**row, _ROWID: i} for i, (row, _) in enumerate(items)]
        try:
            batch = pa.RecordBatch.from_pylist(rows, schema=self.input_schema)
            result = await self.ctx.in_thread(self.ctx.scratch_sql, self.sql, batch)
        except BaseException as exc:
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        out: dict[int, Row] = {}
        for row in result.to_pylist():
            rowid = row.pop(_ROWID)
            out[rowid] = row
        for i, (_, future) in enumerate(items):
            if not future.done():
                future.set_result(out.get(i))


_SCHEMAS: dict[tuple[str, pa.Schema], pa.Schema] = {}


def _output_schema(ctx: ExecutionContext, sql: str, schema: pa.Schema) -> pa.Schema:
    """The schema of `sql` over batches of `schema`: DuckDB says, over an empty batch (memoized:
    the queries of a batch ask for the same few)."""
    key = (sql, schema)
    found = _SCHEMAS.get(key)
    if found is None:
        result = ctx.scratch_sql(sql, pa.RecordBatch.from_pylist([], schema=schema))
        found = pa.schema([f for f in result.schema if f.name != _ROWID])
        if len(_SCHEMAS) > 4096:
            _SCHEMAS.clear()
        _SCHEMAS[key] = found
    return found


def _identity_source(expression: str, schema: pa.Schema) -> str | None:
    """The input column an output column copies unchanged, if it is such a copy: a bare column,
    or a cast to VARCHAR of a column that is VARCHAR already."""
    import sqlglot
    from sqlglot import exp

    node = sqlglot.parse_one(expression, read="duckdb")
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Column):
        target = node.to.this if isinstance(node.to, exp.DataType) else None
        if target in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT):
            column = node.this.name
            if column in schema.names and pa.types.is_string(schema.field(column).type):
                return column
        return None
    if isinstance(node, exp.Column) and not node.table and node.name in schema.names:
        return node.name
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Runners:
    """The pipeline's stages as steps a row takes in turn. Consecutive LLM maps that do not read
    each other's answers are one step: a row asks them all at once (three judges of one listing
    are asked together, not one after another). Filters stay steps of their own, so no map is
    asked for a row a filter drops."""

    def __init__(self, op: po.RowPipeline, schema: pa.Schema, ctx: ExecutionContext) -> None:
        self.steps: list[list[tuple[Any, Any]]] = []
        group_outputs: set[str] | None = None  # outputs of the open group of independent maps
        llm_steps = 0
        for stage in op.stages:
            runner: Any
            joins_group = (
                isinstance(stage, po.LLMStage)
                and not stage.is_filter
                and group_outputs is not None
                and not group_outputs & set(stage.arguments)
            )
            if isinstance(stage, po.LLMStage):
                if not joins_group:
                    llm_steps += 1
                # Later workflow steps first: a row near its end frees its KV cache sooner.
                runner = _LLMRunner(stage, -(llm_steps - 1) if op.step_priority else 0, ctx)
            elif isinstance(stage, po.SQLStage):
                runner = _SQLRunner(stage, schema, ctx)
            else:
                runner = _ProjectRunner(stage)
            schema = runner.output_schema(schema)
            counters = ctx.counters(stage.origin) if stage.origin else None
            output = stage.output_column if isinstance(stage, po.LLMStage) else None
            if joins_group:
                self.steps[-1].append((runner, counters))
                assert group_outputs is not None and output is not None
                group_outputs.add(output)
            else:
                self.steps.append([(runner, counters)])
                group_outputs = {output} if output is not None else None
        self.schema = schema
        self.filters = any(
            isinstance(s, po.LLMStage) and s.is_filter or isinstance(s, po.SQLStage)
            for s in op.stages
        )

    async def run(self, row: Row) -> Row | None:
        current: Row | None = row
        for step in self.steps:
            if len(step) == 1:
                runner, counters = step[0]
                current = await runner.apply(current)
            else:
                # Independent maps: each adds its own column to the same row.
                results = await asyncio.gather(*(runner.apply(current) for runner, _ in step))
                current = None if any(r is None for r in results) else current
            if current is None:
                return None
            for _, counters in step:
                if counters is not None:
                    counters.rows += 1
        return current


async def run_pipeline(
    op: po.RowPipeline, ctx: ExecutionContext, child: AsyncIterator[pa.RecordBatch]
) -> AsyncIterator[pa.RecordBatch]:
    """Stream `child`'s rows through the pipeline's stages (see the module docstring)."""
    loop = asyncio.get_running_loop()
    runners: _Runners | None = None
    results: dict[int, Any] = {}
    tasks: dict[int, asyncio.Task[None]] = {}
    state = {
        "admitted": 0, "emitted": 0, "completed": 0, "passed": 0, "done": False,
        "target": op.limit_hint or 0, "hungry": False,
    }
    ready = asyncio.Event()
    room = asyncio.Event()
    failure: list[BaseException] = []
    schema_known = asyncio.Event()

    def can_admit() -> bool:
        """Whether one more input row may start now."""
        if state["admitted"] - state["emitted"] >= op.max_in_flight:
            return False
        hint = op.limit_hint
        if hint is None:
            return True
        passed, completed = state["passed"], state["completed"]
        running = state["admitted"] - completed
        if passed >= state["target"]:
            # Enough rows passed for the consumer's LIMIT. Only when it asks for more (a later
            # filter rejected some) and nothing is running, go on for another hint's worth.
            if not (state["hungry"] and running == 0):
                return False
            state["target"] = passed + hint
        if runners is not None and not runners.filters:
            selectivity = 1.0
        else:
            selectivity = max(passed / completed, 0.05) if completed else 0.5
        needed = state["target"] - passed
        return running < max(1, math.ceil(needed / selectivity))

    async def run_row(index: int, row: Row) -> None:
        assert runners is not None
        try:
            result: Any = await runners.run(row)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            result = exc
        results[index] = result
        state["completed"] += 1
        if result is not None and not isinstance(result, BaseException):
            state["passed"] += 1
        tasks.pop(index, None)
        ready.set()
        room.set()

    async def produce() -> None:
        nonlocal runners
        try:
            async for batch in child:
                if runners is None:
                    runners = _Runners(op, batch.schema, ctx)
                    schema_known.set()
                for row in batch.to_pylist():
                    while not can_admit():
                        room.clear()
                        await room.wait()
                    index = state["admitted"]
                    state["admitted"] += 1
                    tasks[index] = loop.create_task(run_row(index, row))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            failure.append(exc)
        finally:
            state["done"] = True
            schema_known.set()
            ready.set()

    producer = loop.create_task(produce())
    yielded = False
    try:
        while True:
            out: list[Row] = []
            while state["emitted"] in results:
                result = results.pop(state["emitted"])
                state["emitted"] += 1
                if isinstance(result, BaseException):
                    raise result
                if result is not None:
                    out.append(result)
            if state["emitted"] and not out:
                room.set()
            if out:
                assert runners is not None
                room.set()
                yielded = True
                yield pa.RecordBatch.from_pylist(out, schema=runners.schema)
                continue
            if failure:
                raise failure[0]
            if state["done"] and state["emitted"] == state["admitted"]:
                break
            ready.clear()
            state["hungry"] = True
            room.set()
            await ready.wait()
            state["hungry"] = False
        if not yielded:
            await schema_known.wait()
            if runners is not None:
                yield pa.RecordBatch.from_pylist([], schema=runners.schema)
    finally:
        producer.cancel()
        for task in list(tasks.values()):
            task.cancel()
        pending = [producer, *tasks.values()]
        await asyncio.gather(*pending, return_exceptions=True)
        if hasattr(child, "aclose"):
            await child.aclose()


def scratch_sql(con: duckdb.DuckDBPyConnection, sql: str, batch: pa.RecordBatch) -> pa.Table:
    """Run `sql` over `batch` registered as `__halo_batch` on a private connection."""
    con.register("__halo_batch", batch)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise duckdb_error(exc) from None
    finally:
        con.unregister("__halo_batch")
