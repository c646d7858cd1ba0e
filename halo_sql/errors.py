"""One exception hierarchy for halo-sql, with the DB-API 2.0 (PEP 249) names where they apply.

Every message names the place: the SQL line and column, the template, the row or the model.

    >>> raise BinderError("unknown column 'txt'", location=SourceLocation(line=1, column=8))
    Traceback (most recent call last):
    ...
    halo_sql.errors.BinderError: line 1, column 8: unknown column 'txt'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class SourceLocation:
    """Where in the statement text something stands (1-based line and column)."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


class Warning(Exception):  # noqa: A001 - the name PEP 249 prescribes
    """Important warnings (PEP 249)."""


class Error(Exception):
    """Base of all halo-sql errors (PEP 249 `Error`)."""


class HaloError(Error):
    """Base class of every error halo-sql raises; carries an optional source location."""

    def __init__(self, message: str, *, location: SourceLocation | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class InterfaceError(HaloError):
    """Misuse of the interface itself, e.g. a closed cursor (PEP 249)."""


class DatabaseError(HaloError):
    """Errors related to the database (PEP 249)."""


class DataError(DatabaseError):
    """Problems with the processed data (PEP 249)."""


class OperationalError(DatabaseError):
    """Errors in the operation of the engine, e.g. a backend that fails to start (PEP 249)."""


class IntegrityError(DatabaseError):
    """Relational integrity violated (PEP 249)."""


class InternalError(DatabaseError):
    """The engine reached a state it should not (PEP 249): a bug worth reporting."""


class ProgrammingError(DatabaseError):
    """Bad SQL, unknown tables or columns, wrong arguments (PEP 249)."""


class NotSupportedError(DatabaseError):
    """A feature halo-sql does not support (PEP 249)."""


class ParseError(ProgrammingError):
    """SQL, a statement of our own, or a prompt template could not be parsed."""


class BinderError(ProgrammingError):
    """A name (table, column, model, label) could not be resolved, or an argument is invalid."""


class ModelError(OperationalError):
    """An LLM backend failed: could not load a model or answer a request."""


class IncompleteBatchError(ModelError):
    """A backend answered only part of a batch: `responses` holds, in request order, the
    answers that arrived (None where a request failed), so a caller can keep them.

    >>> error = IncompleteBatchError("model 'm' at http://h/v1: connection refused", responses=["a", None])
    >>> error.responses
    ['a', None]
    """

    def __init__(self, message: str, *, responses: Sequence[object | None]) -> None:
        super().__init__(message)
        self.responses = list(responses)


class QueryCancelled(OperationalError):
    """The running statement was cancelled (Ctrl-C); answers already paid for are kept."""


# -- DuckDB's exceptions as halo errors ------------------------------------------------------------
# Here, at the bottom of the layers, so that every layer that talks to DuckDB maps its errors the
# same way (the executor, the agents' catalog and tools, the session).

_ERROR_CLASSES: list[tuple[type[BaseException], type[HaloError]]] = [
    (duckdb.ParserException, ParseError),
    (duckdb.BinderException, BinderError),
    (duckdb.CatalogException, BinderError),
    (duckdb.ConversionException, DataError),
    (duckdb.OutOfRangeException, DataError),
    (duckdb.InvalidInputException, ProgrammingError),
    (duckdb.ConstraintException, IntegrityError),
    (duckdb.NotImplementedException, NotSupportedError),
    (duckdb.InterruptException, QueryCancelled),
    (duckdb.InternalException, InternalError),
    (duckdb.ProgrammingError, ProgrammingError),
    (duckdb.DataError, DataError),
    (duckdb.IntegrityError, IntegrityError),
    (duckdb.NotSupportedError, NotSupportedError),
    (duckdb.OperationalError, OperationalError),
]


def duckdb_error(exc: BaseException) -> HaloError:
    """The halo error for a DuckDB exception. A HaloError raised inside one of our UDFs reaches
    us wrapped by DuckDB; it is unwrapped to its own class and message."""
    text = str(exc)
    if "Python exception" in text or "UDF" in text:
        match = re.search(r"\b(\w+Error|QueryCancelled): (.*)", text, re.S)
        if match:
            return _halo_class(match.group(1))(match.group(2).strip())
    for duck_class, halo_class in _ERROR_CLASSES:
        if isinstance(exc, duck_class):
            return halo_class(text)
    return OperationalError(text)


def _halo_class(name: str) -> type[HaloError]:
    found = globals().get(name)
    return found if isinstance(found, type) and issubclass(found, HaloError) else OperationalError


