"""Where halo-sql meets DuckDB's Python API: error mapping, types, and LLM functions as UDFs.

Kept in one module because DuckDB's Python API moves between versions (STYLE.md rule 12).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from halo_sql.errors import duckdb_error  # noqa: F401  (the executor's entry point to it)
from halo_sql.executor.llm_eval import evaluate_groups, evaluate_rows
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.logical.plan import LLMUdf

try:  # DuckDB >= 1.4 keeps its type constants here
    from duckdb import sqltypes as _types
except ImportError:  # pragma: no cover - older DuckDB
    from duckdb import typing as _types  # type: ignore[no-redef,attr-defined]

def duckdb_type(arrow_type: pa.DataType) -> Any:
    """The DuckDB type object for an Arrow type produced by LLM functions."""
    if pa.types.is_boolean(arrow_type):
        return _types.BOOLEAN
    if pa.types.is_int64(arrow_type):
        return _types.BIGINT
    if pa.types.is_floating(arrow_type):
        return _types.DOUBLE
    if pa.types.is_struct(arrow_type):
        return duckdb.struct_type({f.name: duckdb_type(f.type) for f in arrow_type})
    if pa.types.is_list(arrow_type):
        return duckdb.list_type(duckdb_type(arrow_type.value_type))
    return _types.VARCHAR


def register_llm_udf(
    con: duckdb.DuckDBPyConnection,
    udf: LLMUdf,
    runtime: LLMRuntime,
    stats: StatementStats | Callable[[], StatementStats],
) -> None:
    """Register `udf` on `con` as a vectorized Arrow function: one batch per DuckDB vector."""

    def current() -> StatementStats:
        return stats() if callable(stats) else stats

    if udf.aggregate:
        params = [duckdb.list_type(_types.VARCHAR)]

        def function(groups: pa.Array) -> pa.Array:
            return evaluate_groups(udf.call, groups, runtime, current(), budget=udf.chunk_tokens)

    else:
        # A call without slots still gets one (ignored) argument: it tells the vector's length.
        params = [_types.VARCHAR] * max(udf.arity, 1)

        def function(*arguments: pa.Array) -> pa.Array:  # type: ignore[misc]
            slots = list(arguments) if udf.arity else []
            return evaluate_rows(udf.call, slots, runtime, current(), rows=len(arguments[0]))

        # DuckDB checks the Python function's arity against `params`; `*arguments` counts as
        # one, so spell out one positional parameter per argument.
        function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(params))]
        )

    con.create_function(  # type: ignore[call-overload]  # arrow UDFs: the stubs list numpy ones
        udf.name,
        function,
        params,
        duckdb_type(udf.call.arrow_type) if not udf.aggregate else _types.VARCHAR,
        type="arrow",
        null_handling="special",
        side_effects=True,
    )
