"""Differential tests: halo-sql against DuckDB, against itself, and lifting against the UDF path.

1. A statement without LLM calls gives exactly DuckDB's result (values, order, names, types).
2. In a statement with LLM calls, the relational columns are DuckDB's: dropping the LLM columns
   from the result gives what DuckDB returns for the statement without them.
3. LLM answers are deterministic: the same statement gives the same table, run after run and
   connection after connection.
4. Lifting a call into LLM operators and leaving it to DuckDB as a function are two plans of the
   same query: they give the same answers (`PlannerOptions(lift_llm_calls=False)` switches
   lifting off; a correlated subquery forces the function path for one call).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import halo_sql
from halo_sql.frontends.dbapi import Connection
from halo_sql.logical.builder import PlannerOptions

# -- 1. no LLM calls: exactly DuckDB ----------------------------------------------------------------

PLAIN_TPCH = {
    "q1_pricing_summary": """
        SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
               sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, avg(l_discount) AS avg_disc,
               count(*) AS count_order
        FROM lineitem WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL 90 DAY
        GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus""",
    "q3_shipping_priority": """
        SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate, o_shippriority
        FROM customer, orders, lineitem
        WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey
          AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15'
        GROUP BY l_orderkey, o_orderdate, o_shippriority
        ORDER BY revenue DESC, o_orderdate, l_orderkey LIMIT 10""",
    "q6_forecast_revenue": """
        SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem
        WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01'
          AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24""",
    "cte_and_window": """
        WITH big AS (SELECT c_nationkey, c_name, c_acctbal FROM customer WHERE c_acctbal > 9000)
        SELECT n_name, c_name, rank() OVER (PARTITION BY n_name ORDER BY c_acctbal DESC) AS r
        FROM big JOIN nation ON n_nationkey = c_nationkey ORDER BY n_name, r, c_name""",
    "llm_named_in_a_string_only": """
        SELECT 'call llm(''x'') later' AS note, count(*) AS n FROM nation""",
    "columns_named_like_functions": """
        SELECT n_name AS llm_filter, n_regionkey AS llm FROM nation ORDER BY 1""",
}


@pytest.mark.parametrize("sql", PLAIN_TPCH.values(), ids=PLAIN_TPCH.keys())
def test_statements_without_llm_calls_give_exactly_duckdbs_result(tpch: Connection, sql: str) -> None:
    ours = tpch.sql(sql)
    theirs = tpch.duckdb.sql(sql).to_arrow_table()
    assert ours is not None
    assert ours.schema == theirs.schema
    assert ours.equals(theirs)
    assert tpch.stats()["llm_requests"] == 0


# -- 2. the relational columns of LLM statements are DuckDB's ---------------------------------------

WITH_LLM_TPCH = {
    "join_filter_order_limit": (
        "SELECT c.c_name, o.o_orderkey, o.o_totalprice{llm} FROM customer c "
        "JOIN orders o ON c.c_custkey = o.o_custkey WHERE c.c_mktsegment = 'BUILDING' "
        "AND o.o_totalprice > 250000 ORDER BY o.o_totalprice DESC, o.o_orderkey LIMIT 15",
        ", LLM('Summarize {o.o_comment}') AS s",
    ),
    "offset": (
        "SELECT o_orderkey, o_orderdate{llm} FROM orders ORDER BY o_orderdate, o_orderkey "
        "LIMIT 5 OFFSET 7",
        ", LLM_CLASSIFY('Tone: {o_comment}', ['calm', 'angry']) AS tone",
    ),
    "group_by_with_llm_inside_aggregate": (
        "SELECT n.n_name, count(*) AS customers{llm} FROM customer c "
        "JOIN nation n ON n.n_nationkey = c.c_nationkey WHERE c.c_acctbal > 9000 "
        "GROUP BY n.n_name ORDER BY n.n_name",
        ", sum(CASE WHEN LLM_FILTER('Happy? {c.c_comment}') THEN 1 ELSE 0 END) AS happy",
    ),
    "cte_and_subquery": (
        "WITH cheap AS (SELECT p_partkey, p_name, p_retailprice FROM part WHERE p_size = 1) "
        "SELECT p_name, p_retailprice{llm} FROM cheap "
        "WHERE p_retailprice > (SELECT avg(p_retailprice) FROM part) ORDER BY p_name",
        ", LLM('Describe {p_name}') AS d",
    ),
    "star_expansion": (
        "SELECT *{llm} FROM supplier WHERE s_nationkey = 3 ORDER BY s_suppkey",
        ", LLM_EXTRACT('Facts in {s_comment}', '{\"polite\": \"boolean\"}') AS facts",
    ),
}


@pytest.mark.parametrize(("sql", "llm"), WITH_LLM_TPCH.values(), ids=WITH_LLM_TPCH.keys())
def test_relational_columns_of_llm_statements_are_duckdbs(tpch: Connection, sql: str, llm: str) -> None:
    ours = tpch.sql(sql.format(llm=llm))
    theirs = tpch.duckdb.sql(sql.format(llm="")).to_arrow_table()
    assert ours is not None
    assert ours.select(theirs.column_names).equals(theirs)
    assert ours.num_columns == theirs.num_columns + 1


# -- 3. determinism -----------------------------------------------------------------------------------

DETERMINISTIC = [
    "SELECT o_orderkey, LLM('Summarize {o_comment}') AS s, "
    "LLM_FILTER('Urgent? {o_comment}') AS urgent FROM orders "
    "WHERE o_orderdate < DATE '1992-01-15' ORDER BY o_orderkey",
    "SELECT n.n_name, LLM_AGG('Summarize the customers', c.c_comment) AS s FROM customer c "
    "JOIN nation n ON n.n_nationkey = c.c_nationkey WHERE c.c_acctbal > 9000 "
    "GROUP BY n.n_name ORDER BY n.n_name",
]


@pytest.mark.parametrize("sql", DETERMINISTIC)
def test_llm_answers_are_the_same_run_after_run(tpch: Connection, tpch_dir: Path, sql: str) -> None:
    from halo_sql.datasets.tpch import load_tpch

    first = tpch.sql(sql)
    assert first is not None and first.num_rows > 0
    assert tpch.sql(sql) == first
    with halo_sql.connect(backend="sim") as fresh:
        load_tpch(fresh.session.connection, 0.01, tpch_dir.parent, tables=("orders", "customer", "nation"))
        assert fresh.sql(sql) == first


# -- 4. lifting vs the DuckDB-function path -------------------------------------------------------------

LIFTABLE_SHOP = {
    "select": "SELECT id, LLM('Summarize: {text}') AS s FROM reviews ORDER BY id",
    "where": "SELECT id FROM reviews WHERE stars < 4 AND LLM_FILTER('Late? {text}') ORDER BY id",
    "where_or": "SELECT id FROM reviews WHERE stars = 5 OR NOT LLM_FILTER('Late? {text}') ORDER BY id",
    "limit": "SELECT id, LLM('Summarize: {text}') AS s FROM reviews WHERE LLM_FILTER('Late? {text}') "
    "ORDER BY id LIMIT 2",
    "join_on": "SELECT r.id, p.name FROM reviews r JOIN products p ON p.id = r.product_id "
    "AND LLM_FILTER('Is {r.text} about a {p.name}?') ORDER BY r.id",
    "case": "SELECT id, CASE WHEN LLM_FILTER('Happy? {text}') THEN 'y' ELSE 'n' END AS c FROM reviews "
    "ORDER BY id",
    "order_by": "SELECT id FROM reviews ORDER BY LLM_CLASSIFY('Tone {text}', ['calm', 'angry']), id",
    "group_by": "SELECT LLM_CLASSIFY('Tone {text}', ['calm', 'angry']) AS t, count(*) AS n "
    "FROM reviews GROUP BY 1 ORDER BY 1",
    "aggregate": "SELECT product_id, avg(CASE WHEN LLM_FILTER('Late? {text}') THEN 1 ELSE 0 END) AS a "
    "FROM reviews GROUP BY 1 ORDER BY 1",
    "extract": "SELECT id, LLM_EXTRACT('Facts {text}', '{\"late\": \"boolean\", \"days\": \"integer\"}') "
    "AS f FROM reviews ORDER BY id",
    "flockmtl": "SELECT id, llm_complete({'model_name': 'default'}, {'prompt': 'Summarize'}, "
    "{'review': text, 'stars': stars}) AS s FROM reviews ORDER BY id",
    "options": "SELECT id, LLM('Summarize: {text}', max_tokens => 4, temperature => 0.3) AS s "
    "FROM reviews ORDER BY id",
    "cte": "WITH late AS (SELECT id, text FROM reviews WHERE LLM_FILTER('Late? {text}')) "
    "SELECT id, LLM('Summarize: {text}') AS s FROM late ORDER BY id",
    "derived": "SELECT * FROM (SELECT id, LLM_FILTER('Late? {text}') AS late FROM reviews) AS d "
    "WHERE d.late ORDER BY id",
}


@pytest.fixture
def unlifted(shop_sql: str) -> Iterator[Connection]:
    """The same database as `shop` with lifting switched off: every call is a DuckDB function."""
    con = halo_sql.connect(backend="sim")
    con.session.planner_options = PlannerOptions(lift_llm_calls=False)
    con.sql(shop_sql)
    yield con
    con.close()


@pytest.mark.parametrize("sql", LIFTABLE_SHOP.values(), ids=LIFTABLE_SHOP.keys())
def test_lifting_and_duckdb_functions_give_the_same_answers(
    shop: Connection, unlifted: Connection, sql: str
) -> None:
    lifted_plan = shop.explain(sql)
    unlifted_plan = unlifted.explain(sql)
    assert "LLMMap" in lifted_plan or "LLMFilter" in lifted_plan
    assert "LLMMap" not in unlifted_plan and "LLMFilter" not in unlifted_plan
    lifted = shop.sql(sql)
    assert lifted is not None
    assert unlifted.sql(sql) == lifted
    assert lifted.num_rows > 0


def test_a_call_in_a_correlated_subquery_answers_like_the_lifted_call(shop: Connection) -> None:
    lifted = shop.sql("SELECT id, LLM('Summarize: {text}') AS s FROM reviews ORDER BY id")
    correlated_sql = (
        "SELECT r.id, (SELECT LLM('Summarize: {text}') FROM reviews r2 WHERE r2.id = r.id) AS s "
        "FROM reviews r ORDER BY r.id"
    )
    assert "udf __halo_fn_0" in shop.explain(correlated_sql)
    assert shop.sql(correlated_sql) == lifted


def test_lifting_and_functions_agree_on_tpch(tpch: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    sql = (
        "SELECT c.c_name, o.o_orderkey, LLM_CLASSIFY('Priority of {o.o_comment}', ['high', 'low']) AS p, "
        "LLM('Summarize {c.c_comment}', max_tokens => 8) AS s "
        "FROM customer c JOIN orders o ON c.c_custkey = o.o_custkey "
        "WHERE o.o_orderdate < DATE '1992-01-15' AND LLM_FILTER('Is {o.o_comment} urgent?') "
        "ORDER BY o.o_orderkey"
    )
    lifted = tpch.sql(sql)
    lifted_requests = tpch.stats()["llm_requests"]
    monkeypatch.setattr(tpch.session, "planner_options", PlannerOptions(lift_llm_calls=False))
    unlifted = tpch.sql(sql)
    assert isinstance(lifted, pa.Table) and lifted.num_rows > 10
    assert unlifted == lifted
    assert tpch.stats()["llm_requests"] == lifted_requests  # same prompts, just another operator
