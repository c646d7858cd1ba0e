"""`halo_sql.connect(...)`: a connection that is both the engine's Python API and a PEP 249 one.

The engine API returns Arrow tables and statistics:

    >>> import halo_sql
    >>> con = halo_sql.connect(backend="sim")
    >>> con.sql("SELECT LLM_FILTER('Is {x} even?') AS even FROM (SELECT 2 AS x)").column_names
    ['even']

The DB-API 2.0 side (cursors, `?` / `$name` parameters, PEP 249 exceptions and type objects)
goes through the same `Session.execute`. Parameters are data: one bound as an LLM template is
sent verbatim (its `{...}` text names no column); columns reach a prompt through the SQL text:

    >>> cur = con.cursor()
    >>> cur.execute("SELECT LLM_CLASSIFY(?, ['yes', 'no']) AS a FROM (SELECT 'ok' AS t)",
    ...             ["Is it fine?"]).fetchone()[0] in ('yes', 'no')
    True
    >>> cur.description[0][:2] == ("a", STRING)
    True

Transactions follow DuckDB: statements commit on their own unless a transaction was opened with
`BEGIN`; `commit()` / `rollback()` end it (and are no-ops when none is open).
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from halo_sql.errors import (
    DatabaseError,
    DataError,
    Error,
    HaloError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.session import Params, Result, Session

__all__ = [
    "BINARY", "DATETIME", "NUMBER", "ROWID", "STRING", "Binary", "Connection", "Cursor",
    "DBAPITypeObject", "DataError", "DatabaseError", "Date", "DateFromTicks", "Error",
    "IntegrityError", "InterfaceError", "InternalError", "NotSupportedError", "OperationalError",
    "ProgrammingError", "Time", "TimeFromTicks", "Timestamp", "TimestampFromTicks", "Warning",
    "apilevel", "connect", "paramstyle", "result_set", "threadsafety", "type_name",
]

# -- PEP 249 module globals ----------------------------------------------------------------------
apilevel = "2.0"
threadsafety = 1
"""Threads may share the module, not connections (as DuckDB's own driver)."""
paramstyle = "qmark"
"""`?` placeholders; `$1` (numeric) and `$name` (with a mapping) work as well, as in DuckDB."""


# -- type objects and constructors -----------------------------------------------------------------
class DBAPITypeObject:
    """Compares equal to every `description` type code of its family (PEP 249 type objects).

    >>> NUMBER == "DECIMAL(18,3)", "VARCHAR" == STRING, "INTEGER[]" == NUMBER
    (True, True, False)
    """

    def __init__(self, name: str, *type_names: str) -> None:
        self.name = name
        self.type_names = frozenset(type_names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return self is other
        if not isinstance(other, str):
            return NotImplemented
        # 'DECIMAL(18,3)' is a DECIMAL; 'INTEGER[]' and 'STRUCT(...)' belong to no family.
        return not other.endswith("]") and other.split("(")[0].strip() in self.type_names

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<DBAPITypeObject {self.name}>"


STRING = DBAPITypeObject("STRING", "VARCHAR", "JSON", "UUID", "ENUM")
BINARY = DBAPITypeObject("BINARY", "BLOB", "BIT")
NUMBER = DBAPITypeObject(
    "NUMBER", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL",
)
DATETIME = DBAPITypeObject(
    "DATETIME", "DATE", "TIME", "TIME WITH TIME ZONE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE",
    "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "INTERVAL",
)
ROWID = DBAPITypeObject("ROWID")
"""DuckDB has no row-id type of its own (`rowid` is a BIGINT): no type code compares equal."""

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - the name PEP 249 prescribes
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


def type_name(arrow_type: pa.DataType) -> str:
    """The DuckDB SQL name of a result column's Arrow type: the `description` type code.

    >>> type_name(pa.decimal128(18, 3)), type_name(pa.list_(pa.int32())), type_name(pa.string())
    ('DECIMAL(18,3)', 'INTEGER[]', 'VARCHAR')
    """
    t = arrow_type
    if pa.types.is_dictionary(t):
        return "ENUM" if pa.types.is_string(t.value_type) else type_name(t.value_type)
    if pa.types.is_decimal(t):
        return "HUGEINT" if t.precision == 38 and t.scale == 0 else f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_timestamp(t):
        base = {"s": "TIMESTAMP_S", "ms": "TIMESTAMP_MS", "us": "TIMESTAMP", "ns": "TIMESTAMP_NS"}[t.unit]
        return "TIMESTAMP WITH TIME ZONE" if t.tz else base
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return f"{type_name(t.value_type)}[]"
    if pa.types.is_fixed_size_list(t):
        return f"{type_name(t.value_type)}[{t.list_size}]"
    if pa.types.is_map(t):
        return f"MAP({type_name(t.key_type)}, {type_name(t.item_type)})"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f'"{f.name}" {type_name(f.type)}' for f in t) + ")"
    for check, name in _SIMPLE_TYPES:
        if check(t):
            return name
    return str(t).upper()


_SIMPLE_TYPES = (
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_int8, "TINYINT"),
    (pa.types.is_int16, "SMALLINT"),
    (pa.types.is_int32, "INTEGER"),
    (pa.types.is_int64, "BIGINT"),
    (pa.types.is_uint8, "UTINYINT"),
    (pa.types.is_uint16, "USMALLINT"),
    (pa.types.is_uint32, "UINTEGER"),
    (pa.types.is_uint64, "UBIGINT"),
    (pa.types.is_float32, "FLOAT"),
    (pa.types.is_float64, "DOUBLE"),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
     "VARCHAR"),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t),
     "BLOB"),
    (pa.types.is_date, "DATE"),
    (pa.types.is_time, "TIME"),
    (lambda t: pa.types.is_interval(t) or pa.types.is_duration(t), "INTERVAL"),
    (pa.types.is_null, '"NULL"'),
)


