"""Online mode: concurrent arrivals join the running work at once and are answered correctly."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

import halo_sql
from halo_sql.frontends.server import OnlineRunner
from halo_sql.session import Session

SQL = "SELECT id, LLM_CLASSIFY('Mood of: {text}', ['up', 'down']) AS mood FROM notes WHERE id = ?"


@pytest.fixture()
def session() -> Session:
    session = Session(backend="sim")
    session.register("notes", pa.table({"id": list(range(40)), "text": [f"note {i}" for i in range(40)]}))
    return session


def test_concurrent_submissions_match_one_by_one(session: Session) -> None:
    expected = [session.execute(SQL, [i]).table.to_pylist() for i in range(40)]  # type: ignore[union-attr]
    runner = OnlineRunner(session)
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = list(pool.map(lambda i: runner.submit(SQL, [i]), range(40)))
        got = [f.result(timeout=30).table.to_pylist() for f in futures]  # type: ignore[union-attr]
    finally:
        runner.close()
    assert got == expected
    stats = runner.stats.as_dict()
    assert stats["queries"] == 40 and stats["failed"] == 0 and stats["in_flight"] == 0
    assert stats["latency_ms"]["p50"] is not None


def test_http_endpoint_answers_queries_errors_and_stats(session: Session) -> None:
    server = halo_sql.serve(session=session, port=0)
    try:
        def post(payload: dict[str, object]) -> tuple[int, dict[str, object]]:
            request = urllib.request.Request(
                server.url + "/query", data=json.dumps(payload).encode(), method="POST",
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {server.token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = post({"sql": SQL, "params": [3]})
        assert status == 200
        assert body["columns"] == ["id", "mood"]
        assert body["rows"][0][0] == 3 and body["rows"][0][1] in ("up", "down")
        status, body = post({"sql": "SELECT LLM('{nope}') FROM notes"})
        assert status == 400
        assert body["error"]["type"] == "BinderError"
        assert "nope" in body["error"]["message"]
        status, body = post({"query": "x"})
        assert status == 400
        stats_request = urllib.request.Request(
            server.url + "/stats", headers={"Authorization": f"Bearer {server.token}"}
        )
        with urllib.request.urlopen(stats_request, timeout=10) as reply:
            stats = json.loads(reply.read())
        assert stats["queries"] == 2 and stats["failed"] == 1
    finally:
        server.stop()
