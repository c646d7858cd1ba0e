"""Online mode: queries arrive one by one and join the running work at once.

Each arrival is planned and started right away on the continuous runtime (`Session.submit`): its
requests go to the engine the moment they are ready, next to those of every query already
running, and an identical request already in flight is shared rather than sent again. There is
no mini-batch window to wait for.

Python API (futures; `await asyncio.wrap_future(f)` from async code):

    >>> runner = OnlineRunner(Session(backend="sim"))
    >>> runner.submit("SELECT 41 + 1 AS answer").result().table.to_pylist()
    [{'answer': 42}]
    >>> runner.close()

HTTP API (`halo_sql.serve(...)` or `halo-sql serve`), JSON over localhost; every request carries
`Authorization: Bearer <token>` (the token is printed at start, or read from $HALO_SERVER_TOKEN):

* `POST /query` (`Content-Type: application/json`) with `{"sql": "...", "params": [...] | {...}}`
  -> `{"columns": [...], "types": [...], "rows": [[...], ...], "stats": {...}}`, or an error
  `{"error": {"type": "BinderError", "message": "..."}}` (400 for a statement's error, 403 for a
  statement a read-only server refuses)
* `GET /stats` -> queries served, throughput (queries/s), latency percentiles (ms), in flight
* `GET /health` -> `{"status": "ok"}`

Security model (docs/security.md): a token on every request (compared in constant time); JSON
bodies only (415), of bounded size (413; a missing, negative or malformed length is refused before
anything is read); the Host header must name the server (DNS rebinding) and a request carrying an
Origin is refused unless that origin was allowed (cross-site browser requests). The server is
read-only unless started with `allow_writes=True` (`--allow-writes`): only queries run (SELECT,
EXPLAIN of one, halo's SHOW statements), and the database connection it serves has DuckDB's
external access off (no files, no ATTACH, INSTALL or LOAD) and its configuration locked.
"""

from __future__ import annotations

import base64
import errno
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pyarrow as pa

from halo_sql.errors import HaloError, InterfaceError, InternalError, OperationalError
from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.optimizer.settings import is_optimizer_setting
from halo_sql.parser.statements import is_own_statement, split_explain, split_statements
from halo_sql.session import Params, Result, Session

TOKEN_ENV = "HALO_SERVER_TOKEN"
"""Environment variable holding the server's token (else one is generated at start)."""

MAX_BODY_BYTES = 1 << 20
"""Default largest request body (1 MiB): far above any statement, far below a memory problem."""


@dataclass
class ServingStats:
    """Throughput and latency of the queries served so far."""

    queries: int = 0
    failed: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.perf_counter)
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2)

        return {
            "queries": self.queries,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "throughput_qps": round(self.queries / elapsed, 2),
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        }