# -- which statements return rows ---------------------------------------------------------------
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE_INTO", "COPY"})


def result_set(con: duckdb.DuckDBPyConnection, result: Result) -> tuple[pa.Table | None, int]:
    """(rows, rowcount) of a statement as PEP 249 sees it.

    DuckDB answers DDL and DML with a one-column "Count" (or "Success") table; those are not result
    sets: `rows` is None and `rowcount` is the number of changed rows (-1 when not applicable).
    Queries (and `RETURNING`) give their table and its row count. The statement kind comes from
    DuckDB's own parser; halo-sql's statements (CREATE MODEL, SHOW MODELS) return what they return.
    """
    table = result.table
    if table is None:
        return None, -1
    try:
        statement = con.extract_statements(result.statement)[0]
        kind = statement.type.name
        expected = {k.name for k in statement.expected_result_type}
    except (duckdb.Error, IndexError):
        return table, table.num_rows
    if expected == {"QUERY_RESULT"}:
        return table, table.num_rows
    columns = table.column_names
    if columns == ["Success"]:
        return None, -1
    if columns == ["Count"] and "CHANGED_ROWS" in expected:
        # INSERT / UPDATE / DELETE / COPY / CREATE TABLE AS count rows; plain DDL has no row.
        if table.num_rows and (kind in _DML or kind == "CREATE"):
            value = table.column(0)[0].as_py()
            return None, int(value) if value is not None else -1
        return None, -1
    if "QUERY_RESULT" in expected:
        return table, table.num_rows
    return None, -1


# -- connection ----------------------------------------------------------------------------------
_READ_QUERY = re.compile(r"^\s*(WITH|SELECT|FROM|VALUES)\b", re.I)


