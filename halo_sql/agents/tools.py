"""Tool executors and the tool-call cache shared by a statement's agents (or a batch's queries).

Tool calls of one agent step are collected and run as a batch: identical calls (same tool, same
arguments) run once per statement, or once per batch of queries, and every caller sees the same
observation. SQL tools run on the session's DuckDB connection with bound parameters, in the
operator's thread, once the sandbox admitted them (halo_sql.agents.sandbox: they can only see the
tables they declare); PYTHON and HTTP tools run on threads, at most the tool's `concurrency` at a
time, so they proceed while the model works on other rows.

Failures never escape: an exception, an HTTP error, a refused query or a timeout becomes an
observation `error: ...` that the agent reads at its next step.

    >>> @tool_function
    ... def add(a: int, b: int) -> int:
    ...     return a + b
    >>> python_parameters(add)["properties"]
    {'a': {'type': 'integer'}, 'b': {'type': 'integer'}}
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb

from halo_sql.agents.safety import UnsafeQuery
from halo_sql.agents.sandbox import admit
from halo_sql.agents.spec import ToolKind, ToolSpec

F = TypeVar("F", bound=Callable[..., Any])

_FUNCTIONS: dict[str, Callable[..., Any]] = {}
_FUNCTIONS_LOCK = threading.Lock()


def register_tool_function(fn: F | None = None, *, name: str | None = None) -> Any:
    """Allow a Python callable to be a PYTHON tool (`CREATE TOOL t AS PYTHON 'module:function'`).

    Only registered callables can be called from SQL: a tool's target names one of them, never
    an arbitrary importable function. Usable as a decorator, with or without `name=`:

        @register_tool_function
        def lookup(sku: str) -> dict: ...           # 'mymodule:lookup'
    """

    def register(func: F) -> F:
        key = name or f"{func.__module__}:{func.__qualname__}"
        with _FUNCTIONS_LOCK:
            _FUNCTIONS[key] = func
        return func

    return register(fn) if fn is not None else register


tool_function = register_tool_function


def registered_function(target: str) -> Callable[..., Any] | None:
    with _FUNCTIONS_LOCK:
        return _FUNCTIONS.get(target)


def registered_names() -> list[str]:
    with _FUNCTIONS_LOCK:
        return sorted(_FUNCTIONS)


_ANNOTATION_TYPES = {
    int: "integer", "int": "integer", float: "number", "float": "number", bool: "boolean",
    "bool": "boolean", str: "string", "str": "string",
}


def python_parameters(fn: Callable[..., Any]) -> dict[str, Any]:
    """The arguments schema of a Python tool, read from its signature (str when unannotated)."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = _ANNOTATION_TYPES.get(param.annotation, "string")
        props[param.name] = {"type": kind}
        if param.default is param.empty:
            required.append(param.name)
    return {
        "type": "object", "properties": props, "required": required,
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Observation:
    """What an agent sees after a tool call."""

    text: str
    ok: bool


class ToolCall:
    """One tool call, queued, running or done; identical calls share one (see ToolCallCache)."""

    def __init__(self, timeout: float) -> None:
        self.future: Future[Observation] = Future()
        self.timeout = timeout
        self.started: float | None = None
        """When it began to run (a queued call waits for a free slot without a deadline)."""
        self.on_expire: Callable[[], None] | None = None
        self._expired: Observation | None = None

    def begin(self) -> bool:
        """Mark the call as running; False if it was given up on while queued."""
        self.started = time.monotonic()
        return self.future.set_running_or_notify_cancel()

    def finish(self, observation: Observation) -> None:
        if not self.future.done():
            self.future.set_result(observation)

    def result(self, now: float) -> Observation | None:
        """The observation, once the call is done or has run past its timeout."""
        if self.future.cancelled():
            return Observation("error: cancelled", False)
        if self.future.done():
            return self.future.result()
        if self._expired is None and self.started is not None and now - self.started > self.timeout:
            # Sticky: every row that made this call sees the same timeout, none waits again.
            self._expired = Observation(f"error: timed out after {self.timeout:g} s", False)
            if self.on_expire is not None:
                self.on_expire()
        return self._expired

    def deadline(self) -> float | None:
        return None if self.started is None else self.started + self.timeout

    @staticmethod
    def done_with(observation: Observation) -> ToolCall:
        call = ToolCall(0.0)
        call.future.set_result(observation)
        return call


class _ToolLane:
    """Runs one tool's calls, at most `concurrency` at a time, each on its own daemon thread.

    A call that runs past its timeout gives its slot back: a hung tool cannot stall the calls
    queued behind it (its thread is abandoned, and ends whenever the tool returns)."""

    def __init__(self, tool: ToolSpec) -> None:
        self.free = tool.concurrency
        self.name = tool.name
        self.queue: deque[tuple[ToolCall, Callable[[], Observation]]] = deque()
        self.lock = threading.Lock()

    def submit(self, call: ToolCall, work: Callable[[], Observation]) -> None:
        with self.lock:
            self.queue.append((call, work))
        self._pump()

    def cancel_queued(self) -> list[ToolCall]:
        with self.lock:
            calls = [call for call, _ in self.queue]
            self.queue.clear()
        return calls

    def _pump(self) -> None:
        while True:
            with self.lock:
                if self.free <= 0 or not self.queue:
                    return
                self.free -= 1
                call, work = self.queue.popleft()
            released = threading.Event()

            def release(released: threading.Event = released) -> None:
                if not released.is_set():
                    released.set()
                    with self.lock:
                        self.free += 1
                    self._pump()

            call.on_expire = release

            def run(call: ToolCall = call, work: Callable[[], Observation] = work,
                    release: Callable[[], None] = release) -> None:
                try:
                    _run_call(call, work)
                finally:
                    release()

            threading.Thread(target=run, name=f"halo-tool-{self.name}", daemon=True).start()


@dataclass
class ToolCallCache:
    """Tool calls of a statement (or of a batch of queries) keyed by (tool, arguments)."""

    _calls: dict[tuple[Any, ...], ToolCall] = field(default_factory=dict)
    _lanes: dict[ToolSpec, _ToolLane] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _users: int = 0

    def claim(self, key: tuple[Any, ...], timeout: float) -> tuple[ToolCall, bool]:
        """The call for `key`, and True if the caller must run it (it is new)."""
        with self._lock:
            call = self._calls.get(key)
            if call is not None:
                return call, False
            call = self._calls[key] = ToolCall(timeout)
            return call, True

    def submit(self, tool: ToolSpec, call: ToolCall, work: Callable[[], Observation]) -> None:
        with self._lock:
            lane = self._lanes.get(tool)
            if lane is None:
                lane = self._lanes[tool] = _ToolLane(tool)
        lane.submit(call, work)

    def enter(self) -> None:
        with self._lock:
            self._users += 1

    def leave(self) -> None:
        """The last operator using the cache is done (or was cancelled): calls still queued
        will never be needed; drop them so that no later caller waits for them."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            lanes = list(self._lanes.values())
        for lane in lanes:
            for call in lane.cancel_queued():
                call.future.cancel()
                with self._lock:
                    for key in [k for k, c in self._calls.items() if c is call]:
                        del self._calls[key]


class ToolRunner:
    """Starts one agent operator's tool calls; SQL calls wait in `pending_sql` for `run_sql`."""

    def __init__(self, cache: ToolCallCache, connection: duckdb.DuckDBPyConnection) -> None:
        self.cache = cache
        self.connection = connection
        self.pending_sql: list[tuple[ToolCall, ToolSpec, dict[str, Any]]] = []
        self.executed = 0
        self.deduplicated = 0
        self.admissions: dict[ToolSpec, str | UnsafeQuery] = {}

    def start(self, tool: ToolSpec, arguments: dict[str, Any]) -> ToolCall:
        problem = argument_problem(tool, arguments)
        if problem is not None:
            return ToolCall.done_with(Observation(f"error: {problem}", False))
        key: tuple[Any, ...] = (tool, json.dumps(arguments, sort_keys=True, default=str))
        if not tool.cache:
            key += (object(),)  # never equal to another call's key
        call, owner = self.cache.claim(key, tool.timeout)
        if not owner:
            self.deduplicated += 1
            return call
        self.executed += 1
        if tool.kind is ToolKind.SQL:
            self.pending_sql.append((call, tool, arguments))
        else:
            run = _run_python if tool.kind is ToolKind.PYTHON else _run_http
            self.cache.submit(tool, call, functools.partial(run, tool, arguments))
        return call

    def abandon(self) -> None:
        """Resolve SQL calls that will not run now (the operator is stopping)."""
        jobs, self.pending_sql = self.pending_sql, []
        for call, _, _ in jobs:
            call.finish(Observation("error: cancelled", False))

    def run_sql(self) -> None:
        """Run the SQL calls collected so far, one after another on the connection."""
        jobs, self.pending_sql = self.pending_sql, []
        for call, tool, arguments in jobs:
            _run_call(call, functools.partial(_run_sql, self.connection, tool, arguments,
                                              self._admitted(tool)))

    def _admitted(self, tool: ToolSpec) -> str | UnsafeQuery:
        """The tool's admitted SQL (or why it is refused), decided once per operator run: the
        catalog it is checked against does not change under a running statement."""
        if tool not in self.admissions:
            try:
                self.admissions[tool] = admit(tool, self.connection)
            except UnsafeQuery as exc:
                self.admissions[tool] = exc
        return self.admissions[tool]


def argument_problem(tool: ToolSpec, arguments: Any) -> str | None:
    """Why `arguments` do not fit the tool's parameter schema (None when they do)."""
    import jsonschema

    if not isinstance(arguments, dict):
        return f"arguments of {tool.name} must be a JSON object"
    try:
        jsonschema.validate(arguments, tool.parameter_schema)
    except jsonschema.ValidationError as exc:
        return f"arguments of {tool.name} do not match its parameters: {exc.message}"
    return None


def _run_call(call: ToolCall, work: Callable[[], Observation]) -> None:
    if not call.begin():
        return
    try:
        observation = work()
    except Exception as exc:  # a tool must never take the statement down
        observation = Observation(f"error: {type(exc).__name__}: {exc}", False)
    call.finish(observation)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 15)] + " ... (truncated)"


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