class OnlineRunner:
    """Runs statements submitted from any thread on the session's continuous runtime, keeping
    serving statistics."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.stats = ServingStats()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, sql: str, params: Params = None) -> Future[Result]:
        """Start one statement now; the future resolves to its Result (or raises its HaloError)."""
        if self._closed:
            raise InterfaceError("the server is shut down")
        arrived = time.perf_counter()
        with self._lock:
            self.stats.in_flight += 1
        future = self.session.submit(sql, params)

        def served(done: Future[Result]) -> None:
            with self._lock:
                self.stats.in_flight -= 1
                self.stats.queries += 1
                self.stats.latencies_ms.append((time.perf_counter() - arrived) * 1000)
                if done.cancelled() or done.exception() is not None:
                    self.stats.failed += 1

        future.add_done_callback(served)
        return future

    def close(self) -> None:
        """Refuse new statements (those running finish)."""
        self._closed = True



# -- JSON encoding of results ------------------------------------------------------------------------
_INT32_INFINITY = (1 << 31) - 1
_INT64_INFINITY = (1 << 63) - 1
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def encode_table(table: pa.Table | None) -> dict[str, Any]:
    """A result as plain JSON values: `columns`, `types` (Arrow's names) and `rows`.

    Every value is valid JSON (`json.dumps(..., allow_nan=False)` accepts it): NaN and infinities
    are the strings "NaN", "Infinity", "-Infinity"; decimals are strings (exact, e.g. "1.10");
    dates, times and timestamps are ISO 8601 strings (years beyond 0..9999 signed, e.g.
    "+294247-01-10", DuckDB's infinities "infinity" and "-infinity"); blobs are base64;
    intervals are {"months", "days", "nanoseconds"}; lists, structs, maps ([{"key", "value"}])
    and unions are nested JSON.

        >>> encode_table(pa.table({"x": [1.5, float("nan")]}))["rows"]
        [[1.5], ['NaN']]
    """
    if table is None:
        return {"columns": [], "types": [], "rows": []}
    columns = [[json_value(scalar) for scalar in column] for column in table.columns]
    return {
        "columns": table.column_names,
        "types": [str(field.type) for field in table.schema],
        "rows": [list(row) for row in zip(*columns, strict=True)] if columns else [],
    }


def json_value(scalar: pa.Scalar) -> Any:
    """One Arrow value as a JSON value (see encode_table)."""
    if not scalar.is_valid:
        return None
    kind = scalar.type
    if isinstance(kind, pa.ExtensionType) or pa.types.is_dictionary(kind):
        return json_value(scalar.value)  # the storage (or dictionary) value
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return scalar.as_py()
    if pa.types.is_floating(kind):
        number = float(scalar.as_py())
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return number
    if pa.types.is_decimal(kind):
        return str(scalar.as_py())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return scalar.as_py()
    if (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or pa.types.is_fixed_size_binary(kind) or pa.types.is_binary_view(kind)):
        return base64.b64encode(scalar.as_py()).decode("ascii")
    if pa.types.is_date32(kind):
        return _date_text(scalar.cast(pa.int32()).as_py())
    if pa.types.is_date64(kind):
        return _date_text(scalar.cast(pa.int64()).as_py() // 86_400_000)
    if pa.types.is_timestamp(kind):
        return _timestamp_text(scalar.cast(pa.int64()).as_py(), kind.unit, kind.tz)
    if pa.types.is_time(kind):
        raw = scalar.cast(pa.int64() if pa.types.is_time64(kind) else pa.int32()).as_py()
        return _time_text(raw, kind.unit)
    if pa.types.is_duration(kind):
        return {"value": scalar.cast(pa.int64()).as_py(), "unit": kind.unit}
    if pa.types.is_interval(kind):
        value = scalar.as_py()
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if pa.types.is_map(kind):
        return [{"key": json_value(item["key"]), "value": json_value(item["value"])}
                for item in _items(scalar.values)]
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind) or pa.types.is_list_view(kind)):
        return [json_value(item) for item in _items(scalar.values)]
    if pa.types.is_struct(kind):
        return {kind.field(i).name: json_value(scalar[i]) for i in range(kind.num_fields)}
    if pa.types.is_union(kind):
        return json_value(scalar.value)
    if pa.types.is_null(kind):
        return None
    return str(scalar)  # a type Arrow adds later: its text, still valid JSON


def _items(values: pa.Array | None) -> Iterable[Any]:
    return values if values is not None else []


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number since 1970-01-01 in the proleptic Gregorian calendar,
    for any year (Python's datetime stops at 1..9999; DuckDB's dates do not)."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524
                   - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted + 2) // 5 + 1
    month = shifted + 3 if shifted < 10 else shifted - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _date_text(days: int) -> str:
    if days == _INT32_INFINITY:
        return "infinity"
    if days == -_INT32_INFINITY:
        return "-infinity"
    year, month, day = _civil(days)
    shown = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+05d}"
    return f"{shown}-{month:02d}-{day:02d}"


def _time_text(raw: int, unit: str) -> str:
    per_second = _UNIT_PER_SECOND[unit]
    seconds, fraction = divmod(raw, per_second)
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    if per_second > 1:
        digits = len(str(per_second)) - 1
        text += f".{fraction:0{digits}d}"
    return text


def _timestamp_text(raw: int, unit: str, tz: str | None) -> str:
    if raw == _INT64_INFINITY:
        return "infinity"
    if raw == -_INT64_INFINITY:
        return "-infinity"
    per_day = _UNIT_PER_SECOND[unit] * 86_400
    days, rest = divmod(raw, per_day)
    text = f"{_date_text(days)}T{_time_text(rest, unit)}"
    if tz is not None:
        # Arrow stores UTC instants; DuckDB's TIMESTAMPTZ comes as UTC ("Etc/UTC").
        text += "Z" if tz in ("UTC", "Etc/UTC", "+00:00", "Z") else f"[{tz}]"
    return text


# -- what a read-only server runs -------------------------------------------------------------------
_WRITE_NODES = ("INSERT", "UPDATE", "DELETE", "MERGE")
_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def read_only_refusal(sql: str) -> str | None:
    """Why a read-only server refuses `sql` (None when it runs it): only queries run (SELECT,
    VALUES, FROM, SHOW/DESCRIBE/SUMMARIZE, EXPLAIN [ANALYZE] of a query, halo's SHOW MODELS/
    AGENTS/TOOLS), never a statement that changes the database, its settings or the server's
    shared catalog of models, agents and tools.

        >>> read_only_refusal("SELECT 42") is None
        True
        >>> read_only_refusal("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
        'a data-modifying query (DELETE inside it) changes the database; this server is read-only (start it with --allow-writes to allow writes)'
    """
    hint = "this server is read-only (start it with --allow-writes to allow writes)"
    for statement in split_statements(sql):
        text = statement.text
        if is_own_statement(text):
            words = " ".join(text.split()[:2]).upper()
            if words.startswith("SHOW "):
                continue
            return f"{words} changes the server's shared catalog; {hint}"
        if is_optimizer_setting(text):
            return f"SET changes the settings every client shares; {hint}"
        is_explain, _, _, inner = split_explain(text)
        if is_explain:
            refusal = read_only_refusal(inner)
            if refusal is not None:
                return refusal
            continue
        try:
            with _parser_lock:
                kinds = [s.type for s in _parser_connection().extract_statements(text)]
        except duckdb.Error:
            continue  # not SQL DuckDB reads: the session reports the syntax error
        for kind in kinds:
            if kind != duckdb.StatementType.SELECT:
                return f"{kind.name} is not a query; {hint}"
        written = _written_in(text)
        if written is not None:
            return f"a data-modifying query ({written} inside it) changes the database; {hint}"
    return None


def _written_in(sql: str) -> str | None:
    """The write a SELECT hides (a data-modifying CTE), read from DuckDB's own parse on a private
    database (the served one may define macros that shadow json_serialize_sql)."""
    with _parser_lock:
        try:
            rows = _parser_connection().execute(
                "SELECT json_serialize_sql($q)", {"q": sql}
            ).fetchall()
        except duckdb.Error:
            return None
    tree = json.loads(rows[0][0])
    for kind in _node_types(tree):
        for word in _WRITE_NODES:
            if word in kind:
                return word
    return None


def _parser_connection() -> duckdb.DuckDBPyConnection:
    """A private, empty database for reading statements (call with _parser_lock held)."""
    global _parser
    if _parser is None:
        _parser = duckdb.connect(":memory:")
    return _parser


def _node_types(tree: Any) -> Iterable[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "type" and isinstance(value, str):
                yield value
            else:
                yield from _node_types(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _node_types(item)


# -- the HTTP layer ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerPolicy:
    """Who may talk to the server and what it runs."""

    token: str
    """Every request must carry `Authorization: Bearer <token>`."""
    allowed_hosts: frozenset[str]
    """Host header values (host:port) naming this server; anything else is refused (DNS
    rebinding: a hostile name resolving to 127.0.0.1)."""
    allowed_origins: frozenset[str] = frozenset()
    """Origins (scheme://host[:port]) whose browser pages may call the server; a request with
    any other Origin header is refused. Empty: no browser page may."""
    max_body_bytes: int = MAX_BODY_BYTES
    allow_writes: bool = False
    """False: only queries run (read_only_refusal); True: any statement, on the shared session."""


class ExposedServerWarning(UserWarning):
    """The server listens beyond the loopback interface."""


class _Refused(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


class HaloServer(ThreadingHTTPServer):
    """The HTTP front of an OnlineRunner: authorizes and validates each request, runs it through
    `run_statement` (the one place that dispatches), and encodes the result as JSON."""

    daemon_threads = True

    def __init__(
        self,
        batcher: OnlineRunner,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        token: str | None = None,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        max_body_bytes: int = MAX_BODY_BYTES,
        allow_writes: bool = False,
    ) -> None:
        self.batcher = batcher
        if not 0 <= port <= 65535:
            raise OperationalError(f"port must be between 0 and 65535, got {port}")
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            raise OperationalError(f"cannot listen on {host!r}: {exc.strerror}") from None
        self.address_family = family
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OperationalError(
                    f"cannot listen on {host}:{port}: the port is in use (another server "
                    "running?); choose another with --port, or --port 0 for any free one"
                ) from None
            raise OperationalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound_port = self.server_address[1]
        names = {host, "127.0.0.1", "localhost", "[::1]"}
        if ":" in host and not host.startswith("["):
            names.add(f"[{host}]")
        hosts = {f"{name}:{bound_port}".lower() for name in names} | {h.lower() for h in allowed_hosts}
        self.policy = ServerPolicy(
            token=token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32),
            allowed_hosts=frozenset(hosts),
            allowed_origins=frozenset(o.rstrip("/").lower() for o in allowed_origins),
            max_body_bytes=max_body_bytes,
            allow_writes=allow_writes,
        )
        self.beyond_loopback = not _is_loopback(host)

    @property
    def token(self) -> str:
        return self.policy.token

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in name:
            name = f"[{name}]"
        return f"http://{name}:{port}"

    def start(self) -> HaloServer:
        """Serve in a background thread (returns self)."""
        threading.Thread(target=self.serve_forever, name="halo-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.batcher.close()

    def run_statement(self, sql: str, params: Params) -> Result:
        """Run one authorized, admitted statement (the only place the HTTP layer dispatches)."""
        return self.batcher.submit(sql, params).result()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: HaloServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep the terminal for the user; /stats tells what happened

    def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # a value encode_table missed: say so, validly
            status = 500
            body = json.dumps({"error": {"type": "InternalError",
                                         "message": f"cannot encode the result: {exc}"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._reply(status, {"error": {"type": kind, "message": message}}, headers)

    def _guard(self, *, has_body: bool) -> None:
        """Refuse (raise _Refused) a request that is not from an authorized, same-host client."""
        policy = self.server.policy
        host = (self.headers.get("Host") or "").strip().lower()
        if not host:
            raise _Refused(400, "BadRequest", "a Host header is required")
        if host not in policy.allowed_hosts:
            raise _Refused(403, "Forbidden", f"Host {host!r} does not name this server")
        given = self.headers.get("Authorization") or ""
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), policy.token.encode()
        ):
            raise _Refused(401, "Unauthorized", "missing or wrong token (Authorization: Bearer ...)",
                           {"WWW-Authenticate": 'Bearer realm="halo-sql"'})
        origin = self.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() not in policy.allowed_origins:
            raise _Refused(403, "Forbidden", f"requests from origin {origin!r} are not allowed")
        if not has_body:
            return
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise _Refused(415, "UnsupportedMediaType",
                           f"the body must be JSON (Content-Type: application/json), got {kind or 'none'!r}")

    def _body(self) -> bytes:
        """The request body, read only when its declared length is sane."""
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "LengthRequired", "send the body with a Content-Length, not chunked")
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise _Refused(411, "LengthRequired", "a Content-Length header is required")
        if not declared.strip().isdigit():
            raise _Refused(400, "BadRequest", f"bad Content-Length {declared!r}")
        length = int(declared)
        if length > self.server.policy.max_body_bytes:
            raise _Refused(413, "PayloadTooLarge",
                           f"the body is {length} bytes; at most {self.server.policy.max_body_bytes}")
        return self.rfile.read(length)

    def _handle(self, has_body: bool, route: Any) -> None:
        try:
            self._guard(has_body=has_body)
            route()
        except _Refused as refused:
            # Whatever the client still sends is not read: the connection ends with the reply.
            self.close_connection = True
            self._error(refused.status, refused.kind, refused.message, refused.headers)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        def route() -> None:
            if self.path == "/health":
                self._reply(200, {"status": "ok"})
            elif self.path == "/stats":
                self._reply(200, self.server.batcher.stats.as_dict())
            else:
                self._error(404, "NotFound", f"no route {self.path}")

        self._handle(False, route)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        def route() -> None:
            if self.path != "/query":
                self.close_connection = True
                self._error(404, "NotFound", f"no route {self.path}")
                return
            sql, params = self._statement(self._body())
            if not self.server.policy.allow_writes:
                refusal = read_only_refusal(sql)
                if refusal is not None:
                    self._error(403, "ReadOnly", refusal)
                    return
            try:
                result = self.server.run_statement(sql, params)
            except HaloError as exc:
                status = 500 if isinstance(exc, InternalError) else 400
                self._error(status, type(exc).__name__, str(exc))
                return
            except duckdb.Error as exc:
                error = duckdb_error(exc)
                self._error(400, type(error).__name__, str(error))
                return
            payload = encode_table(result.table)
            payload["stats"] = result.stats.as_dict()
            self._reply(200, payload)

        self._handle(True, route)

    def _statement(self, body: bytes) -> tuple[str, Params]:
        try:
            payload = json.loads(body or b"{}", parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused(400, "BadRequest", f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("sql"), str):
            raise _Refused(400, "BadRequest", 'expected a JSON object {"sql": "...", "params": ...}')
        unknown = sorted(set(payload) - {"sql", "params"})
        if unknown:
            raise _Refused(400, "BadRequest", f"unknown field(s) {unknown}; expected sql, params")
        params = payload.get("params")
        if params is not None and not isinstance(params, list | dict):
            raise _Refused(400, "BadRequest", "params must be a list or an object")
        return payload["sql"], params


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")


def lock_down(connection: duckdb.DuckDBPyConnection) -> None:
    """No file or network access (COPY, read_csv, ATTACH, INSTALL, LOAD) and no configuration
    change from now on, for every connection of this database instance."""
    try:
        connection.sql("SET enable_external_access = false")
        connection.sql("SET lock_configuration = true")
    except duckdb.Error as exc:
        if "locked" not in str(exc):  # an instance already locked down stays so
            raise duckdb_error(exc) from None


def _server_connection(database: str, allow_writes: bool) -> duckdb.DuckDBPyConnection:
    """The connection the server owns: read-only on a database file unless writes are allowed;
    no extension autoloading."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoload_known_extensions": False, "autoinstall_known_extensions": False,
    }
    read_only = not allow_writes and database != ":memory:"
    try:
        return duckdb.connect(database, read_only=read_only, config=config)
    except duckdb.Error as exc:
        hint = " (a read-only server needs an existing database file; or --allow-writes)" if (
            read_only and not os.path.exists(database)) else ""
        raise OperationalError(f"cannot open {database!r}: {str(exc).splitlines()[0]}{hint}") from None


def serve(
    database: str = ":memory:",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    session: Session | None = None,
    token: str | None = None,
    allow_writes: bool = False,
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    **connect_options: Any,
) -> HaloServer:
    """Start serving queries over HTTP in a background thread; returns the server (`.token`,
    `.url`, `.stop()`).

    The served database is locked down (lock_down: no file access, configuration fixed), a
    given `session`'s included. Without `allow_writes` only queries run; with it, every client
    shares the session: its tables, macros, models, agents and tools."""
    if session is None:
        session = Session(database, connection=_server_connection(database, allow_writes),
                          **connect_options)
    lock_down(session.connection)
    batcher = OnlineRunner(session)
    try:
        server = HaloServer(
            batcher, host, port, token=token, allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins, max_body_bytes=max_body_bytes,
            allow_writes=allow_writes,
        )
    except BaseException:
        batcher.close()
        raise
    if server.beyond_loopback:
        warnings.warn(
            f"halo-sql serves {server.url} beyond this machine: anyone who can reach it and "
            "holds the token can query the database, and the traffic (token included) is not "
            "encrypted; prefer 127.0.0.1 behind a TLS proxy",
            ExposedServerWarning, stacklevel=2,
        )
    return server.start()
