"""Physical operators: the logical nodes with execution choices filled in (batch sizes, order).

They are still plain immutable data; `halo_sql.executor.engine` runs them as pull-based streams
of Arrow record batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from halo_sql.agents.spec import AgentSpec, ToolSpec
from halo_sql.logical.llm_call import LLMCall
from halo_sql.logical.plan import LLMUdf


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

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return tuple(i.op for i in self.inputs)


@dataclass(frozen=True)
class LLMBatchFilter(PhysicalOp):
    child: PhysicalOp
    call: LLMCall
    arguments: tuple[str, ...]
    batch_rows: int
    limit_hint: int | None

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class LLMBatchMap(PhysicalOp):
    child: PhysicalOp
    call: LLMCall
    arguments: tuple[str, ...]
    output_column: str
    batch_rows: int

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class BatchSQLFilter(PhysicalOp):
    child: PhysicalOp
    predicate: str

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class ProjectOp(PhysicalOp):
    child: PhysicalOp
    columns: tuple[str, ...]

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class LimitOp(PhysicalOp):
    child: PhysicalOp
    count: int

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)


@dataclass(frozen=True)
class AgentLoop(PhysicalOp):
    """Reads all input rows, then runs their agents step by step (halo_sql.agents.loop)."""

    child: PhysicalOp
    agent: AgentSpec
    tools: tuple[ToolSpec, ...]
    input_columns: tuple[str, ...]
    batch_rows: int
    """Rows per output batch."""

    @property
    def children(self) -> tuple[PhysicalOp, ...]:
        return (self.child,)
