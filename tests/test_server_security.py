"""The online server's security model: a token on every request, JSON only, Host and Origin
checked, bounded bodies, read-only unless started with allow_writes, every DuckDB type encoded as
valid JSON, and clean errors for ports it cannot use (docs/security.md)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import halo_sql
from halo_sql.errors import OperationalError
from halo_sql.frontends.server import ExposedServerWarning, HaloServer, read_only_refusal
from halo_sql.session import Session


def _session() -> Session:
    session = Session(backend="sim")
    session.register("notes", pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"]}))
    session.execute("CREATE TABLE secret AS SELECT 'hunter2' AS p")
    return session


@pytest.fixture
def server() -> Iterator[HaloServer]:
    server = halo_sql.serve(session=_session(), port=0)
    yield server
    server.stop()


def request(
    server: HaloServer,
    method: str = "POST",
    path: str = "/query",
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    token: bool = True,
    json_body: bool = True,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One raw HTTP request; returns (status, JSON body, headers). Defaults: a well-formed,
    authorized JSON request."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else (
        body.encode() if isinstance(body, str) else body
    )
    sent: dict[str, str] = {"Host": f"127.0.0.1:{port}"}
    if token:
        sent["Authorization"] = f"Bearer {server.token}"
    if json_body and data is not None:
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in sent.items():
        conn.putheader(name, value)
    if data is not None and "Content-Length" not in sent:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    if data is not None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early
            conn.send(data)
    reply = conn.getresponse()
    raw = reply.read()
    conn.close()
    return reply.status, json.loads(raw, parse_constant=_strict), dict(reply.getheaders())


def _strict(word: str) -> Any:
    raise AssertionError(f"invalid JSON token {word}")


def query(server: HaloServer, sql: str, params: Any = None) -> tuple[int, dict[str, Any]]:
    status, body, _ = request(server, body={"sql": sql, "params": params})
    return status, body


# -- who may talk to the server --------------------------------------------------------------------
def test_a_cross_site_text_plain_post_is_refused_and_runs_nothing(server: HaloServer) -> None:
    # What a hostile web page can send without a CORS preflight: no token, text/plain, an Origin.
    status, body, headers = request(
        server, body='{"sql": "CREATE TABLE pwned AS SELECT 1"}', token=False, json_body=False,
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert status == 401 and body["error"]["type"] == "Unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert query(server, "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'pwned'")[1][
        "rows"] == [[0]]


def test_every_route_needs_the_token(server: HaloServer) -> None:
    for method, path in [("GET", "/health"), ("GET", "/stats"), ("POST", "/query")]:
        body = {"sql": "SELECT 1"} if method == "POST" else None
        assert request(server, method, path, body, token=False)[0] == 401
        assert request(server, method, path, body, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(server, method, path, body, headers={"Authorization": server.token})[0] == 401
        assert request(server, method, path, body)[0] == 200


def test_the_token_comes_from_the_environment_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_SERVER_TOKEN", "s3cret-token")
    server = halo_sql.serve(session=_session(), port=0)
    try:
        assert server.token == "s3cret-token"
        assert request(server, body={"sql": "SELECT 1"})[0] == 200
    finally:
        server.stop()
    generated = halo_sql.serve(session=_session(), port=0)
    other = halo_sql.serve(session=_session(), port=0, token=None)
    try:
        assert generated.token == other.token == "s3cret-token"
    finally:
        generated.stop()
        other.stop()


def test_generated_tokens_are_long_and_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALO_SERVER_TOKEN", raising=False)
    servers = [halo_sql.serve(session=_session(), port=0) for _ in range(2)]
    try:
        assert servers[0].token != servers[1].token
        assert all(len(s.token) >= 40 for s in servers)
    finally:
        for s in servers:
            s.stop()


def test_a_host_that_does_not_name_the_server_is_refused(server: HaloServer) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends Host: evil.example.
    port = server.server_address[1]
    status, body, _ = request(server, body={"sql": "SELECT 1"},
                              headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "does not name this server" in body["error"]["message"]
    assert request(server, body={"sql": "SELECT 1"}, headers={"Host": f"localhost:{port}"})[0] == 200


def test_a_request_from_a_web_origin_is_refused_unless_allowed() -> None:
    server = halo_sql.serve(session=_session(), port=0, allowed_origins=["https://app.example"])
    try:
        evil = request(server, body={"sql": "SELECT 1"}, headers={"Origin": "https://evil.example"})
        assert evil[0] == 403 and "origin" in evil[1]["error"]["message"]
        good = request(server, body={"sql": "SELECT 1"}, headers={"Origin": "https://app.example"})
        assert good[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x", None])
def test_only_json_bodies_are_read(server: HaloServer, kind: str | None) -> None:
    headers = {"Content-Type": kind} if kind else {}
    status, body, _ = request(server, body='{"sql": "SELECT 1"}', json_body=False, headers=headers)
    assert status == 415 and body["error"]["type"] == "UnsupportedMediaType"


@pytest.mark.parametrize(
    ("length", "status"),
    [("-5", 400), ("99999999999999", 413), ("2000000", 413), ("12abc", 400), ("", 400)],
)
def test_bad_or_absurd_lengths_are_refused_without_reading(
    server: HaloServer, length: str, status: int
) -> None:
    got, body, headers = request(server, body=b"{}", headers={"Content-Length": length})
    assert got == status, body
    assert headers.get("Connection") == "close"


def test_a_body_over_the_limit_is_refused() -> None:
    server = halo_sql.serve(session=_session(), port=0, max_body_bytes=64)
    try:
        status, body, _ = request(server, body={"sql": "SELECT '" + "x" * 100 + "'"})
        assert status == 413 and "at most 64" in body["error"]["message"]
    finally:
        server.stop()


def test_chunked_bodies_are_refused(server: HaloServer) -> None:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    conn.request("POST", "/query", body=iter([b'{"sql": "SELECT 1"}']),
                 headers={"Authorization": f"Bearer {server.token}",
                          "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 411


@pytest.mark.parametrize("body", ['{"sql": 1}', '[1]', '{"sql": "SELECT 1", "extra": 1}',
                                  '{"sql": "SELECT 1", "params": "x"}', "not json",
                                  '{"sql": "SELECT ?", "params": [NaN]}'])
def test_malformed_requests_get_400(server: HaloServer, body: str) -> None:
    assert request(server, body=body)[0] == 400


# -- read-only by default --------------------------------------------------------------------------
WRITES = [
    "CREATE TABLE t2 AS SELECT 1 AS x",
    "DROP TABLE secret",
    "INSERT INTO secret VALUES ('x')",
    "UPDATE secret SET p = 'x'",
    "DELETE FROM secret",
    "WITH d AS (DELETE FROM secret RETURNING *) SELECT * FROM d",
    "CREATE OR REPLACE MACRO lower(x) AS 'pwned'",
    "CREATE TEMP MACRO m() AS 1",
    "ATTACH '/tmp/halo-attach.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SET VARIABLE secret = 'x'",
    "SET search_path = 'main'",
    "COPY secret TO '/tmp/halo-copy.csv'",
    "EXPORT DATABASE '/tmp/halo-export'",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "EXPLAIN ANALYZE DELETE FROM secret",
    "CREATE MODEL m USING sim",
    "DROP MODEL default",
    "CREATE TOOL t AS SQL 'SELECT 1 FROM notes'",
    "SET disable_rules = 'all'",
    "BEGIN TRANSACTION",
    "CHECKPOINT",
    "VACUUM",
]


@pytest.mark.parametrize("sql", WRITES)
def test_a_read_only_server_refuses_statements_that_change_anything(
    server: HaloServer, sql: str
) -> None:
    status, body = query(server, sql)
    assert status == 403, body
    assert body["error"]["type"] == "ReadOnly" and "--allow-writes" in body["error"]["message"]
    assert query(server, "SELECT p FROM secret")[1]["rows"] == [["hunter2"]]


FILES = ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM '/etc/passwd'",
         "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM glob('/etc/*')"]


@pytest.mark.parametrize("sql", FILES)
def test_queries_cannot_read_files(server: HaloServer, sql: str) -> None:
    status, body = query(server, sql)
    assert status == 400
    assert "disabled by configuration" in body["error"]["message"] or (
        "does not exist" in body["error"]["message"]  # a path is not even looked up as a file
    )


def test_queries_llm_calls_and_halo_show_statements_are_served(server: HaloServer) -> None:
    status, body = query(server, "SELECT id, LLM_FILTER('Is {text} short?') AS ok FROM notes "
                                 "WHERE id = ?", [2])
    assert status == 200 and body["columns"] == ["id", "ok"] and body["rows"][0][0] == 2
    assert query(server, "SHOW MODELS")[0] == 200
    assert query(server, "EXPLAIN SELECT LLM('x {text}') FROM notes")[0] == 200
    assert query(server, "DESCRIBE notes")[0] == 200


def test_allow_writes_runs_any_statement_on_the_shared_session() -> None:
    server = halo_sql.serve(session=_session(), port=0, allow_writes=True)
    try:
        assert query(server, "CREATE TABLE t2 AS SELECT 41 AS x")[0] == 200
        assert query(server, "CREATE MODEL other USING sim")[0] == 200
        assert query(server, "SELECT x + 1 AS y FROM t2")[1]["rows"] == [[42]]
        # Files stay out of reach even then: the connection is locked down.
        assert query(server, "COPY t2 TO '/tmp/halo-copy.csv'")[0] == 400
    finally:
        server.stop()


def test_read_only_refusal_reads_duckdbs_parse() -> None:
    assert read_only_refusal("SELECT 1; SELECT 2") is None
    assert read_only_refusal("SELECT 1; DROP TABLE x") is not None
    assert read_only_refusal("EXPLAIN SELECT 1") is None
    assert read_only_refusal("SHOW TOOLS") is None


def test_a_file_database_is_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "shop.duckdb"
    setup = halo_sql.connect(str(path), backend="sim")
    setup.sql("CREATE TABLE t AS SELECT 1 AS x")
    setup.close()
    server = halo_sql.serve(str(path), port=0, backend="sim")
    try:
        assert query(server, "SELECT x FROM t")[1]["rows"] == [[1]]
        assert server.batcher.session.connection.sql(
            "SELECT readonly FROM duckdb_databases() WHERE database_name = 'shop'"
        ).fetchall() == [(True,)]
    finally:
        server.stop()


# -- results are valid JSON, whatever the type -----------------------------------------------------
def test_every_duckdb_type_is_encoded_as_valid_json(server: HaloServer) -> None:
    status, body = query(server, "SELECT * FROM test_all_types()")
    assert status == 200, body
    assert len(body["rows"]) == 3 and len(body["columns"]) == len(body["types"]) > 50
    row = dict(zip(body["columns"], body["rows"][1], strict=True))  # the maxima
    assert row["timestamp"] == "+294247-01-10T04:00:54.775806"  # ISO 8601, expanded year
    assert row["date"] == "+5881580-07-10"
    minima = dict(zip(body["columns"], body["rows"][0], strict=True))
    assert minima["date"] == "-5877641-06-25" and minima["double"] == -1.7976931348623157e308


def test_special_values_have_a_stated_json_form(server: HaloServer) -> None:
    status, body = query(server, """
        SELECT 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, '-inf'::FLOAT AS ninf,
               'infinity'::TIMESTAMP AS ts_inf, '-infinity'::DATE AS d_inf,
               TIMESTAMP '2024-02-29 12:34:56.5' AS ts, DATE '0044-03-15' AS ides,
               TIMESTAMPTZ '2024-01-01 00:00:00+00' AS tz,
               1.10::DECIMAL(10, 2) AS dec, 170141183460469231731687303715884105727::HUGEINT AS huge,
               '\\xAA\\xBB'::BLOB AS blob, INTERVAL '1 month 2 days 3 seconds' AS iv,
               [1, NULL, 3] AS list, {'a': 1, 'b': [DATE '2020-01-01']} AS struct,
               MAP {'k': 1} AS map, TIME '13:14:15' AS t, 'x'::VARCHAR AS s, NULL AS n,
               gen_random_uuid() IS NOT NULL AS has_uuid
    """)
    assert status == 200, body
    row = dict(zip(body["columns"], body["rows"][0], strict=True))
    assert row == {
        "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "ts_inf": "infinity",
        "d_inf": "-infinity", "ts": "2024-02-29T12:34:56.500000", "ides": "0044-03-15",
        "tz": "2024-01-01T00:00:00.000000Z", "dec": "1.10",
        "huge": "170141183460469231731687303715884105727",
        "blob": base64.b64encode(b"\xaa\xbb").decode(), "iv": {"months": 1, "days": 2,
                                                                "nanoseconds": 3_000_000_000},
        "list": [1, None, 3], "struct": {"a": 1, "b": ["2020-01-01"]},
        "map": [{"key": "k", "value": 1}], "t": "13:14:15.000000", "s": "x", "n": None,
        "has_uuid": True,
    }


# -- where it listens -------------------------------------------------------------------------------
def test_a_busy_port_is_a_clean_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OperationalError, match="port is in use"):
            halo_sql.serve(session=_session(), port=taken.getsockname()[1])
    finally:
        taken.close()


@pytest.mark.parametrize(("port", "message"), [(70000, "between 0 and 65535"), (-1, "between 0")])
def test_a_bad_port_is_a_clean_error(port: int, message: str) -> None:
    with pytest.raises(OperationalError, match=message):
        halo_sql.serve(session=_session(), port=port)


def test_binding_beyond_loopback_warns() -> None:
    with pytest.warns(ExposedServerWarning, match="beyond this machine"):
        server = halo_sql.serve(session=_session(), host="0.0.0.0", port=0)
    server.stop()


def test_the_command_prints_the_token_and_fails_cleanly_on_a_busy_port(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "halo_sql.cli", "serve", "--backend", "sim", "--port",
             str(taken.getsockname()[1])],
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
        )
    finally:
        taken.close()
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot listen on 127.0.0.1:") and "Traceback" not in done.stderr


def test_the_command_prints_a_token_that_opens_the_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HALO_SERVER_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "halo_sql.cli", "serve", "--backend", "sim", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        token_line = process.stdout.readline()
        assert "(read-only)" in banner, banner
        url = banner.split(" on ")[1].split(" ")[0]
        token = token_line.split()[1]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps({"sql": "SELECT 41 + 1 AS answer"})
        conn.request("POST", "/query", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 200 and json.loads(reply.read())["rows"] == [[42]]
        conn.request("POST", "/query", body=body, headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
