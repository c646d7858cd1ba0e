"""Choose physical operators for a logical plan (one implementation per node for now)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import singledispatch

from halo_sql.logical import plan as lp
from halo_sql.physical import operators as po


@dataclass(frozen=True)
class PhysicalSettings:
    duckdb_batch_rows: int = 2048
    """Rows per record batch read from DuckDB."""
    llm_batch_rows: int = 1024
    """Rows an LLM operator turns into prompts per runtime call."""


@singledispatch
def to_physical(node: lp.PlanNode, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    raise TypeError(f"no physical operator for {type(node).__name__}")


def physical_plan(root: lp.PlanNode, settings: PhysicalSettings | None = None) -> po.PhysicalOp:
    """The physical plan of `root`; shared sub-plans map to one shared operator."""
    return _convert(root, settings or PhysicalSettings(), {})


def _convert(node: lp.PlanNode, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    if id(node) not in memo:
        memo[id(node)] = to_physical(node, settings, memo)
    return memo[id(node)]


@to_physical.register
def _(node: lp.DuckDBQuery, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    inputs = tuple(po.PhysicalInput(i.name, _convert(i.plan, settings, memo)) for i in node.inputs)
    return po.DuckDBSubplan(node.sql, inputs, node.udfs, settings.duckdb_batch_rows)


@to_physical.register
def _(node: lp.LLMFilter, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    child = _convert(node.child, settings, memo)
    return po.LLMBatchFilter(child, node.call, node.arguments, settings.llm_batch_rows, node.limit_hint)


@to_physical.register
def _(node: lp.LLMMap, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    child = _convert(node.child, settings, memo)
    return po.LLMBatchMap(child, node.call, node.arguments, node.output_column, settings.llm_batch_rows)


@to_physical.register
def _(node: lp.SQLFilter, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    return po.BatchSQLFilter(_convert(node.child, settings, memo), node.predicate)


@to_physical.register
def _(node: lp.Project, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    return po.ProjectOp(_convert(node.child, settings, memo), node.columns)


@to_physical.register
def _(node: lp.Limit, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    return po.LimitOp(_convert(node.child, settings, memo), node.count)


@to_physical.register
def _(node: lp.AgentCall, settings: PhysicalSettings, memo: dict[int, po.PhysicalOp]) -> po.PhysicalOp:
    child = _convert(node.child, settings, memo)
    return po.AgentLoop(child, node.agent, node.tools, node.input_columns, settings.llm_batch_rows)
