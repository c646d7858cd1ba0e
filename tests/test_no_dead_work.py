"""No dead work: the model is asked only about rows whose answer the query can use.

A consumer's filters, LIMITs and projections reach into the LLM CTEs and derived tables it reads;
inputs nothing reads are never computed or priced; a chain of CTEs is one chain of operators
(`source -> LLMMap -> row-local SELECT -> LLMMap -> ...`), each input appearing once. The table
`orders` has 1,000 rows; `cust = 0` keeps 10 of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import halo_sql
from halo_sql.frontends.dbapi import Connection
from halo_sql.logical import plan as lp
from halo_sql.logical.sqlexpr import row_local_select

SUMMARIES = "WITH s AS (SELECT k, cust, LLM('Summarize: {c}') AS summary FROM orders) "


@pytest.fixture
def orders() -> Iterator[Connection]:
    con = halo_sql.connect(backend="sim")
    con.sql(
        "CREATE TABLE orders AS SELECT i AS k, i % 100 AS cust, 'Order ' || i || ' came late' AS c "
        "FROM range(1000) AS t(i)"
    )
    yield con
    con.close()


def _requests(con: Connection, sql: str) -> tuple[int, float]:
    """(requests the run made, requests the chosen plan was priced at)."""
    con.sql(sql)
    made = con.stats()["llm_requests"]
    report = con.session.plan(sql).optimizer
    return made, report.total.requests


def test_a_filter_on_an_llm_cte_reaches_the_rows_the_cte_asks_about(orders: Connection) -> None:
    sql = (
        SUMMARIES + "SELECT k, LLM_CLASSIFY('Tone of: {summary}', ['calm','upset']) AS tone "
        "FROM s WHERE cust = 0"
    )
    made, priced = _requests(orders, sql)
    assert made == 20  # 10 summaries + 10 tones (was 1,010: the CTE over every order)
    assert priced == pytest.approx(20)
    assert orders.sql(sql).num_rows == 10


def test_a_limit_on_an_llm_cte_reaches_the_rows_the_cte_asks_about(orders: Connection) -> None:
    sql = SUMMARIES + "SELECT k, LLM('Reply to: {summary}') AS r FROM s LIMIT 3"
    made, priced = _requests(orders, sql)
    assert made == 6  # 3 summaries + 3 replies (was 1,003)
    assert priced == pytest.approx(6)


def test_an_llm_cte_nothing_reads_is_never_computed_or_priced(orders: Connection) -> None:
    sql = (
        SUMMARIES + ", titles AS (SELECT k, LLM('Title: {c}') AS t FROM orders WHERE cust = 0) "
        "SELECT k, t FROM titles"
    )
    made, priced = _requests(orders, sql)
    assert made == 10 and priced == pytest.approx(10)
    assert "Summarize" not in orders.explain(sql)


def test_columns_of_an_llm_cte_nobody_reads_are_never_asked_for(orders: Connection) -> None:
    sql = (
        "WITH s AS (SELECT k, cust, LLM('Summarize: {c}') AS summary, LLM('Title: {c}') AS title "
        "FROM orders) SELECT k, title FROM s WHERE cust = 3"
    )
    made, _ = _requests(orders, sql)
    assert made == 10
    assert "Summarize" not in orders.explain(sql)


def test_the_same_answers_with_every_rule_off(orders: Connection) -> None:
    sqls = [
        SUMMARIES + "SELECT k, LLM_CLASSIFY('Tone of: {summary}', ['calm','upset']) AS tone "
        "FROM s WHERE cust = 0 ORDER BY k",
        SUMMARIES + "SELECT k, LLM('Reply to: {summary}') AS r FROM s ORDER BY k LIMIT 3",
    ]
    optimized = [orders.sql(sql) for sql in sqls]
    orders.sql("SET disable_rules = 'all'")
    assert [orders.sql(sql) for sql in sqls] == optimized


# -- chains ------------------------------------------------------------------------------------


def chain_of(plan: lp.PlanNode) -> list[lp.PlanNode]:
    """The operators from the root down, asserting the plan is one chain: every DuckDB step
    above the source reads exactly one input, and every step between two LLM operators is a
    row-local SELECT over that input."""
    chain: list[lp.PlanNode] = []
    node: lp.PlanNode | None = plan
    while node is not None:
        chain.append(node)
        children = node.children
        assert len(children) <= 1, f"not a chain: {lp.explain(node).splitlines()[0]}"
        node = children[0] if children else None
    llm_positions = [i for i, n in enumerate(chain) if isinstance(n, lp.LLMMap | lp.LLMFilter)]
    for i, node in enumerate(chain):
        if isinstance(node, lp.DuckDBQuery) and llm_positions and llm_positions[0] < i < llm_positions[-1]:
            assert row_local_select(node.sql, node.inputs[0].name) is not None, node.sql
    return chain


@pytest.mark.parametrize("key", ["W1", "W2"])
def test_cte_chains_of_the_benchmark_are_single_chains(tpch: Connection, key: str) -> None:
    from tpc_agentic_bench.workloads import build_workload

    workload = build_workload(key, tpch.session.connection, 1)
    plan = tpch.session.plan(workload.queries[0])
    chain = chain_of(plan.root)
    maps = [n for n in chain if isinstance(n, lp.LLMMap)]
    assert len(maps) == (2 if key == "W1" else 3)  # W1's first step is an LLM_AGG in DuckDB
    priced = plan.optimizer.total.requests
    tpch.sql(workload.queries[0])
    assert priced == pytest.approx(tpch.stats()["llm_requests"], rel=0.5 if key == "W1" else 0)


# -- batches ---------------------------------------------------------------------------------------


def test_a_batch_over_a_shared_llm_cte_asks_only_what_its_queries_read(orders: Connection) -> None:
    """Each query's filter reaches its own copy of the CTE; identical requests of different
    queries are still sent once, so the batch asks about the union of the rows they read."""
    panel = SUMMARIES + "SELECT k, summary FROM s WHERE cust = ? ORDER BY k"
    params = [[c] for c in (0, 1, 2, 0)]
    batch = orders.execute_batch(panel, params)
    assert not batch.errors
    assert batch.stats()["llm_requests"] == 30  # three customers' 10 orders, not 1,000
    assert [t.to_pylist() for t in batch.tables] == [
        orders.sql(panel, p).to_pylist() for p in params
    ]
