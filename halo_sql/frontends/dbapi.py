"""`halo_sql.connect(...)`: a connection that is both the engine's Python API and a PEP 249 one.

    >>> import halo_sql
    >>> con = halo_sql.connect(backend="sim")
    >>> con.sql("SELECT LLM_FILTER('Is {x} even?') AS even FROM (SELECT 2 AS x)").column_names
    ['even']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from halo_sql.errors import InterfaceError
from halo_sql.session import Params, Result, Session


class Connection:
    """A halo-sql connection (wraps one `Session`)."""

    def __init__(self, session: Session) -> None:
        self._session: Session | None = session

    @property
    def session(self) -> Session:
        if self._session is None:
            raise InterfaceError("connection is closed")
        return self._session

    # -- engine API ------------------------------------------------------------------------------
    def sql(self, sql: str, params: Params = None) -> pa.Table | None:
        """Run SQL (one or more statements) and return the last result as a pyarrow.Table."""
        return self.session.execute(sql, params).table

    def run(self, sql: str, params: Params = None) -> Result:
        """Like `sql`, but returns the full Result (table and stats)."""
        return self.session.execute(sql, params)

    def register(self, name: str, data: Any) -> Connection:
        """Expose a pyarrow Table/RecordBatchReader or pandas/polars DataFrame as a view."""
        self.session.register(name, data)
        return self

    def unregister(self, name: str) -> Connection:
        self.session.unregister(name)
        return self

    def execute_batch(self, queries: Any, params: Any = None, **options: Any) -> Any:
        """Run many queries as one optimized workload (see `Session.execute_batch`)."""
        return self.session.execute_batch(queries, params, **options)

    def explain_batch(self, queries: Any, params: Any = None) -> str:
        """The consolidated plan of a batch: shared sub-plans and merged LLM operators."""
        return self.session.explain_batch(queries, params)

    def stats(self) -> dict[str, Any]:
        """What the last statement cost: llm_requests, prompt/cached/output tokens, rows_out, ..."""
        return self.session.last_stats.as_dict()

    def explain(self, sql: str, params: Params = None) -> str:
        table = self.session.execute(f"EXPLAIN {sql}", params).table
        assert table is not None
        return str(table.column(0)[0].as_py())

    def cancel(self) -> None:
        self.session.cancel()

    @property
    def duckdb(self) -> Any:
        """The underlying duckdb.DuckDBPyConnection."""
        return self.session.connection

    def close(self) -> None:
        if self._session is not None:
            self._session.connection.close()
            self._session = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    database: str = ":memory:",
    *,
    model: str | None = None,
    backend: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    read_only: bool = False,
) -> Connection:
    """Open a database (a DuckDB file or ":memory:") with LLM functions.

    `model` is the default model's directory or hub id (default: $HALO_MODEL); `backend` is
    "vllm" (default when a model is given) or "sim" (deterministic simulated model).
    """
    return Connection(
        Session(database, model=model, backend=backend, model_options=model_options, read_only=read_only)
    )
