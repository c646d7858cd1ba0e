"""HTTP tools talk to the service they declare: a redirect is followed only within the declared
URL's origin; a redirect to another host is an error observation and is never followed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from agent_script import ScriptedBackend, use_backend

import halo_sql


class _Recorder(BaseHTTPRequestHandler):
    """Answers per path: /redirect-to?url=... sends a 302 there; anything else echoes its path.
    Every request is recorded in the server's `seen` list."""

    server: Any

    def _handle(self) -> None:
        self.server.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.server.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle  # noqa: N815 - the names http.server calls

    def log_message(self, *args: Any) -> None:
        pass


def _start() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    server.location = ""  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    """Two local services on different ports: the tool's own, and another one."""
    own, other = _start(), _start()
    yield own, other
    for server in (own, other):
        server.shutdown()
        server.server_close()


def _url(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _ask(url: str, method: str) -> str:
    """What an agent whose only tool is the HTTP tool `url` sees after one call of it."""
    con = halo_sql.connect(backend="sim")
    con.sql(f"CREATE TOOL svc AS HTTP '{url}' WITH (method => '{method}', timeout => 5)")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [svc])")
    use_backend(con, ScriptedBackend(
        lambda t: {"action": "svc", "arguments": {"query": "q"}} if t.step == 1
        else {"action": "final", "answer": t.results[0]}
    ))
    answer = con.sql("SELECT answer FROM AGENT('a', input => (SELECT 1 AS id))").column("answer")[0]
    con.close()
    return str(answer.as_py())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_redirect_to_another_host_is_an_error_and_is_not_followed(
    servers: tuple[ThreadingHTTPServer, ThreadingHTTPServer], method: str
) -> None:
    own, other = servers
    own.location = _url(other, "/stolen")  # type: ignore[attr-defined]
    answer = _ask(_url(own, "/redirect"), method)
    assert answer.startswith("error: redirect refused: HTTP 302 to " + _url(other, "/stolen"))
    assert other.seen == []  # type: ignore[attr-defined]


def test_a_redirect_to_a_file_url_is_refused(
    servers: tuple[ThreadingHTTPServer, ThreadingHTTPServer],
) -> None:
    own, _ = servers
    own.location = "file:///etc/passwd"  # type: ignore[attr-defined]
    assert _ask(_url(own, "/redirect"), "GET").startswith("error: redirect refused")


def test_a_redirect_within_the_declared_origin_is_followed(
    servers: tuple[ThreadingHTTPServer, ThreadingHTTPServer],
) -> None:
    own, other = servers
    own.location = _url(own, "/moved")  # type: ignore[attr-defined]
    assert json.loads(_ask(_url(own, "/redirect"), "GET")) == {"path": "/moved"}
    assert other.seen == []  # type: ignore[attr-defined]
