"""Logical plan nodes: plain immutable data (frozen dataclasses), no live connections.

A statement with LLM calls becomes a small DAG. Relational work stays SQL text that DuckDB runs
(`DuckDBQuery`); LLM work becomes operators over the rows that reach it:

    DuckDBQuery  SELECT ... FROM __halo_rows_0 ...          <- residual: grouping, ordering, output
      input __halo_rows_0:
        LLMMap  __llm_1 = llm(...)                          <- per-row LLM values the query needs
          Limit 100                                         <- stop as soon as enough rows passed
            LLMFilter llm_filter(...)                       <- LLM predicates, after cheap ones
              DuckDBQuery SELECT ... WHERE stars <= 2       <- the relational source

`explain(plan)` prints that tree deterministically (golden tests compare it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from halo_sql.agents.spec import AgentSpec, ToolSpec
from halo_sql.logical.llm_call import LLMCall


@dataclass(frozen=True)
class PlanNode:
    """Base of all plan nodes."""

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return ()

    def walk(self) -> Iterator[PlanNode]:
        """This node and everything below it, depth first (shared inputs once per reference)."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class NamedInput:
    """A sub-plan whose rows a DuckDBQuery reads as a table called `name`."""

    name: str
    plan: PlanNode


@dataclass(frozen=True)
class LLMUdf:
    """An LLM call DuckDB evaluates itself, as a vectorized function registered for the query.

    Used where the planner does not lift a call into its own operator (aggregate LLM functions,
    calls in correlated subqueries, HAVING, outer-join conditions): every vector DuckDB hands
    over is still answered as one batch.
    """

    name: str
    call: LLMCall
    arity: int
    aggregate: bool = False
    """True: the single argument is a LIST of items (one group) to reduce, rank or pick from."""
    chunk_tokens: int | None = None
    """Aggregates: the most prompt tokens of one request; groups larger than that are reduced
    hierarchically. None: as many as the model's context holds (the optimizer may choose less)."""


@dataclass(frozen=True)
class DuckDBQuery(PlanNode):
    """SQL that DuckDB runs over its catalog plus the named inputs."""

    sql: str
    inputs: tuple[NamedInput, ...] = ()
    udfs: tuple[LLMUdf, ...] = ()

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return tuple(i.plan for i in self.inputs)


@dataclass(frozen=True)
class LLMFilter(PlanNode):
    """Keep the rows for which the model answers yes."""

    child: PlanNode
    call: LLMCall
    arguments: tuple[str, ...]
    """Input columns holding the template's slot values (VARCHAR), in slot order."""
    limit_hint: int | None = None
    """A LIMIT above needs this many rows: work in chunks sized to pass about that many, so the
    LIMIT can stop pulling (and model work) early. A hint, not a bound: filters above this one
    may reject rows and pull more."""

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return (self.child,)


@dataclass(frozen=True)
class LLMMap(PlanNode):
    """Add a column holding the model's answer for each row."""

    child: PlanNode
    call: LLMCall
    arguments: tuple[str, ...]
    output_column: str

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return (self.child,)


@dataclass(frozen=True)
class SQLFilter(PlanNode):
    """Keep the rows satisfying a DuckDB predicate over the input's columns."""

    child: PlanNode
    predicate: str

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return (self.child,)


@dataclass(frozen=True)
class Project(PlanNode):
    """Keep only the named columns (drops slot-argument columns no longer needed)."""

    child: PlanNode
    columns: tuple[str, ...]

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return (self.child,)


@dataclass(frozen=True)
class Limit(PlanNode):
    """Pass the first `count` rows, then stop pulling from the input."""

    child: PlanNode
    count: int

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return (self.child,)


@dataclass(frozen=True)
class AgentCall(PlanNode):
    """Run an agent for every input row; adds the answer columns, `steps`, `tool_calls`, `error`.

    Every step of all rows' runs is one batched model call; tool calls of a step run as a batch
    (see `halo_sql.executor.agent_loop`). Rows with equal inputs share one run.
    """

    child: PlanNode
    agent: AgentSpec
    """The agent with its model resolved."""
    tools: tuple[ToolSpec, ...]
    """The tools it may call, as they were defined when the statement was planned."""
    input_columns: tuple[str, ...]
    """Columns of the input shown to the agent (all of them; they are also passed through)."""

    @property
    def children(self) -> tuple[PlanNode, ...]:
        return (self.child,)


