"""The cost model knows agents: requests estimated from rows and expected steps."""

from __future__ import annotations

import re

import halo_sql


def _estimated_requests(con: halo_sql.Connection, sql: str) -> int:
    line = next(line for line in con.explain(sql).splitlines() if "AgentCall:" in line)
    match = re.search(r"requests=(\d+)", line)
    assert match, line
    return int(match.group(1))


def test_agent_requests_are_rows_times_expected_steps() -> None:
    con = halo_sql.connect(backend="sim")
    con.sql("CREATE TABLE customers AS SELECT range AS id FROM range(20)")
    con.sql("CREATE AGENT quick WITH (instructions => 'Answer.', max_steps => 4)")
    con.sql("CREATE AGENT careful WITH (instructions => 'Answer.', max_steps => 4, steps_hint => 3)")
    query = "SELECT * FROM AGENT('{}', input => (SELECT id FROM customers))"
    assert _estimated_requests(con, query.format("quick")) == 20 * 2  # half of max_steps
    assert _estimated_requests(con, query.format("careful")) == 20 * 3  # the declared hint