def _run_sql(
    connection: duckdb.DuckDBPyConnection,
    tool: ToolSpec,
    arguments: Mapping[str, Any],
    admitted: str | UnsafeQuery,
) -> Observation:
    if isinstance(admitted, UnsafeQuery):  # the sandbox refused it (halo_sql.agents.sandbox)
        return Observation(f"error: refused: {admitted.message}", False)
    sql = admitted
    names = set(tool.parameter_schema.get("properties", {}))
    params = {k: v for k, v in arguments.items() if k in names}
    timed_out = threading.Event()

    def interrupt() -> None:
        timed_out.set()
        connection.interrupt()

    timer = threading.Timer(tool.timeout, interrupt)
    timer.start()
    try:
        relation = connection.sql(sql, params=params or None)
        columns = list(relation.columns)
        # LIMIT inside DuckDB: the query stops after the rows the agent can see (plus one, to
        # say there were more), and no unfinished result is left on the connection.
        rows = relation.limit(tool.max_rows + 1).fetchall()
    except duckdb.Error as exc:
        if timed_out.is_set():
            return Observation(f"error: timed out after {tool.timeout:g} s", False)
        return Observation(f"error: {_clip(str(exc).splitlines()[0], tool.max_chars)}", False)
    finally:
        timer.cancel()
    shown = [dict(zip(columns, row, strict=True)) for row in rows[: tool.max_rows]]
    text = _as_text(shown)
    if len(rows) > tool.max_rows:
        text += f" (first {tool.max_rows} rows; more not shown)"
    return Observation(_clip(text, tool.max_chars), True)


