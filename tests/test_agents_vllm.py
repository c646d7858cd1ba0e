"""Agents on the real vLLM engine (tiny random-weight model): replies are constrained by JSON
schemas, so every tool call parses; a row either answers within its schema or ends with `error`
set. The model is random, so these tests pin validity, never content."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import halo_sql
from halo_sql.agents.spec import ToolSpec
from halo_sql.executor.agent_loop import parse_reply, reply_schema
from halo_sql.llm.base import DecodingParams, LLMRequest, OutputSpec

pytestmark = pytest.mark.vllm

LABELS = ["low", "high"]
ORDERS_PARAMETERS = '{"cid": {"type": "integer", "minimum": 0, "maximum": 9}}'


@pytest.fixture(scope="module")
def con(vllm_backend: object, tiny_model_dir: Path) -> halo_sql.Connection:
    con = halo_sql.connect(model=str(tiny_model_dir))
    assert con.session.backend("default") is vllm_backend, "must share the session's engine"
    con.sql(f"""
        CREATE TABLE customers AS SELECT range AS id, 'note ' || range AS note FROM range(8);
        CREATE TABLE orders AS SELECT range AS order_id, range % 8 AS customer_id FROM range(32);
        CREATE TOOL orders_of AS SQL 'SELECT order_id FROM orders WHERE customer_id = :cid'
            WITH (parameters => '{ORDERS_PARAMETERS}');
        CREATE AGENT analyst WITH (instructions => 'Judge the risk of the customer.',
            tools => [orders_of], max_steps => 3, max_tokens => 48, output => ['low', 'high']);
    """)
    return con


def test_an_agent_query_runs_and_every_row_ends_cleanly(con: halo_sql.Connection) -> None:
    t = con.sql("""
        SELECT id, answer, steps, tool_calls, error
        FROM AGENT('analyst', input => (SELECT id, note FROM customers), temperature => 1.0)
        ORDER BY id""")
    assert t.num_rows == 8
    parameters = {"type": "object", "properties": json.loads(ORDERS_PARAMETERS)}
    invalid_rows = 0
    for row in t.to_pylist():
        assert 1 <= row["steps"] <= 3
        if row["error"] is None:
            assert row["answer"] in LABELS
        else:
            assert row["answer"] is None
            assert any(k in row["error"] for k in ("invalid reply", "max_steps", "model error"))
            invalid_rows += "invalid reply" in row["error"]
        for tool_call in row["tool_calls"]:
            # Structured outputs: the model's arguments always fit the tool's parameters.
            assert tool_call["tool"] == "orders_of"
            jsonschema.validate(json.loads(tool_call["arguments"]), parameters)
            assert tool_call["ok"] and isinstance(json.loads(tool_call["result"]), list)
    stats = con.stats()
    assert stats["agent_steps"] >= 1
    assert stats["invalid_answers"] >= invalid_rows
    assert stats["tool_errors"] == 0


def test_structured_tool_calls_parse(vllm_backend: object) -> None:
    tools = [
        ToolSpec.create("orders_of", "sql", "SELECT 1 FROM orders WHERE customer_id = :cid",
                        {"parameters": ORDERS_PARAMETERS}),
        ToolSpec.create("search", "http", "http://127.0.0.1:9/x",
                        {"parameters": '{"q": {"type": "string", "maxLength": 12}}'}),
    ]
    answer = {"type": "string", "enum": LABELS}
    # Tool calls only (the final branch left out), so every reply must be a tool call.
    schema = {"anyOf": reply_schema(tools, answer)["anyOf"][:-1]}
    requests = [
        LLMRequest(f"Call one tool for customer {i}.", OutputSpec.json(schema),
                   DecodingParams(max_tokens=64, temperature=1.0, seed=i))
        for i in range(8)
    ]
    responses = vllm_backend.generate(requests)  # type: ignore[attr-defined]
    parsed = 0
    for response in responses:
        assert response.error is None
        if response.finish_reason == "length":
            continue  # cut off by max_tokens: not a parse failure of a finished reply
        reply = parse_reply(response.text, {t.name: t for t in tools}, answer)
        assert reply.tool in ("orders_of", "search")
        parsed += 1
    assert parsed >= 1
