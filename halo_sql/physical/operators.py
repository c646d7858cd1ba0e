"""Physical operators: the logical nodes with execution choices filled in (batch sizes, order).

They are still plain immutable data; `halo_sql.executor.engine` runs them as pull-based streams
of Arrow record batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from halo_sql.agents.spec import AgentSpec, ToolSpec
from halo_sql.logical.llm_call import LLMCall
from halo_sql.logical.plan import LLMUdf
from halo_sql.physical.rowlocal import RowLocalSQL


@dataclass(frozen=True)
class PhysicalOp:
    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return ()


@dataclass(frozen=True)
class PhysicalInput:
    name: str
    op: PhysicalOp


@dataclass(frozen=True)
class DuckDBSubplan(PhysicalOp):
    """SQL shipped to DuckDB; named inputs are materialized once and registered as tables."""

    sql: str
    inputs: tuple[PhysicalInput, ...]
    udfs: tuple[LLMUdf, ...]
    batch_rows: int
    origin: int = field(default=0, compare=False)

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return tuple(i.op for i in self.inputs)


@dataclass(frozen=True)
class LLMStage:
    """One LLM call per row: a map adds `output_column`, a filter keeps rows answered yes."""

    call: LLMCall
    arguments: tuple[str, ...]
    """Row columns holding the slot values (VARCHAR), in slot order."""
    output_column: str | None
    """None for a filter."""
    origin: int = field(default=0, compare=False)
    """id() of the logical node this stage runs (EXPLAIN ANALYZE counters)."""

    @property
    def is_filter(self) -> bool:
        return self.output_column is None

    def describe(self) -> str:
        if self.is_filter:
            return f"LLM filter {self.call.describe()}"
        return f"LLM map {self.output_column} = {self.call.describe()}"


@dataclass(frozen=True)
class SQLStage:
    """Row-local SQL (a projection and/or predicate) applied to each row as it arrives."""

    sql: RowLocalSQL
    origin: int = field(default=0, compare=False)

    def describe(self) -> str:
        return f"SQL {self.sql.describe()}"


@dataclass(frozen=True)
class ProjectStage:
    """Keep only these columns."""

    columns: tuple[str, ...]
    origin: int = field(default=0, compare=False)

    def describe(self) -> str:
        return f"project {list(self.columns)}"


Stage = LLMStage | SQLStage | ProjectStage


@dataclass(frozen=True)
class RowPipeline(PhysicalOp):
    """A chain of per-row steps run row by row: each input row goes through `stages` on its
    own, so a row whose answer arrived moves to its next LLM step while other rows are still
    decoding (halo_sql.executor.pipeline). Output rows keep their input order."""

    child: PhysicalOp
    stages: tuple[Stage, ...]
    limit_hint: int | None = None
    """A consumer needs only this many rows: admit input rows at about the pace they pass."""
    max_in_flight: int = 4096
    """Rows admitted but not yet emitted (bounds memory and engine queue)."""
    step_priority: bool = True
    """Later LLM steps get a higher engine priority (PhysicalSettings.step_priority)."""

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class LimitOp(PhysicalOp):
    child: PhysicalOp
    count: int
    origin: int = field(default=0, compare=False)

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class AgentLoop(PhysicalOp):
    """Reads all input rows, then runs their agents step by step (halo_sql.executor.agent_loop)."""

    child: PhysicalOp
    agent: AgentSpec
    tools: tuple[ToolSpec, ...]
    input_columns: tuple[str, ...]
    batch_rows: int
    """Rows per output batch."""
    origin: int = field(default=0, compare=False)

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)