class Connection:
    """A halo-sql connection (wraps one `Session`): engine API plus PEP 249."""

    # PEP 249 optional extension: the exception classes as connection attributes.
    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, session: Session, *, owns_connection: bool = True) -> None:
        self._session: Session | None = session
        self._owns_connection = owns_connection

    @property
    def session(self) -> Session:
        if self._session is None:
            raise InterfaceError("connection is closed")
        return self._session

    @property
    def closed(self) -> bool:
        return self._session is None

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

    def execute_batch(self, queries: Any, params: Any = None, **options: Any) -> Any:
        """Run many queries as one optimized workload (see `Session.execute_batch`)."""
        return self.session.execute_batch(queries, params, **options)

    def explain_batch(self, queries: Any, params: Any = None) -> str:
        """The consolidated plan of a batch: shared sub-plans and merged LLM operators."""
        return self.session.explain_batch(queries, params)

    def unregister(self, name: str) -> Connection:
        self.session.unregister(name)
        return self

    def stats(self) -> dict[str, Any]:
        """What the last statement cost: llm_requests, prompt/cached/output tokens, rows_out, ..."""
        return self.session.last_stats.as_dict()

    def explain(self, sql: str, params: Params = None) -> str:
        table = self.session.execute(f"EXPLAIN {sql}", params).table
        assert table is not None
        return str(table.column(0)[0].as_py())

    def cancel(self) -> None:
        """Cancel the running statement (from another thread); answers already received are kept."""
        self.session.cancel()

    @property
    def duckdb(self) -> Any:
        """The underlying duckdb.DuckDBPyConnection."""
        return self.session.connection

    # -- PEP 249 ---------------------------------------------------------------------------------
    def cursor(self) -> Cursor:
        """A new cursor on this connection."""
        self.session  # noqa: B018 - raises InterfaceError once closed
        return Cursor(self)

    def execute(self, operation: str, parameters: Params = None) -> Cursor:
        """Shortcut (as in sqlite3 and DuckDB): a new cursor that has executed `operation`."""
        return self.cursor().execute(operation, parameters)

    def executemany(self, operation: str, seq_of_parameters: Sequence[Params]) -> Cursor:
        return self.cursor().executemany(operation, seq_of_parameters)

    def commit(self) -> None:
        """Commit the transaction opened with BEGIN (a no-op in auto-commit mode)."""
        try:
            self.session.connection.commit()
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None

    def rollback(self) -> None:
        """Roll back the transaction opened with BEGIN (a no-op in auto-commit mode)."""
        try:
            self.session.connection.rollback()
        except duckdb.TransactionException as exc:
            if "no transaction is active" not in str(exc):
                raise duckdb_error(exc) from None
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None

    def close(self) -> None:
        """Close the connection (and the DuckDB connection, unless it was handed in); idempotent."""
        if self._session is not None:
            # Answers the response cache still holds are committed first.
            self._session.close(close_connection=self._owns_connection)
            self._session = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- cursor --------------------------------------------------------------------------------------
