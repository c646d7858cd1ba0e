"""halo-sql: a SQL engine that runs batch analytics and agentic workflows over LLMs as queries.

    >>> import halo_sql
    >>> con = halo_sql.connect(backend="sim")
    >>> con.sql("SELECT LLM_CLASSIFY('Mood of {t}', ['happy', 'sad']) AS mood FROM (SELECT 'ok' t)").num_rows
    1
"""

from __future__ import annotations

from halo_sql.errors import (
    BinderError,
    DatabaseError,
    DataError,
    Error,
    HaloError,
    IntegrityError,
    InterfaceError,
    InternalError,
    ModelError,
    NotSupportedError,
    OperationalError,
    ParseError,
    ProgrammingError,
    QueryCancelled,
    Warning,
)
from halo_sql.frontends.dbapi import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Connection,
    Cursor,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    apilevel,
    connect,
    paramstyle,
    threadsafety,
)
from halo_sql.frontends.server import serve
from halo_sql.llm.logs import follow_environment as _follow_logging_environment
from halo_sql.session import Result, Session

# vLLM's spawned processes import this package (halo_sql.llm.engine_process is their main
# module) before vllm itself:
# the logging choice of the parent then holds from their first line (halo_sql/llm/logs.py).
_follow_logging_environment()

__version__ = "0.1.0"

__all__ = [
    "BINARY", "DATETIME", "NUMBER", "ROWID", "STRING", "Binary", "Cursor", "Date", "DateFromTicks",
    "Time", "TimeFromTicks", "Timestamp", "TimestampFromTicks", "apilevel", "paramstyle",
    "threadsafety",
    "BinderError", "Connection", "DataError", "DatabaseError", "Error", "HaloError",
    "IntegrityError", "InterfaceError", "InternalError", "ModelError", "NotSupportedError",
    "OperationalError", "ParseError", "ProgrammingError", "QueryCancelled", "Result", "Session",
    "Warning", "connect", "serve",
]
