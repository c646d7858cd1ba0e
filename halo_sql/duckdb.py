"""`halo_sql.duckdb.install(con)`: halo-sql's LLM functions inside a plain DuckDB connection.

    >>> import duckdb, halo_sql.duckdb
    >>> con = duckdb.connect()
    >>> llm = halo_sql.duckdb.install(con, backend="sim")

See `halo_sql.frontends.duckdb_ext` for the calling conventions.
"""

from __future__ import annotations

from halo_sql.frontends.duckdb_ext import FUNCTION_TYPES, LLMFunctions, install

__all__ = ["FUNCTION_TYPES", "LLMFunctions", "install"]