class Cursor:
    """A PEP 249 cursor. A statement runs to completion in `execute`; fetches read its result.

    Beyond PEP 249: `fetch_arrow_table()`, `fetchdf()` / `df()` (pandas), `pl()` (polars),
    `stats()` (what the last statement cost), `cancel()`, and `execute` returns the cursor so
    calls chain: `con.cursor().execute(sql).fetchall()`.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = 1
        """Default number of rows `fetchmany()` returns."""
        self.lastrowid: int | None = None
        """Always None: DuckDB has no row ids to report."""
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._rows: pa.Table | None = None
        self._position = 0
        self._rowcount = -1
        self._result: Result | None = None

    def _session(self) -> Session:
        if self._closed:
            raise InterfaceError("cursor is closed")
        if self.connection.closed:
            raise InterfaceError("the cursor's connection is closed")
        return self.connection.session

    # -- executing -------------------------------------------------------------------------------
    def execute(self, operation: str, parameters: Params = None) -> Cursor:
        """Run `operation` (with `?`, `$1` or `$name` parameters); returns the cursor itself."""
        session = self._session()
        if not isinstance(operation, str):
            raise ProgrammingError(f"the operation must be a SQL string, got {type(operation).__name__}")
        _check_parameters(parameters)
        self._reset()
        result = _run(session, operation, parameters)
        self._result = result
        self._rows, self._rowcount = result_set(session.connection, result)
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Params]) -> Cursor:
        """Run `operation` once per parameter set; `rowcount` is the total of changed rows.

        A query (SELECT/WITH) over several parameter sets runs as one batch
        (`Session.execute_batch`): its LLM work is shared and batched across the sets. The first
        failing set raises its error after the others finished; the result set is the last one.
        """
        session = self._session()
        total = 0
        known = True
        last: Result | None = None
        rows: pa.Table | None = None
        sets = list(seq_of_parameters)
        for parameters in sets:
            _check_parameters(parameters)
        if len(sets) > 1 and _READ_QUERY.match(operation):
            batch = session.execute_batch(operation, sets)
            if batch.errors:
                raise batch.errors[0][1]
            results = batch.results
        else:
            results = []
            for parameters in sets:
                results.append(_run(session, operation, parameters))
        for last in results:
            rows, count = result_set(session.connection, last)
            if count < 0:
                known = False
            total += max(count, 0)
        self._reset()
        self._result = last
        self._rows = rows
        self._rowcount = total if known and last is not None else -1
        return self

    def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Sequence[Any]:
        raise NotSupportedError("halo-sql has no stored procedures (use SELECT * FROM fn(...))")

    def setinputsizes(self, sizes: Any) -> None:
        """Accepted and ignored (PEP 249 allows it)."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Accepted and ignored (PEP 249 allows it)."""

    def cancel(self) -> None:
        """Cancel the statement this connection is running (from another thread)."""
        self._session().cancel()

    # -- result metadata -------------------------------------------------------------------------
    @property
    def description(self) -> tuple[tuple[Any, ...], ...] | None:
        """(name, type_code, display_size, internal_size, precision, scale, null_ok) per column;
        type codes are DuckDB type names that compare equal to STRING, NUMBER, DATETIME, ..."""
        if self._closed or self._rows is None:
            return None
        out = []
        for field in self._rows.schema:
            precision = scale = None
            if pa.types.is_decimal(field.type):
                precision, scale = field.type.precision, field.type.scale
            out.append((field.name, type_name(field.type), None, None, precision, scale, None))
        return tuple(out)

    @property
    def rowcount(self) -> int:
        """Rows of the last query, rows changed by the last DML, or -1."""
        return self._rowcount

    @property
    def rownumber(self) -> int | None:
        """0-based index of the next row to fetch (PEP 249 extension); None without a result set."""
        return None if self._rows is None else self._position

    def stats(self) -> dict[str, Any]:
        """What the last statement cost (LLM requests, tokens, seconds); empty before execute."""
        return self._result.stats.as_dict() if self._result is not None else {}

    # -- fetching --------------------------------------------------------------------------------
    def _result_rows(self) -> pa.Table:
        self._session()
        if self._rows is None:
            raise ProgrammingError(
                "no result set: execute a query first (the last statement returned no rows)"
                if self._result is not None
                else "no result set: call execute() first"
            )
        return self._rows

    def _take(self, count: int | None) -> pa.Table:
        rows = self._result_rows()
        end = rows.num_rows if count is None else min(rows.num_rows, self._position + max(count, 0))
        piece = rows.slice(self._position, end - self._position)
        self._position = end
        return piece

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = _tuples(self._take(1))
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        return _tuples(self._take(self.arraysize if size is None else size))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return _tuples(self._take(None))

    def fetch_arrow_table(self) -> pa.Table:
        """The remaining rows as a pyarrow.Table."""
        return self._take(None)

    def fetchdf(self) -> Any:
        """The remaining rows as a pandas DataFrame."""
        table = self._take(None)
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise NotSupportedError("fetchdf() needs pandas: pip install pandas") from None
        return table.to_pandas()

    df = fetchdf

    def pl(self) -> Any:
        """The remaining rows as a polars DataFrame."""
        table = self._take(None)
        try:
            import polars
        except ImportError:
            raise NotSupportedError("pl() needs polars: pip install polars") from None
        return polars.from_arrow(table)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self

    def __next__(self) -> tuple[Any, ...]:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the result; later use raises InterfaceError. Idempotent."""
        self._closed = True
        self._reset()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_parameters(parameters: object) -> None:
    if parameters is None or isinstance(parameters, Mapping):
        return
    if isinstance(parameters, str | bytes) or not isinstance(parameters, Sequence):
        raise ProgrammingError(
            f"parameters must be a sequence (for ? or $1) or a mapping (for $name), "
            f"got {type(parameters).__name__}"
        )


def _run(session: Session, operation: str, parameters: Params) -> Result:
    """`Session.execute`, with every failure raised as a PEP 249 exception."""
    try:
        return session.execute(operation, parameters)
    except HaloError:
        raise
    except duckdb.Error as exc:
        raise duckdb_error(exc) from None
    except Exception as exc:  # a bug below us: still a DB-API error, with the cause attached
        raise InternalError(f"internal error: {type(exc).__name__}: {exc}") from exc


def _tuples(table: pa.Table) -> list[tuple[Any, ...]]:
    if table.num_columns == 0:
        return [()] * table.num_rows
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def connect(
    database: str = ":memory:",
    *,
    model: str | None = None,
    backend: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    read_only: bool = False,
    connection: duckdb.DuckDBPyConnection | None = None,
    response_cache: bool | str | None = None,
) -> Connection:
    """Open a database (a DuckDB file or ":memory:") with LLM functions.

    `model` is the default model's directory or hub id (default: $HALO_MODEL); `backend` is
    "vllm" (default when a model is given) or "sim" (deterministic simulated model).
    `connection` wraps an existing duckdb connection instead of opening `database` (closing the
    halo-sql connection then leaves it open). `response_cache`: keep every answer to reuse it in
    later statements and runs (default: on for a database file, in `<database>.halo-cache`; off
    for `:memory:`); False turns it off, a path names the cache file (docs/response-cache.md).
    """
    session = Session(
        database,
        model=model,
        backend=backend,
        model_options=model_options,
        read_only=read_only,
        connection=connection,
        response_cache=response_cache,
    )
    return Connection(session, owns_connection=connection is None)