@dataclass(frozen=True)
class StatementPlan:
    """The plan of one statement plus what EXPLAIN needs to know about it."""

    root: PlanNode
    notes: tuple[str, ...] = field(default=())
    """Planner decisions worth showing (e.g. why a call runs as a DuckDB function)."""
    optimizer: Any = field(default=None, compare=False, repr=False)
    prepared: Any = field(default=None, compare=False, repr=False)
    """The executor-ready form of `root` when it was made already (a batch query whose shape was
    planned once gets its physical plan instantiated with its values too); None: made on use."""
    """The optimizer's report (halo_sql.optimizer.OptimizerReport: estimates per operator, rules
    fired) for EXPLAIN; None for plans the optimizer did not touch."""


def explain(plan: PlanNode | StatementPlan) -> str:
    """Deterministic indented text of a plan (golden tests compare it)."""
    lines: list[str] = []
    notes: tuple[str, ...] = ()
    if isinstance(plan, StatementPlan):
        notes, plan = plan.notes, plan.root
    _explain(plan, 0, lines)
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def _explain(node: PlanNode, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    if isinstance(node, DuckDBQuery):
        lines.append(f"{pad}DuckDBQuery: {node.sql}")
        for udf in node.udfs:
            kind = "aggregate " if udf.aggregate else ""
            chunks = f" chunk_tokens={udf.chunk_tokens}" if udf.chunk_tokens else ""
            lines.append(f"{pad}  {kind}udf {udf.name} = {udf.call.describe()}{chunks}")
        for named in node.inputs:
            lines.append(f"{pad}  input {named.name}:")
            _explain(named.plan, depth + 2, lines)
        return
    if isinstance(node, LLMFilter):
        hint = f" limit_hint={node.limit_hint}" if node.limit_hint is not None else ""
        lines.append(f"{pad}LLMFilter: {node.call.describe()} args={list(node.arguments)}{hint}")
    elif isinstance(node, LLMMap):
        lines.append(
            f"{pad}LLMMap: {node.output_column} = {node.call.describe()} args={list(node.arguments)}"
        )
    elif isinstance(node, SQLFilter):
        lines.append(f"{pad}SQLFilter: {node.predicate}")
    elif isinstance(node, Project):
        lines.append(f"{pad}Project: {list(node.columns)}")
    elif isinstance(node, Limit):
        lines.append(f"{pad}Limit: {node.count}")
    elif isinstance(node, AgentCall):
        lines.append(f"{pad}AgentCall: {node.agent.describe()} input={list(node.input_columns)}")
        lines.extend(f"{pad}  tool {tool.describe()}" for tool in node.tools)
    else:
        lines.append(f"{pad}{type(node).__name__}")
    for child in node.children:
        _explain(child, depth + 1, lines)


def explain_consolidated(plans: list[StatementPlan]) -> str:
    """Deterministic text of a batch's consolidated DAG.

    Equal sub-plans (plain values) are one node serving several queries; LLM operators with the
    same call are one merged operator whose rows come from every query that uses it.
    """
    uses: dict[PlanNode, set[int]] = {}
    calls: dict[tuple[str, str], set[int]] = {}
    for index, statement in enumerate(plans):
        for node in statement.root.walk():
            uses.setdefault(node, set()).add(index)
            if isinstance(node, LLMFilter | LLMMap):
                calls.setdefault((type(node).__name__, node.call.describe()), set()).add(index)
            if isinstance(node, AgentCall):
                calls.setdefault(("AgentCall", node.agent.describe()), set()).add(index)
            if isinstance(node, DuckDBQuery):
                for udf in node.udfs:
                    calls.setdefault(("udf", udf.call.describe()), set()).add(index)
    distinct_roots = {statement.root for statement in plans}
    instances = sum(len(q) for (kind, _), q in calls.items() if kind != "udf")
    merged = sum(1 for kind, _ in calls if kind != "udf")
    subplans = [(n, q) for n, q in uses.items() if isinstance(n, DuckDBQuery)]
    lines = [
        f"batch: {len(plans)} queries, {len(distinct_roots)} distinct plans, "
        f"{len(uses)} distinct plan nodes",
        f"savings: {instances} LLM operator instances -> {merged} merged operators "
        f"(one backend batch per step instead of one per query); "
        f"{sum(len(q) for _, q in subplans)} DuckDB sub-plan runs -> {len(subplans)}",
    ]
    shared = sorted(
        ((len(q), explain(n).splitlines()[0].strip()) for n, q in uses.items()
         if len(q) > 1 and isinstance(n, DuckDBQuery) and n not in distinct_roots),
        key=lambda item: (-item[0], item[1]),
    )
    if shared:
        lines.append("shared sub-plans (run once):")
        lines.extend(f"  serves {count} queries: {text}" for count, text in shared)
    lines.append("LLM operators (merged across queries: one request stream per model):")
    for (kind, text), queries in sorted(calls.items(), key=lambda item: (-len(item[1]), item[0])):
        lines.append(f"  {kind} serves {len(queries)} queries: {text}")
    return "\n".join(lines)
