"""Choose physical operators for a logical plan.

Per-row steps are fused into row pipelines: an LLM map or filter, a SQL filter, a projection, and
a DuckDB query that is row-local over exactly one input (`rowlocal.flatten`: the SQL a CTE chain
leaves between two LLM steps) all become stages of one `RowPipeline`, so a row runs through a
whole workflow chain without waiting for the other rows of any step. A sub-plan read by more
than one consumer is not fused into either (it runs once and is materialized), and neither is
anything above a barrier (a join, an aggregate, an ORDER BY: DuckDB runs those on whole inputs).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from dataclasses import dataclass
from functools import singledispatch

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.eliminate_ctes import eliminate_ctes

from halo_sql.logical import plan as lp
from halo_sql.physical import operators as po
from halo_sql.physical.rowlocal import RowLocalSQL, flatten


@dataclass(frozen=True)
class PhysicalSettings:
    duckdb_batch_rows: int = 2048
    """Rows per record batch read from DuckDB."""
    llm_batch_rows: int = 1024
    """Kept for compatibility: row pipelines admit rows one by one (see max_rows_in_flight)."""
    max_rows_in_flight: int = 4096
    """Rows a row pipeline admits before earlier ones are emitted (bounds memory)."""
    pipelining: bool = True
    """False: no row-local DuckDB step is fused into a pipeline (every CTE is materialized);
    the answers are the same, the chain waits for whole steps."""
    step_priority: bool = True
    """Later workflow steps of a row pipeline get a higher engine priority (rows near their end
    finish first); False: every request has the same priority (first come, first served)."""


class _Context:
    def __init__(self, settings: PhysicalSettings, uses: Counter[int]) -> None:
        self.settings = settings
        self.uses = uses
        self.memo: dict[int, po.PhysicalOp] = {}


@singledispatch
def to_physical(node: lp.PlanNode, ctx: _Context) -> po.PhysicalOp:
    raise TypeError(f"no physical operator for {type(node).__name__}")


def physical_plan(root: lp.PlanNode, settings: PhysicalSettings | None = None) -> po.PhysicalOp:
    """The physical plan of `root`; shared sub-plans map to one shared operator."""
    return _convert(root, _Context(settings or PhysicalSettings(), _references(root)))


def _references(root: lp.PlanNode) -> Counter[int]:
    """How many parents read each node (a node read twice is materialized, never fused)."""
    uses: Counter[int] = Counter()
    seen: set[int] = set()

    def visit(node: lp.PlanNode) -> None:
        for child in _live_children(node):
            uses[id(child)] += 1
            if id(child) not in seen:
                seen.add(id(child))
                visit(child)

    visit(root)
    return uses


def _live_children(node: lp.PlanNode) -> tuple[lp.PlanNode, ...]:
    if isinstance(node, lp.DuckDBQuery):
        return tuple(named.plan for named in live_inputs(node)[1])
    return node.children


@functools.lru_cache(maxsize=4096)
def live_inputs(node: lp.DuckDBQuery) -> tuple[str, tuple[lp.NamedInput, ...]]:
    """The query's SQL without the CTEs nothing reads, and the inputs that SQL still reads.

    The block planner puts every CTE of the statement in front of each query it builds; an
    input only an unused CTE reads would otherwise be computed for nothing (and would keep a CTE
    chain from being fused into one pipeline).
    """
    if not node.inputs:
        return node.sql, node.inputs
    try:
        tree = sqlglot.parse_one(node.sql, read="duckdb")
        pruned = eliminate_ctes(tree.copy())
    except SqlglotError:
        return node.sql, node.inputs
    read = {t.name.lower() for t in pruned.find_all(exp.Table)}
    inputs = tuple(named for named in node.inputs if named.name.lower() in read)
    if len(inputs) == len(node.inputs):
        return node.sql, node.inputs
    return pruned.sql("duckdb"), inputs


def _convert(node: lp.PlanNode, ctx: _Context) -> po.PhysicalOp:
    if id(node) not in ctx.memo:
        ctx.memo[id(node)] = to_physical(node, ctx)
    return ctx.memo[id(node)]


def _extend(
    node: lp.PlanNode, child: lp.PlanNode, stage: po.Stage, ctx: _Context
) -> po.RowPipeline:
    """`stage` appended to the child's pipeline when the child is one read only here, else a new
    pipeline over the child."""
    below = _convert(child, ctx)
    if isinstance(below, po.RowPipeline) and ctx.uses[id(child)] <= 1:
        return dataclasses.replace(below, stages=(*below.stages, stage))
    return po.RowPipeline(
        below, (stage,), max_in_flight=ctx.settings.max_rows_in_flight,
        step_priority=ctx.settings.step_priority,
    )


@to_physical.register
def _(node: lp.DuckDBQuery, ctx: _Context) -> po.PhysicalOp:
    sql, live = live_inputs(node)
    if ctx.settings.pipelining and len(live) == 1 and not node.udfs:
        named = live[0]
        below = _convert(named.plan, ctx)
        if isinstance(below, po.RowPipeline) and ctx.uses[id(named.plan)] <= 1:
            flat = flatten(sql, {named.name})
            if flat is not None:
                return _extend(node, named.plan, po.SQLStage(flat, origin=id(node)), ctx)
    inputs = tuple(po.PhysicalInput(i.name, _convert(i.plan, ctx)) for i in live)
    return po.DuckDBSubplan(sql, inputs, node.udfs, ctx.settings.duckdb_batch_rows, origin=id(node))


@to_physical.register
def _(node: lp.LLMFilter, ctx: _Context) -> po.PhysicalOp:
    stage = po.LLMStage(node.call, node.arguments, None, origin=id(node))
    pipeline = _extend(node, node.child, stage, ctx)
    if node.limit_hint is not None:
        pipeline = dataclasses.replace(pipeline, limit_hint=node.limit_hint)
    return pipeline


@to_physical.register
def _(node: lp.LLMMap, ctx: _Context) -> po.PhysicalOp:
    stage = po.LLMStage(node.call, node.arguments, node.output_column, origin=id(node))
    return _extend(node, node.child, stage, ctx)


@to_physical.register
def _(node: lp.SQLFilter, ctx: _Context) -> po.PhysicalOp:
    stage = po.SQLStage(RowLocalSQL("__halo_row", None, node.predicate), origin=id(node))
    return _extend(node, node.child, stage, ctx)


@to_physical.register
def _(node: lp.Project, ctx: _Context) -> po.PhysicalOp:
    return _extend(node, node.child, po.ProjectStage(node.columns, origin=id(node)), ctx)


@to_physical.register
def _(node: lp.Limit, ctx: _Context) -> po.PhysicalOp:
    child = _convert(node.child, ctx)
    if isinstance(child, po.RowPipeline) and child.limit_hint is None:
        child = dataclasses.replace(child, limit_hint=node.count)
    return po.LimitOp(child, node.count, origin=id(node))


@to_physical.register
def _(node: lp.AgentCall, ctx: _Context) -> po.PhysicalOp:
    child = _convert(node.child, ctx)
    return po.AgentLoop(
        child, node.agent, node.tools, node.input_columns, ctx.settings.llm_batch_rows,
        origin=id(node),
    )
