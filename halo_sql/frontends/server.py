"""Online mode: queries arrive one by one; halo-sql groups them into mini-batches.

Arrivals wait at most `latency_budget_ms` (or until `max_batch` are waiting) before their
mini-batch is planned and run together with `Session.execute_batch`, so concurrent users share
model batches, prefix-cache hits and identical requests exactly like an offline batch does.

Python API (futures; `await asyncio.wrap_future(f)` from async code):

    >>> batcher = MiniBatcher(Session(backend="sim"), latency_budget_ms=5)
    >>> batcher.submit("SELECT 41 + 1 AS answer").result().table.to_pylist()
    [{'answer': 42}]
    >>> batcher.close()

HTTP API (`halo_sql.serve(...)` or `halo-sql serve`), JSON over localhost:

* `POST /query` with `{"sql": "...", "params": [...] | {...}}` ->
  `{"columns": [...], "rows": [[...], ...], "stats": {...}}`, or HTTP 400 with
  `{"error": {"type": "BinderError", "message": "..."}}`
* `GET /stats` -> queries served, throughput (queries/s), latency percentiles (ms), batch sizes
* `GET /health` -> `{"status": "ok"}`
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import statistics
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from halo_sql.errors import HaloError, InterfaceError
from halo_sql.session import Params, Result, Session


@dataclass
class _Arrival:
    sql: str
    params: Params
    future: Future[Result]
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class ServingStats:
    """Throughput and latency of the queries served so far."""

    queries: int = 0
    failed: int = 0
    batches: int = 0
    started: float = field(default_factory=time.perf_counter)
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

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
            "batches": self.batches,
            "mean_batch_size": round(statistics.fmean(self.batch_sizes), 2) if self.batch_sizes else 0,
            "throughput_qps": round(self.queries / elapsed, 2),
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        }


class MiniBatcher:
    """Groups queries submitted from any thread into mini-batches under a latency budget."""

    def __init__(
        self, session: Session, *, latency_budget_ms: float = 50.0, max_batch: int = 256
    ) -> None:
        self.session = session
        self.latency_budget = latency_budget_ms / 1000.0
        self.max_batch = max_batch
        self.stats = ServingStats()
        self._queue: list[_Arrival] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="halo-minibatch", daemon=True)
        self._thread.start()

    def submit(self, sql: str, params: Params = None) -> Future[Result]:
        """Queue one statement; the future resolves to its Result (or raises its HaloError)."""
        future: Future[Result] = Future()
        with self._cond:
            if self._closed:
                raise InterfaceError("the server is shut down")
            self._queue.append(_Arrival(sql, params, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                deadline = self._queue[0].arrived + self.latency_budget
                while len(self._queue) < self.max_batch and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(timeout=remaining)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._run(batch)

    def _run(self, batch: list[_Arrival]) -> None:
        try:
            outcome = self.session.execute_batch([(a.sql, a.params) for a in batch])
        except BaseException as exc:  # a failure of the whole batch fails each query, loudly
            for arrival in batch:
                arrival.future.set_exception(exc)
            self.stats.failed += len(batch)
            return
        done = time.perf_counter()
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(batch))
        for arrival, result in zip(batch, outcome.results, strict=True):
            self.stats.queries += 1
            self.stats.latencies_ms.append((done - arrival.arrived) * 1000)
            if result.error is not None:
                self.stats.failed += 1
                arrival.future.set_exception(result.error)
            else:
                arrival.future.set_result(result)


def _jsonable(value: Any) -> Any:
    if isinstance(value, _dt.date | _dt.datetime | _dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot encode {type(value).__name__}")


class HaloServer(ThreadingHTTPServer):
    """The HTTP front of a MiniBatcher (bind to localhost; there is no authentication)."""

    daemon_threads = True

    def __init__(self, batcher: MiniBatcher, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.batcher = batcher
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def start(self) -> HaloServer:
        """Serve in a background thread (returns self)."""
        threading.Thread(target=self.serve_forever, name="halo-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    server: HaloServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep the terminal for the user; /stats tells what happened

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, default=_jsonable).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self.path == "/stats":
            self._reply(200, self.server.batcher.stats.as_dict())
        else:
            self._reply(404, {"error": {"type": "NotFound", "message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/query":
            self._reply(404, {"error": {"type": "NotFound", "message": f"no route {self.path}"}})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            payload = json.loads(self.rfile.read(length) or b"{}")
            sql = payload["sql"]
            if not isinstance(sql, str):
                raise TypeError("'sql' must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(400, {"error": {"type": "BadRequest", "message": f"expected JSON {{\"sql\": ...}}: {exc}"}})
            return
        try:
            result = self.server.batcher.submit(sql, payload.get("params")).result()
        except HaloError as exc:
            self._reply(400, {"error": {"type": type(exc).__name__, "message": str(exc)}})
            return
        table = result.table
        self._reply(
            200,
            {
                "columns": table.column_names if table is not None else [],
                "rows": [list(r.values()) for r in table.to_pylist()] if table is not None else [],
                "stats": result.stats.as_dict(),
            },
        )


def serve(
    database: str = ":memory:",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    latency_budget_ms: float = 50.0,
    max_batch: int = 256,
    session: Session | None = None,
    **connect_options: Any,
) -> HaloServer:
    """Start serving queries over HTTP in a background thread; returns the server (`.stop()`)."""
    session = session or Session(database, **connect_options)
    batcher = MiniBatcher(session, latency_budget_ms=latency_budget_ms, max_batch=max_batch)
    return HaloServer(batcher, host, port).start()