def _run_python(tool: ToolSpec, arguments: Mapping[str, Any]) -> Observation:
    fn = registered_function(tool.target)
    if fn is None:
        return Observation(
            f"error: python function {tool.target!r} is not registered in this process", False
        )
    try:
        value = fn(**arguments)
    except Exception as exc:
        return Observation(_clip(f"error: {type(exc).__name__}: {exc}", tool.max_chars), False)
    return Observation(_clip(_as_text(value), tool.max_chars), True)


class RedirectRefused(urllib.error.URLError):
    """A tool's server redirected elsewhere than the tool's own origin."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:  # a malformed port in a Location header
        port = -1
    return parts.scheme, (parts.hostname or "").lower(), port


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only within the declared URL's origin (scheme, host, port): a tool is
    declared for one service, so a redirect to another host (or to ftp://, file://) is refused
    and the agent sees why, instead of the request (and its body) going elsewhere."""

    def __init__(self, declared: str) -> None:
        self.origin = _origin(declared)

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        # Checked before urllib looks at the target (it would report a file:// target as a
        # bare HTTP error): every redirect code goes through here.
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            newurl = urllib.parse.urljoin(req.full_url, target)
            if _origin(newurl) != self.origin:
                raise RedirectRefused(
                    f"redirect refused: HTTP {code} to {newurl} leaves the tool's origin "
                    f"{self.origin[0]}://{self.origin[1]}:{self.origin[2]}"
                )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _run_http(tool: ToolSpec, arguments: Mapping[str, Any]) -> Observation:
    url = tool.target
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return Observation(f"error: only http(s) URLs can be tools, got {url!r}", False)
    if tool.method == "GET":
        query = urllib.parse.urlencode({k: _as_text(v) for k, v in arguments.items()})
        request = urllib.request.Request(
            url + ("&" if parts.query else "?") + query if query else url, method="GET"
        )
    else:
        body = json.dumps(dict(arguments), default=str).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
    handlers: list[Any] = [_SameOriginRedirects(url)]
    if _is_loopback(parts.hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    limit = tool.max_chars * 4 + 1
    try:
        with opener.open(request, timeout=tool.timeout) as response:
            text = response.read(limit).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        detail = exc.read(limit).decode("utf-8", "replace") if exc.fp is not None else ""
        return Observation(_clip(f"error: HTTP {exc.code}: {detail}".rstrip(), tool.max_chars), False)
    except TimeoutError:
        return Observation(f"error: timed out after {tool.timeout:g} s", False)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return Observation(f"error: timed out after {tool.timeout:g} s", False)
        return Observation(_clip(f"error: {reason}", tool.max_chars), False)
    return Observation(_clip(text, tool.max_chars), True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
