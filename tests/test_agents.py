"""Agents in SQL, on a scripted backend: batching per step, tool batching and dedup, bounds,
failures as observations, the read-only guard of SQL tools, and the three SQL spellings."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agent_script import ScriptedBackend, Turn, use_backend

import halo_sql
from halo_sql.agents import tool_function
from halo_sql.agents.safety import UnsafeQuery, check_read_only
from halo_sql.agents.spec import ToolKind, ToolSpec
from halo_sql.executor.agent_loop import InvalidReply, parse_reply, reply_schema
from halo_sql.llm.base import LLMResponse
from halo_sql.logical.plan import AgentCall

SETUP = """
CREATE TABLE customers AS
    SELECT range AS id, 'note ' || (range % 3) AS note, range % 2 AS segment FROM range(6);
CREATE TABLE orders AS
    SELECT range AS order_id, range % 6 AS customer_id, 10.0 * range AS price FROM range(24);
CREATE TOOL orders_of AS SQL
    'SELECT order_id, price FROM orders WHERE customer_id = :cid ORDER BY order_id'
    WITH (parameters => '{"cid": "integer"}', description => 'The orders of a customer.');
"""

CALLS: list[dict[str, Any]] = []
"""Calls of the Python tools below, in order (tests clear it)."""


@tool_function
def lookup_segment(segment: int) -> dict[str, Any]:
    CALLS.append({"tool": "lookup_segment", "segment": segment})
    return {"segment": segment, "label": "gold" if segment else "basic"}


@tool_function
def explode(reason: str) -> str:
    CALLS.append({"tool": "explode", "reason": reason})
    raise ValueError(f"boom: {reason}")


@tool_function
def nap(seconds: float) -> str:
    CALLS.append({"tool": "nap", "seconds": seconds})
    time.sleep(seconds)
    return f"slept {seconds}"


@pytest.fixture
def con() -> Iterator[halo_sql.Connection]:
    con = halo_sql.connect(backend="sim")
    con.sql(SETUP)
    CALLS.clear()
    yield con
    con.close()


def scripted(con: halo_sql.Connection, script: Any) -> ScriptedBackend:
    backend = ScriptedBackend(script)
    use_backend(con, backend)
    return backend


def final(answer: Any) -> dict[str, Any]:
    return {"action": "final", "answer": answer}


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"action": tool, "arguments": arguments}


# -- catalog statements ------------------------------------------------------------------------------
def test_create_show_and_drop_agents_and_tools(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL seg AS PYTHON 'test_agents:lookup_segment'")
    con.sql(
        "CREATE AGENT scout WITH (instructions => 'Look around.', tools => [orders_of, seg], "
        "max_steps => 3, output => ['keep', 'drop'])"
    )
    agents = con.sql("SHOW AGENTS").to_pylist()
    assert [(a["name"], a["tools"], a["max_steps"]) for a in agents] == [
        ("scout", ["orders_of", "seg"], 3)
    ]
    tools = {t["name"]: t for t in con.sql("SHOW TOOLS").to_pylist()}
    assert tools["orders_of"]["kind"] == "SQL" and tools["orders_of"]["tables"] == ["orders"]
    assert json.loads(tools["seg"]["parameters"])["properties"] == {"segment": {"type": "integer"}}
    with pytest.raises(halo_sql.BinderError, match="already exists"):
        con.sql("CREATE AGENT scout WITH (instructions => 'x')")
    con.sql("CREATE AGENT IF NOT EXISTS scout WITH (instructions => 'x')")
    with pytest.raises(halo_sql.BinderError, match="used by agent"):
        con.sql("DROP TOOL seg")
    with pytest.raises(halo_sql.BinderError, match=r"unknown tool\(s\) \['nope'\]"):
        con.sql("CREATE AGENT other WITH (instructions => 'x', tools => [nope])")
    con.sql("CREATE OR REPLACE AGENT scout WITH (instructions => 'x', tools => [orders_of])")
    con.sql("DROP TOOL seg")
    con.sql("DROP AGENT scout")
    con.sql("DROP AGENT IF EXISTS scout")
    assert con.sql("SHOW AGENTS").num_rows == 0
    with pytest.raises(halo_sql.BinderError, match="unknown agent 'scout'"):
        con.sql("DROP AGENT scout")


def test_agents_and_tools_persist_in_a_database_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shop.duckdb")
    first = halo_sql.connect(path, backend="sim")
    first.sql(SETUP)
    first.sql("CREATE AGENT scout WITH (instructions => 'Look.', tools => [orders_of])")
    first.close()
    again = halo_sql.connect(path, backend="sim")
    assert [a["name"] for a in again.sql("SHOW AGENTS").to_pylist()] == ["scout"]
    assert [t["name"] for t in again.sql("SHOW TOOLS").to_pylist()] == ["orders_of"]
    again.close()


def test_bad_definitions_say_what_is_wrong(con: halo_sql.Connection) -> None:
    with pytest.raises(halo_sql.BinderError, match="not registered"):
        con.sql("CREATE TOOL t AS PYTHON 'os:system'")
    with pytest.raises(halo_sql.BinderError, match="do not match the query's placeholders"):
        con.sql("CREATE TOOL t AS SQL 'SELECT * FROM orders WHERE customer_id = :c' "
                "WITH (parameters => '{\"x\": \"integer\"}')")
    with pytest.raises(halo_sql.BinderError, match="http"):
        con.sql("CREATE TOOL t AS HTTP 'file:///etc/passwd'")
    with pytest.raises(halo_sql.BinderError, match="instructions"):
        con.sql("CREATE AGENT a WITH (tools => [orders_of])")
    with pytest.raises(halo_sql.BinderError, match="clash"):
        con.sql("CREATE AGENT a WITH (instructions => 'x', output => '{\"error\": \"string\"}')")
    with pytest.raises(halo_sql.ParseError, match="CREATE AGENT name WITH"):
        con.sql("CREATE AGENT a (instructions => 'x')")


# -- the read-only guard of SQL tools ----------------------------------------------------------------
WRITES = [
    "DELETE FROM orders",
    "INSERT INTO orders VALUES (1, 1, 1)",
    "UPDATE orders SET price = 0",
    "DROP TABLE orders",
    "CREATE TABLE x AS SELECT * FROM orders",
    "COPY orders TO '/tmp/x.csv'",
    "ATTACH '/tmp/other.duckdb'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA version",
    "SET threads = 1",
    "SELECT * FROM orders; DROP TABLE orders",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd.csv'",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM query('DELETE FROM orders')",
    "SELECT read_text('/etc/passwd')",
    "SELECT nextval('s')",
    "SELECT * FROM customers",
    "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
]


@pytest.mark.parametrize("sql", WRITES)
def test_sql_tool_that_writes_or_reads_elsewhere_is_refused(
    con: halo_sql.Connection, sql: str
) -> None:
    with pytest.raises(halo_sql.BinderError, match="CREATE TOOL bad"):
        con.sql(f"CREATE TOOL bad AS SQL '{sql.replace(chr(39), chr(39) * 2)}' "
                "WITH (tables => [orders])")
    assert con.sql("SELECT count(*) AS n FROM orders").column("n")[0].as_py() == 24


def test_read_only_check_binds_parameters_and_keeps_ctes() -> None:
    sql = check_read_only(
        "WITH o AS (SELECT * FROM orders WHERE customer_id = :cid) SELECT count(*) FROM o",
        ["orders"],
    )
    assert "$cid" in sql
    with pytest.raises(UnsafeQuery, match="not one the tool declares"):
        check_read_only("SELECT * FROM orders JOIN customers ON true", ["orders"])


def test_sql_tool_that_writes_is_refused_at_run_time_too(con: halo_sql.Connection) -> None:
    # A definition that slipped past CREATE TOOL (an edited catalog, a Python caller): the
    # guard runs again before every call, and the refusal is what the agent sees.
    evil = ToolSpec("wipe", ToolKind.SQL, "DELETE FROM orders", '{"type": "object"}',
                    tables=("orders",))
    con.session.agents.tools["wipe"] = evil
    con.sql("CREATE AGENT vandal WITH (instructions => 'x', tools => [orders_of])")
    agent = con.session.agents.agents["vandal"]
    con.session.agents.agents["vandal"] = dataclasses.replace(agent, tools=("wipe",))
    scripted(con, lambda t: call("wipe") if t.step == 1 else final(t.results[0]))
    rows = con.sql("SELECT answer, error, tool_calls FROM AGENT('vandal', input => "
                   "(SELECT 1 AS id))").to_pylist()
    assert rows[0]["answer"].startswith("error: refused: only read-only queries")
    assert rows[0]["error"] is None and rows[0]["tool_calls"][0]["ok"] is False
    assert con.sql("SELECT count(*) AS n FROM orders").column("n")[0].as_py() == 24


# -- steps are batched ---------------------------------------------------------------------------------
def test_each_step_is_one_batched_call_and_finished_rows_drop_out(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'Count orders.', tools => [orders_of], "
            "max_steps => 4, output => 'INTEGER')")

    def script(turn: Turn) -> dict[str, Any]:
        if turn.input["id"] % 2 == 0 or turn.step == 2:  # even rows answer at once
            return final(len(json.loads(turn.results[0])) if turn.results else 0)
        return call("orders_of", cid=turn.input["id"])

    backend = scripted(con, script)
    t = con.sql("SELECT id, answer, steps, len(tool_calls) AS calls, error "
                "FROM AGENT('a', input => (SELECT id FROM customers)) ORDER BY id")
    assert t.to_pylist() == [
        {"id": i, "answer": 0 if i % 2 == 0 else 4, "steps": 1 if i % 2 == 0 else 2,
         "calls": 0 if i % 2 == 0 else 1, "error": None}
        for i in range(6)
    ]
    assert backend.batches == [6, 3]  # step 1: every row; step 2: the three that called a tool
    stats = con.stats()
    assert stats["agent_steps"] == 2 and stats["backend_calls"] == 2
    assert stats["tool_calls"] == 3 and stats["deduplicated_tool_calls"] == 0


def test_identical_tool_calls_run_once(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL seg AS PYTHON 'test_agents:lookup_segment'")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [orders_of, seg], "
            "output => 'VARCHAR')")

    def script(turn: Turn) -> dict[str, Any]:
        if turn.step == 1:  # every row asks for the orders of customer 1 (6 identical calls)
            return call("orders_of", cid=1)
        if turn.step == 2:  # and for its segment (2 distinct calls among 6)
            return call("seg", segment=turn.input["segment"])
        return final(turn.results[-1])

    scripted(con, script)
    t = con.sql("SELECT id, answer FROM AGENT('a', input => (SELECT id, segment FROM customers))")
    assert t.num_rows == 6
    stats = con.stats()
    assert stats["tool_calls"] == 1 + 2
    assert stats["deduplicated_tool_calls"] == 5 + 4
    assert sorted(c["segment"] for c in CALLS) == [0, 1]  # the Python tool really ran twice


def test_identical_tool_calls_across_queries_of_a_batch_run_once(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL seg AS PYTHON 'test_agents:lookup_segment'")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [orders_of, seg])")
    scripted(con, lambda t: (call("seg", segment=1), call("orders_of", cid=2))[t.step - 1]
             if t.step <= 2 else final("done"))
    sql = "SELECT answer FROM AGENT('a', input => (SELECT id FROM customers WHERE id = $k))"
    batch = con.execute_batch(sql, [{"k": k} for k in range(4)])
    assert not batch.errors and all(t is not None and t.num_rows == 1 for t in batch.tables)
    assert CALLS == [{"tool": "lookup_segment", "segment": 1}]
    totals = batch.stats()
    assert totals["tool_calls"] == 2 and totals["deduplicated_tool_calls"] == 6


def test_rows_with_equal_inputs_share_one_agent_run(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x')")
    backend = scripted(con, lambda t: final(t.input["note"].upper()))
    t = con.sql("SELECT note, answer FROM AGENT('a', input => (SELECT note FROM customers))")
    assert t.num_rows == 6 and all(r["answer"] == r["note"].upper() for r in t.to_pylist())
    assert backend.batches == [3]  # three distinct notes


# -- bounds and failures -----------------------------------------------------------------------------------
def test_max_steps_is_enforced(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT looper WITH (instructions => 'x', tools => [orders_of], max_steps => 3)")
    backend = scripted(con, lambda t: call("orders_of", cid=t.step))  # never answers
    row = con.sql("SELECT answer, steps, tool_calls, error FROM AGENT('looper', "
                  "input => (SELECT 1 AS id))").to_pylist()[0]
    assert row["answer"] is None and row["steps"] == 3
    assert "max_steps=3 reached without a final answer" in row["error"]
    assert [c["step"] for c in row["tool_calls"]] == [1, 2]  # the third call is not run
    assert backend.batches == [1, 1, 1]
    # The last reply is constrained to the final answer: a model with structured outputs
    # cannot overrun; only a backend that ignores the schema (this one) ends with the error.
    last = backend.requests[-1][0].output.schema
    assert last is not None and last["properties"]["action"] == {"const": "final"}
    assert "anyOf" in (backend.requests[0][0].output.schema or {})


def test_a_tool_that_raises_becomes_an_observation(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL explode AS PYTHON 'test_agents:explode'")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [explode])")
    scripted(con, lambda t: call("explode", reason="why") if t.step == 1 else final(t.results[0]))
    row = con.sql("SELECT answer, error, tool_calls FROM AGENT('a', input => (SELECT 1 AS id))"
                  ).to_pylist()[0]
    assert row["answer"] == "error: ValueError: boom: why"
    assert row["error"] is None and row["tool_calls"][0]["ok"] is False
    assert con.stats()["tool_errors"] == 1


def test_a_tool_that_times_out_becomes_an_observation(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL nap AS PYTHON 'test_agents:nap' WITH (timeout => 0.2)")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [nap])")
    scripted(con, lambda t: call("nap", seconds=3.0) if t.step == 1 else final(t.results[0]))
    began = time.monotonic()
    row = con.sql("SELECT answer, error FROM AGENT('a', input => (SELECT 1 AS id))").to_pylist()[0]
    assert time.monotonic() - began < 2.0  # did not wait for the tool
    assert row == {"answer": "error: timed out after 0.2 s", "error": None}


def test_slow_tools_overlap_with_model_work_for_other_rows(con: halo_sql.Connection) -> None:
    con.sql("CREATE TOOL nap AS PYTHON 'test_agents:nap' WITH (timeout => 5, concurrency => 4)")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [nap], max_steps => 4)")

    def script(turn: Turn) -> dict[str, Any]:
        if turn.step == 1:
            # 2 s leaves a wide margin on a loaded machine: the fast rows need milliseconds.
            return call("nap", seconds=2.0 if turn.input["id"] == 0 else 0.0)
        if turn.step == 2 and turn.input["id"] != 0:
            return call("nap", seconds=0.001 * turn.input["id"])
        return final(turn.results[-1])

    backend = scripted(con, script)
    began = time.monotonic()
    t = con.sql("SELECT id, answer, steps FROM AGENT('a', input => (SELECT id FROM customers)) "
                "ORDER BY id")
    assert t.column("answer").to_pylist()[0] == "slept 2.0"
    assert t.column("steps").to_pylist() == [2, 3, 3, 3, 3, 3]
    # The fast rows took their steps 2 and 3 while row 0's tool was still sleeping.
    slow_done = began + 2.0
    assert sum(1 for at in backend.batch_times if at < slow_done) >= 3
    assert backend.batches[0] == 6 and 1 in backend.batches


def test_an_invalid_reply_is_explained_and_retried(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [orders_of], output => 'BOOLEAN')")

    def script(turn: Turn) -> Any:
        return "I think yes" if turn.step == 1 else (
            call("nope") if turn.step == 2 else final(True))

    scripted(con, script)
    row = con.sql("SELECT answer, steps, error FROM AGENT('a', input => (SELECT 1 AS id))"
                  ).to_pylist()[0]
    assert row == {"answer": True, "steps": 3, "error": None}
    assert con.stats()["invalid_answers"] == 2


def test_a_failing_row_sets_error_and_the_statement_completes(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x', max_steps => 2)")

    def script(turn: Turn) -> Any:
        if turn.input["id"] == 1:
            return LLMResponse("", 1, 0, 0, finish_reason="error", error="prompt too long")
        if turn.input["id"] == 2:
            return "not json"
        return final("fine")

    scripted(con, script)
    rows = con.sql("SELECT id, answer, error FROM AGENT('a', input => "
                   "(SELECT id FROM customers WHERE id < 3)) ORDER BY id").to_pylist()
    assert rows[0] == {"id": 0, "answer": "fine", "error": None}
    assert rows[1]["answer"] is None and "model error at step 1: prompt too long" in rows[1]["error"]
    assert rows[2]["answer"] is None and "invalid reply at step 2 of 2" in rows[2]["error"]


def test_a_backend_that_fails_a_whole_step_fails_its_rows_not_the_statement(
    con: halo_sql.Connection,
) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x')")

    def script(turn: Turn) -> Any:
        raise RuntimeError("engine died")

    scripted(con, script)
    rows = con.sql("SELECT error FROM AGENT('a', input => (SELECT 1 AS id))").to_pylist()
    assert "model error at step 1" in rows[0]["error"] and "engine died" in rows[0]["error"]


# -- HTTP tools ------------------------------------------------------------------------------------------
class _Service(BaseHTTPRequestHandler):
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _Service.lock:
            _Service.in_flight += 1
            _Service.most = max(_Service.most, _Service.in_flight)
        try:
            time.sleep(float(body.get("delay", 0)))
            status = 500 if body.get("q") == "fail" else 200
            payload = json.dumps({"echo": body.get("q")}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with _Service.lock:
                _Service.in_flight -= 1

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    """An HTTP service on 127.0.0.1 (an ephemeral port), stopped after the test."""
    _Service.in_flight = _Service.most = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/search"
    server.shutdown()
    server.server_close()


def test_http_tools_run_concurrently_up_to_their_limit(
    con: halo_sql.Connection, service: str
) -> None:
    con.sql(f"CREATE TOOL search AS HTTP '{service}' WITH (parameters => "
            "'{\"q\": \"string\", \"delay\": \"number\"}', concurrency => 2, timeout => 5)")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [search])")
    scripted(con, lambda t: call("search", q=f"c{t.input['id']}", delay=0.15)
             if t.step == 1 else final(t.results[0]))
    t = con.sql("SELECT id, answer FROM AGENT('a', input => (SELECT id FROM customers)) "
                "ORDER BY id")
    assert [json.loads(a) for a in t.column("answer").to_pylist()] == [
        {"echo": f"c{i}"} for i in range(6)
    ]
    assert _Service.most == 2  # concurrent, and never more than the limit


def test_http_errors_and_timeouts_become_observations(
    con: halo_sql.Connection, service: str
) -> None:
    con.sql(f"CREATE TOOL search AS HTTP '{service}' WITH (parameters => "
            "'{\"q\": \"string\", \"delay\": \"number\"}', timeout => 0.3)")
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [search])")
    asks = {0: ("fail", 0.0), 1: ("slow", 2.0), 2: ("ok", 0.0)}
    scripted(con, lambda t: call("search", q=asks[t.input["id"]][0], delay=asks[t.input["id"]][1])
             if t.step == 1 else final(t.results[0]))
    began = time.monotonic()
    answers = con.sql("SELECT answer FROM AGENT('a', input => (SELECT id FROM customers "
                      "WHERE id < 3)) ORDER BY id").column("answer").to_pylist()
    assert time.monotonic() - began < 1.5
    assert answers[0].startswith("error: HTTP 500")
    assert answers[1] == "error: timed out after 0.3 s"
    assert json.loads(answers[2]) == {"echo": "ok"}


# -- replies ---------------------------------------------------------------------------------------------
ORDERS = ToolSpec.create("orders_of", "sql", "SELECT 1 FROM orders WHERE customer_id = :cid",
                         {"parameters": '{"cid": "integer"}'})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"action": "orders_of", "arguments": {"cid": 3}}', ("orders_of", {"cid": 3}, None)),
        ('```json\n{"action": "final", "answer": "low"}\n```', (None, {}, "low")),
        ('Sure! {"action": "final", "answer": "high"}', (None, {}, "high")),
    ],
)
def test_structured_tool_calls_parse(text: str, expected: tuple[Any, ...]) -> None:
    reply = parse_reply(text, {"orders_of": ORDERS}, {"type": "string", "enum": ["low", "high"]})
    assert (reply.tool, reply.arguments, reply.answer) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no json here", "not JSON"),
        ('["final"]', "JSON object"),
        ('{"action": "drop_tables", "arguments": {}}', "must be one of orders_of, final"),
        ('{"action": "orders_of", "arguments": {"cid": "three"}}', "is not of type 'integer'"),
        ('{"action": "orders_of", "arguments": {}}', "'cid' is a required property"),
        ('{"action": "final", "answer": "medium"}', "does not match its schema"),
        ('{"action": "final"}', 'needs "answer"'),
    ],
)
def test_invalid_replies_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidReply, match=message):
        parse_reply(text, {"orders_of": ORDERS}, {"type": "string", "enum": ["low", "high"]})


def test_reply_schema_constrains_tool_arguments_and_answer() -> None:
    schema = reply_schema([ORDERS], {"type": "boolean"})
    tool, final_branch = schema["anyOf"]
    assert tool["properties"]["action"] == {"const": "orders_of"}
    assert tool["properties"]["arguments"]["properties"] == {"cid": {"type": "integer"}}
    assert final_branch["properties"]["answer"] == {"type": "boolean"}
    assert reply_schema([ORDERS], {"type": "boolean"}, final_only=True) == final_branch


# -- SQL spellings, output shapes, EXPLAIN -------------------------------------------------------------
def test_lateral_and_scalar_forms_match_the_table_form(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT tag WITH (instructions => 'Tag it.', output => ['a', 'b'])")
    backend = scripted(con, lambda t: final("a" if t.input["note"].endswith("1") else "b"))
    table = con.sql("SELECT note, answer FROM AGENT('tag', input => (SELECT DISTINCT note FROM "
                    "customers)) ORDER BY note").to_pylist()
    tags = {r["note"]: r["answer"] for r in table}
    lateral = con.sql("SELECT c.id, r.answer FROM customers c, LATERAL AGENT('tag', input => "
                      "(SELECT c.note AS note)) AS r WHERE c.segment = 1 ORDER BY c.id").to_pylist()
    scalar = con.sql("SELECT id, AGENT_CALL('tag', {'note': note}) AS tag FROM customers "
                     "WHERE segment = 1 ORDER BY id").to_pylist()
    notes = {r["id"]: r["note"] for r in con.sql("SELECT id, note FROM customers").to_pylist()}
    assert [(r["id"], r["answer"]) for r in lateral] == [(i, tags[notes[i]]) for i in (1, 3, 5)]
    assert [(r["id"], r["tag"]) for r in scalar] == [(i, tags[notes[i]]) for i in (1, 3, 5)]
    # The outer WHERE reached the agent's input: only segment-1 notes were asked about.
    assert backend.batches[1:] == [3, 3]


def test_agent_call_without_from_and_with_object_answers(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT judge WITH (instructions => 'x', "
            "output => '{\"ok\": \"boolean\", \"why\": \"string\"}')")
    scripted(con, lambda t: final({"ok": True, "why": t.input["q"]}))
    t = con.sql("SELECT AGENT_CALL('judge', {'q': 'hello'}) AS v, "
                "AGENT_CALL('judge', {'q': 'hi'}).why AS w")
    assert t.to_pylist() == [{"v": {"ok": True, "why": "hello"}, "w": "hi"}]


def test_an_array_answer_gives_one_row_per_item(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT split WITH (instructions => 'x', output => "
            "'{\"type\": \"array\", \"items\": {\"type\": \"object\", \"properties\": "
            "{\"word\": {\"type\": \"string\"}}}}')")
    scripted(con, lambda t: final([{"word": w} for w in t.input["s"].split()]))
    t = con.sql("SELECT s, word FROM AGENT('split', input => (SELECT * FROM (VALUES ('a b c'), "
                "('d')) v(s))) ORDER BY word")
    assert t.to_pylist() == [
        {"s": "a b c", "word": "a"}, {"s": "a b c", "word": "b"}, {"s": "a b c", "word": "c"},
        {"s": "d", "word": "d"},
    ]


def test_explain_shows_agent_nodes_with_their_tools(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x', tools => [orders_of], max_steps => 3, "
            "output => 'BOOLEAN')")
    plan = con.explain("SELECT id, answer FROM AGENT('a', input => (SELECT id FROM customers "
                       "WHERE segment = 1), max_steps => 2) AS r WHERE r.answer")
    # Cost annotations ("  [est ...]") and optimizer summaries belong to the optimizer's tests.
    lines = [re.sub(r"  \[est .*\]$", "", line) for line in plan.splitlines()]
    assert lines[:5] == [
        "DuckDBQuery: SELECT id, answer FROM __halo_agent_0 AS r WHERE r.answer",
        "  input __halo_agent_0:",
        "    AgentCall: a(model=default, max_steps=2, max_tokens=256, temperature=0.0, seed=0, "
        "tools=['orders_of']) answer=[answer BOOLEAN] input=['id']",
        "      tool orders_of: SQL 'SELECT order_id, price FROM orders WHERE customer_id = :cid "
        "ORDER BY order_id' tables=['orders'] timeout=10s parameters={\"type\": \"object\", "
        "\"properties\": {\"cid\": {\"type\": \"integer\"}}, \"required\": [\"cid\"], "
        "\"additionalProperties\": false} description='The orders of a customer.'",
        "      DuckDBQuery: SELECT id FROM customers WHERE segment = 1",
    ]


def test_agent_call_errors_name_the_problem(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x')")
    with pytest.raises(halo_sql.BinderError, match="unknown agent 'nobody'"):
        con.sql("SELECT * FROM AGENT('nobody', input => (SELECT 1 AS x))")
    with pytest.raises(halo_sql.BinderError, match="takes one input"):
        con.sql("SELECT * FROM AGENT('a')")
    with pytest.raises(halo_sql.BinderError, match=r"input column\(s\) \['error'\]"):
        con.sql("SELECT * FROM AGENT('a', input => (SELECT 1 AS error))")
    with pytest.raises(halo_sql.BinderError, match="unknown option"):
        con.sql("SELECT * FROM AGENT('a', input => (SELECT 1 AS x), colour => 'red')")
    with pytest.raises(halo_sql.Error, match="nope"):
        con.sql("SELECT * FROM AGENT('a', input => (SELECT nope FROM customers))")


# -- multi-agent patterns (the SQL of docs/agents.md) ---------------------------------------------------
def test_voting_and_reflection_run_as_agent_queries(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT voter WITH (instructions => 'Vote.', output => ['keep', 'drop'])")
    con.sql("CREATE AGENT writer WITH (instructions => 'Draft.', tools => [orders_of])")
    con.sql("CREATE AGENT critic WITH (instructions => 'Review.', "
            "output => '{\"ok\": \"boolean\", \"revision\": \"string\"}')")
    voting = con.sql("""
        WITH votes AS (
            SELECT id, answer FROM AGENT('voter', input => (SELECT id, note FROM customers), seed => 1)
            UNION ALL
            SELECT id, answer FROM AGENT('voter', input => (SELECT id, note FROM customers), seed => 2)
            UNION ALL
            SELECT id, answer FROM AGENT('voter', input => (SELECT id, note FROM customers), seed => 3))
        SELECT id, mode(answer) AS majority, count(*) AS votes,
               LLM_AGG('Summarize the votes.', answer) AS summary
        FROM votes GROUP BY id ORDER BY id""")
    assert voting.num_rows == 6 and set(voting.column("votes").to_pylist()) == {3}
    assert set(voting.column("majority").to_pylist()) <= {"keep", "drop"}
    reflection = con.sql("""
        SELECT d.id, d.answer AS draft, c.ok, coalesce(c.revision, d.answer) AS final
        FROM AGENT('writer', input => (SELECT id, note FROM customers)) AS d
        JOIN AGENT('critic', input => (
            SELECT id, answer AS draft FROM AGENT('writer', input => (SELECT id, note FROM customers))
        )) AS c USING (id)
        ORDER BY d.id""")
    assert reflection.num_rows == 6
    plan = con.session.plan("""
        SELECT d.id FROM AGENT('writer', input => (SELECT id, note FROM customers)) AS d
        JOIN AGENT('critic', input => (
            SELECT id, answer AS draft FROM AGENT('writer', input => (SELECT id, note FROM customers))
        )) AS c USING (id)""")
    agents = {id(n): n.agent.name for n in plan.root.walk() if isinstance(n, AgentCall)}
    assert sorted(agents.values()) == ["critic", "writer"]  # the drafts: one node, read twice


def test_object_answers_keep_their_declared_field_order(con: halo_sql.Connection) -> None:
    con.sql("CREATE AGENT a WITH (instructions => 'x', "
            "output => '{\"verdict\": \"string\", \"confidence\": \"number\", \"because\": \"string\"}')")
    scripted(con, lambda t: final({"because": "b", "verdict": "v", "confidence": 0.5}))
    t = con.sql("SELECT * FROM AGENT('a', input => (SELECT 1 AS id))")
    assert t.column_names == ["id", "verdict", "confidence", "because", "steps", "tool_calls",
                              "error"]
