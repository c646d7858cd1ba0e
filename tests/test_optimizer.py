"""The optimizer as a whole: the Cascades search, equivalence with every rule on and off, the cost
model's ranking against measured cost, EXPLAIN, sampled selectivities, settings."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

import halo_sql
from halo_sql.llm.base import OutputSpec
from halo_sql.logical import plan as lp
from halo_sql.logical.llm_call import LLMCall, LLMFunction
from halo_sql.optimizer import (
    BATCH_DISABLED,
    OptimizerSettings,
    estimate,
    for_batch,
    optimize,
    rule_names,
)
from halo_sql.optimizer.cost import Required
from halo_sql.optimizer.memo import GroupRef, Memo
from halo_sql.optimizer.search import Search
from halo_sql.optimizer.stats import NullContext
from halo_sql.parser.template import parse_template

SETUP = (Path(__file__).parent / "golden" / "rules" / "setup.sql").read_text()
ALL_OFF = "SET disable_rules = 'all'"


@pytest.fixture(autouse=True)
def _no_calibrated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans must not depend on profiles calibrated on this machine."""
    monkeypatch.setenv("HALO_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALO_OPTIMIZER_STRICT", "1")


@pytest.fixture
def con() -> Iterator[halo_sql.Connection]:
    connection = halo_sql.connect(backend="sim")
    connection.sql(SETUP)
    yield connection
    connection.close()


def _call(function: LLMFunction, template: str, output: OutputSpec) -> LLMCall:
    return LLMCall(function, parse_template(template), "default", output=output)


def _rows(table: Any, ordered: bool) -> list[Any]:
    rows = [tuple(r.values()) for r in table.to_pylist()]
    return rows if ordered else sorted(rows, key=repr)


# -- the memo and the search ---------------------------------------------------------------------


def test_the_memo_keeps_one_expression_per_fingerprint() -> None:
    memo = Memo()
    source = lp.DuckDBQuery("SELECT 1 AS a")
    first = memo.insert(lp.Limit(lp.Project(source, ("a",)), 3))
    again = memo.insert(lp.Limit(lp.Project(source, ("a",)), 3))
    assert again is first
    assert memo.expression_count == 3 and len(memo.groups) == 3
    # a rewrite into an existing group that the memo already knows adds nothing
    assert memo.insert(lp.Project(GroupRef(0), ("a",)), group=2) is memo.group(1).exprs[0]


def test_a_rewrite_over_its_own_group_is_not_a_new_expression() -> None:
    """An identity projection of a group, inserted into that group, would be a cycle."""
    memo = Memo()
    source = lp.DuckDBQuery("SELECT 1 AS a")
    root = memo.insert(lp.Limit(source, 3))
    again = memo.insert(lp.Project(GroupRef(root.group), ("a",)), group=root.group)
    assert again is root and memo.expression_count == 2


def test_rules_fire_once_per_expression_and_are_recorded() -> None:
    from halo_sql.optimizer.cost import CostModel
    from halo_sql.optimizer.functions import HELPERS
    from halo_sql.optimizer.rules import load_registry
    from halo_sql.optimizer.stats import Statistics

    filter_a = _call(LLMFunction.FILTER, "A? {x}", OutputSpec.boolean())
    filter_b = _call(LLMFunction.FILTER, "B? {x}", OutputSpec.boolean())
    source = lp.DuckDBQuery('SELECT \'t\' AS "x"')
    plan = lp.LLMFilter(lp.LLMFilter(source, filter_a, ("x",)), filter_b, ("x",))
    search = Search(load_registry().rules, HELPERS, CostModel(Statistics(NullContext())))
    root = search.optimize(plan)
    exprs = search.memo.group(root).exprs
    assert len(exprs) == 2  # both orders, once each (swapping back finds the first again)
    assert exprs[1].lineage == {"reorder_llm_filters"}
    assert all("reorder_llm_filters" in e.fired for e in exprs)
    assert Required() in search.memo.group(root).winners


class _Answers(NullContext):
    """A context whose model says yes to a fixed share of rows per template (for ranking)."""

    sample_rows = 20

    def __init__(self, yes_share: dict[str, float]) -> None:
        super().__init__()
        self.yes_share = yes_share

    def run_sql(self, sql: str) -> list[tuple[Any, ...]] | None:
        return duckdb.sql(sql).fetchall()

    def ask(self, call: LLMCall, rows: Sequence[Sequence[str]]) -> list[Any] | None:
        share = self.yes_share[str(call.template)]
        return [i < share * len(rows) for i in range(len(rows))]


def test_llm_predicates_run_in_rank_order_of_cost_over_one_minus_selectivity() -> None:
    source = lp.DuckDBQuery(
        "SELECT 'review ' || range AS \"x\", 'n' || (range % 7) AS \"y\" FROM range(400)"
    )
    cheap_unselective = _call(LLMFunction.FILTER, "Late? {x}", OutputSpec.boolean())
    costly_selective = _call(
        LLMFilter_template := LLMFunction.FILTER,
        "Compare {x} with {y}, {y} and {x}: do they describe one order?",
        OutputSpec.boolean(),
    )
    del LLMFilter_template
    shares = {str(cheap_unselective.template): 0.9, str(costly_selective.template): 0.1}
    plan = lp.StatementPlan(
        lp.LLMFilter(lp.LLMFilter(source, cheap_unselective, ("x",)), costly_selective, ("x", "y", "y", "x"))
    )
    best = optimize(plan, _Answers(shares), OptimizerSettings())
    report = best.optimizer
    first = best.root.child  # the filter that runs first (lowest)
    assert isinstance(first, lp.LLMFilter) and first.call == costly_selective
    # and that is the rank order: cost per row / (1 - selectivity) is smaller for it
    per_row = {
        call: estimate(lp.LLMFilter(source, call, args)).seconds
        for call, args in ((cheap_unselective, ("x",)), (costly_selective, ("x", "y", "y", "x")))
    }
    sel = {cheap_unselective: (18 + 1) / 22, costly_selective: (2 + 1) / 22}  # smoothed samples
    rank = {call: per_row[call] / (1 - sel[call]) for call in per_row}
    assert rank[costly_selective] < rank[cheap_unselective]
    assert report.search.fired.get("reorder_llm_filters")


# -- equivalence -----------------------------------------------------------------------------------

EQUIVALENCE = [
    ("filter_then_map", "SELECT id, LLM('Summarize {text}') AS s FROM reviews "
     "WHERE stars <= 2 AND LLM_FILTER('Late? {text}') ORDER BY id", True),
    ("two_predicates", "SELECT id FROM reviews WHERE LLM_FILTER('Late? {text}') AND "
     "LLM_CLASSIFY('Topic of {text}', ['delivery', 'quality', 'price']) = 'delivery' ORDER BY id", True),
    ("three_predicates", "SELECT id, stars FROM reviews WHERE LLM_FILTER('Late? {text}') AND "
     "LLM_FILTER('Do {text} and {note} agree?') AND LLM_CLASSIFY('Mood of {text}', ['good', 'bad']) "
     "= 'bad' AND id % 2 = 0", False),
    ("cte_filter", "WITH t AS (SELECT id, stars, LLM('Summarize {text}') AS s FROM reviews) "
     "SELECT id, s FROM t WHERE stars = 3 ORDER BY id", True),
    ("cte_count", "WITH t AS (SELECT id, LLM('Summarize {text}') AS s FROM reviews) "
     "SELECT count(*) AS n FROM t", True),
    ("cte_limit_ordered_source", "WITH t AS (SELECT id, LLM('Summarize {text}') AS s FROM reviews) "
     "SELECT * FROM t WHERE id < 30 ORDER BY id", True),
    ("derived_bool", "SELECT * FROM (SELECT id, LLM_FILTER('Late? {text}') AS late FROM reviews) AS d "
     "WHERE d.late AND d.id < 50 ORDER BY id", True),
    ("join_after_llm", "WITH t AS (SELECT id, product, LLM('Summarize {text}') AS s FROM reviews) "
     "SELECT t.id, p.category, t.s FROM t JOIN products AS p ON p.name = t.product "
     "WHERE p.category = 'office' AND t.id < 80 ORDER BY t.id", True),
    ("group_by_llm", "SELECT LLM_CLASSIFY('Topic of {text}', ['delivery', 'quality']) AS topic, "
     "count(*) AS n FROM reviews WHERE stars > 3 GROUP BY ALL ORDER BY topic", True),
    ("limit_over_filter", "SELECT id FROM reviews WHERE LLM_FILTER('Late? {text}') "
     "ORDER BY id LIMIT 4", True),
    ("same_derived_twice", "SELECT a.id, a.s, b.s AS s2 FROM (SELECT id, LLM('Summarize {text}') AS s "
     "FROM reviews WHERE id < 9) AS a JOIN (SELECT id, LLM('Summarize {text}') AS s FROM reviews "
     "WHERE id < 9) AS b ON a.id = b.id ORDER BY a.id", True),
    ("unused_map_in_cte", "WITH t AS (SELECT id, note, LLM('Summarize {text}') AS s, "
     "LLM('Title of {text}') AS title FROM reviews WHERE id < 40) SELECT id, title FROM t "
     "WHERE note = 'note 3' ORDER BY id", True),
    ("aggregate_udf", "SELECT product, LLM_AGG('Summarize the reviews', text) AS summary "
     "FROM reviews WHERE id < 30 GROUP BY product ORDER BY product", True),
    ("null_arguments", "WITH t AS (SELECT id, CASE WHEN id % 3 = 0 THEN NULL ELSE text END AS txt "
     "FROM reviews) SELECT id, LLM('Summarize {txt}') AS s FROM t WHERE id < 20 ORDER BY id", True),
    ("llm_filter_into_cte", "WITH s AS (SELECT id, text, LLM('Summarize {text}') AS summary "
     "FROM reviews WHERE id < 60) SELECT id, summary FROM s WHERE LLM_FILTER('Late? {text}') "
     "AND id % 2 = 0 ORDER BY id", True),
    ("guarded_case_over_cte", "WITH s AS (SELECT id, stars, LLM('Summarize {text}') AS summary "
     "FROM reviews WHERE id < 40) SELECT id, CASE WHEN stars > 3 THEN LLM('Reply to {summary}') "
     "END AS r FROM s ORDER BY id LIMIT 7", True),
    ("chain_with_limit", "WITH a AS (SELECT id, text, LLM('Answer {text}') AS x FROM reviews), "
     "b AS (SELECT id, x, LLM('Critique {x} of {text}') AS y FROM a) SELECT id, LLM('Revise {x} "
     "after {y}') AS z FROM b WHERE id > 150 ORDER BY id LIMIT 3", True),
]


@pytest.mark.parametrize(("name", "sql", "ordered"), EQUIVALENCE, ids=[e[0] for e in EQUIVALENCE])
def test_all_rules_on_and_all_rules_off_give_the_same_rows(
    con: halo_sql.Connection, name: str, sql: str, ordered: bool
) -> None:
    con.sql(ALL_OFF)
    off = con.sql(sql)
    cost_off = con.session.last_stats.llm_requests
    con.sql("RESET disable_rules")
    on = con.sql(sql)
    cost_on = con.session.last_stats.llm_requests
    assert on.column_names == off.column_names
    assert _rows(on, ordered) == _rows(off, ordered)
    # sampling may add a few requests; otherwise the optimized plan never asks for more
    assert cost_on <= cost_off + 2 * 16, (cost_on, cost_off)


TPCH_QUERIES = {
    "q1": """SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
        sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, avg(l_discount) AS avg_disc,
        count(*) AS count_order FROM lineitem WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL 90 DAY
        GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus""",
    "q3": """SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate,
        o_shippriority FROM customer, orders, lineitem WHERE c_mktsegment = 'BUILDING'
        AND c_custkey = o_custkey AND l_orderkey = o_orderkey AND o_orderdate < DATE '1995-03-15'
        AND l_shipdate > DATE '1995-03-15' GROUP BY l_orderkey, o_orderdate, o_shippriority
        ORDER BY revenue DESC, o_orderdate LIMIT 10""",
    "q5": """SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue
        FROM customer, orders, lineitem, supplier, nation, region
        WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey
        AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey
        AND r_name = 'ASIA' AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < DATE '1995-01-01'
        GROUP BY n_name ORDER BY revenue DESC""",
    "q6": """SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem
        WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01'
        AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24""",
    "q10": """SELECT c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) AS revenue, n_name
        FROM customer, orders, lineitem, nation WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey
        AND o_orderdate >= DATE '1993-10-01' AND o_orderdate < DATE '1994-01-01'
        AND l_returnflag = 'R' AND c_nationkey = n_nationkey
        GROUP BY c_custkey, c_name, n_name ORDER BY revenue DESC, c_custkey LIMIT 20""",
    "q12": """SELECT l_shipmode, sum(CASE WHEN o_orderpriority IN ('1-URGENT', '2-HIGH') THEN 1 ELSE 0 END)
        AS high_line_count FROM orders, lineitem WHERE o_orderkey = l_orderkey
        AND l_shipmode IN ('MAIL', 'SHIP') AND l_commitdate < l_receiptdate
        AND l_shipdate < l_commitdate AND l_receiptdate >= DATE '1994-01-01'
        AND l_receiptdate < DATE '1995-01-01' GROUP BY l_shipmode ORDER BY l_shipmode""",
    "q14_cte": """WITH promo AS (SELECT l_extendedprice * (1 - l_discount) AS rev, p_type
        FROM lineitem JOIN part ON l_partkey = p_partkey
        WHERE l_shipdate >= DATE '1995-09-01' AND l_shipdate < DATE '1995-10-01')
        SELECT round(100.00 * sum(CASE WHEN p_type LIKE 'PROMO%' THEN rev ELSE 0 END) / sum(rev), 6)
        AS promo_revenue FROM promo""",
}


@pytest.mark.parametrize("name", sorted(TPCH_QUERIES))
def test_plans_without_llm_operators_give_duckdbs_answer_on_tpch(
    tpch: halo_sql.Connection, tpch_dir: Path, name: str
) -> None:
    sql = TPCH_QUERIES[name]
    plan = tpch.session.plan(sql)
    assert plan.optimizer is None and isinstance(plan.root, lp.DuckDBQuery)  # DuckDB's alone
    reference = duckdb.connect()
    from halo_sql.datasets.tpch import load_tpch

    load_tpch(reference, 0.01, tpch_dir.parent)
    expected = reference.sql(sql).fetchall()
    got = [tuple(r.values()) for r in tpch.sql(sql).to_pylist()]
    assert got == expected


def test_llm_queries_over_tpch_agree_with_rules_on_and_off(tpch: halo_sql.Connection) -> None:
    sql = """WITH urgent AS (
        SELECT o_orderkey, o_orderpriority, LLM('Summarize: {o_comment}', max_tokens => 8) AS s
        FROM orders JOIN customer ON o_custkey = c_custkey WHERE c_mktsegment = 'BUILDING')
        SELECT o_orderkey, s FROM urgent WHERE o_orderpriority = '1-URGENT' AND o_orderkey < 3000
        ORDER BY o_orderkey"""
    tpch.sql(ALL_OFF)
    off = tpch.sql(sql).to_pylist()
    requests_off = tpch.session.last_stats.llm_requests
    tpch.sql("RESET disable_rules")
    on = tpch.sql(sql).to_pylist()
    assert on == off
    assert tpch.session.last_stats.llm_requests * 20 < requests_off  # the filter reached the source


# -- the cost model ranks plans as they measure -----------------------------------------------------

RANKING = [
    # (query, variants: name -> rules switched off)
    ("WITH t AS (SELECT id, stars, LLM('Summarize {text}') AS s FROM reviews) "
     "SELECT id, s FROM t WHERE stars = 2", {
        "all rules": (), "no input filter": ("push_filter_into_input",), "none": ("all",)}),
    ("SELECT id FROM reviews WHERE LLM_FILTER('Do {text}, {note}, {product} and {stars} agree?') "
     "AND LLM_FILTER('Late? {text}') AND id < 150", {
        "cheap filter first": (), "planner order": ("reorder_llm_filters",)}),
    ("WITH t AS (SELECT id, LLM('Summarize {text}') AS s FROM reviews WHERE id < 120) "
     "SELECT * FROM t LIMIT 5", {
        "limit pushed": (), "limit kept above": ("push_limit_into_input",)}),
    ("WITH t AS (SELECT id, note, LLM('Summarize {text}') AS s, LLM('Title {text}') AS ti FROM reviews) "
     "SELECT id, ti FROM t", {
        "pruned": (), "not pruned": ("prune_input_columns",)}),
]


def _measure(con: halo_sql.Connection, sql: str, off: tuple[str, ...]) -> tuple[float, float, float, float]:
    session = con.session
    disabled = frozenset(rule_names()) if off == ("all",) else frozenset(off)
    session.optimizer_settings = OptimizerSettings(disabled=disabled, sample_rows=0)
    plan = session.plan(sql)
    est = plan.optimizer.total
    session.backend("default").reset_cache()  # type: ignore[attr-defined]
    result = con.run(sql)
    stats = result.stats
    return (
        est.requests, est.computed_tokens,
        float(stats.llm_requests), float(stats.prompt_tokens - stats.cached_prompt_tokens),
    )


@pytest.mark.parametrize(("sql", "variants"), RANKING, ids=[f"q{i}" for i in range(len(RANKING))])
def test_cost_model_ranks_plans_in_the_order_of_their_measured_cost(
    con: halo_sql.Connection, sql: str, variants: dict[str, tuple[str, ...]]
) -> None:
    measured = {name: _measure(con, sql, off) for name, off in variants.items()}
    names = list(variants)
    for a in names:
        for b in names:
            est_req_a, est_tok_a, req_a, tok_a = measured[a]
            est_req_b, est_tok_b, req_b, tok_b = measured[b]
            if req_a < req_b and tok_a < tok_b:  # a is measurably cheaper on both counts
                assert est_req_a <= est_req_b and est_tok_a <= est_tok_b, (a, b, measured)
                assert (est_req_a, est_tok_a) < (est_req_b, est_tok_b), (a, b, measured)
    chosen = names[0]  # every rule on: the optimizer's own choice computes the fewest tokens
    assert all(measured[chosen][3] <= measured[n][3] for n in names), measured
    # Where one variant makes fewer requests and the other computes fewer tokens (the sim's
    # answers, and so an LLM filter's selectivity, are a hash of the prompt), neither is
    # measurably cheaper: the ranking is checked where the measurement gives one.
    ranks = sorted(names, key=lambda n: (measured[n][2], measured[n][3]))
    if all(measured[a][2] <= measured[b][2] and measured[a][3] <= measured[b][3]
           for a, b in zip(ranks, ranks[1:], strict=False)):
        assert ranks == sorted(names, key=lambda n: (measured[n][0], measured[n][1])), measured


def test_estimates_are_close_to_what_the_sim_measures(con: halo_sql.Connection) -> None:
    sql = "SELECT id, LLM('Summarize {text}') AS s FROM reviews WHERE stars > 2"
    est_requests, est_tokens, requests, tokens = _measure(con, sql, ())
    assert est_requests == requests
    assert abs(est_tokens - tokens) <= 0.25 * tokens


# -- prompts as written, other layouts by cost ------------------------------------------------------

LONG_REPLY = (
    "SELECT id, LLM('Review: {text}. Write a short, polite reply to the customer who wrote this "
    "review of a product bought in our kitchen and home appliance shop. Thank them, answer the "
    "concern they raise if any, mention that our service team reads every review, and sign as "
    "the customer care team of the shop.') AS reply FROM reviews WHERE id < 80"
)


class _Recording:
    """A backend that records every prompt it is sent (answers come from the sim)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        self.prompts += [r.prompt for r in requests]
        return list(self.inner.generate(requests))

    async def agenerate(self, request: Any, *, priority: int = 0) -> Any:
        self.prompts.append(request.prompt)
        return await self.inner.agenerate(request, priority=priority)


def test_the_model_is_sent_the_template_as_written(con: halo_sql.Connection) -> None:
    from halo_sql.executor.runtime import LLMRuntime

    backend = _Recording(con.session.backend("default"))
    con.session.runtime = LLMRuntime(lambda model: backend)
    con.sql(
        "SELECT id FROM reviews WHERE id <= 3 AND LLM_FILTER('Does {text} mention the {product}? "
        "Think of synonyms.') AND LLM_CLASSIFY('Stars: {stars}. Tone?', ['calm', 'angry']) = 'calm'"
    )
    rows = con.duckdb.sql("SELECT text, product, stars FROM reviews WHERE id <= 3").fetchall()
    written = {f"Does {t} mention the {p}? Think of synonyms." for t, p, _ in rows}
    assert written <= set(backend.prompts)
    assert set(backend.prompts) - written <= {f"Stars: {s}. Tone?" for _, _, s in rows}


def test_a_values_last_layout_is_chosen_only_where_it_computes_less_prefill(
    con: halo_sql.Connection,
) -> None:
    con.sql("SET optimizer_sample_rows = 0")
    measured = {}
    for enabled in (False, True):
        con.sql("SET enable_rules = 'prompt_values_last_map'" if enabled else "RESET enable_rules")
        plan = con.session.plan(LONG_REPLY)
        con.session.backend("default").reset_cache()  # both layouts start from an empty cache
        result = con.run(LONG_REPLY)
        computed = result.stats.prompt_tokens - result.stats.cached_prompt_tokens
        measured[enabled] = (plan.optimizer.total.computed_tokens, computed, lp.explain(plan))
    con.sql("RESET enable_rules")
    assert "<- (text)" in measured[True][2] and "<- (text)" not in measured[False][2]
    assert measured[True][0] < measured[False][0]  # the estimate chose it ...
    assert measured[True][1] < measured[False][1]  # ... and the sim computes less prefill
    short = "SELECT id, LLM('Does {text} mention a {product}?') AS m FROM reviews WHERE id < 80"
    con.sql("SET enable_rules = 'prompt_values_last_map'")
    assert "<- (" not in lp.explain(con.session.plan(short))  # more tokens, nothing shared


# -- physical alternatives the cost model chooses between ------------------------------------------


def test_an_llm_filter_on_a_cte_runs_before_the_ctes_expensive_map(con: halo_sql.Connection) -> None:
    sql = (
        "WITH s AS (SELECT id, text, LLM('Summarize {text}') AS summary FROM reviews) "
        "SELECT id, summary FROM s WHERE LLM_FILTER('Does {text} complain about a delay?') ORDER BY id"
    )
    con.sql("SET optimizer_sample_rows = 0")
    optimized = con.sql(sql)
    asked = con.stats()["llm_requests"]
    assert "push_llm_filter_into_input" in con.session.plan(sql).optimizer.rules
    con.sql("SET disable_rules = 'push_llm_filter_into_input'")
    assert con.sql(sql) == optimized
    asked_after = con.stats()["llm_requests"]
    con.sql("RESET disable_rules")
    # 200 rows, 25 distinct texts: the filter first asks about 25 and summarizes only the
    # texts it keeps; after the map, every text is summarized first.
    assert asked < asked_after


def test_a_semantic_join_is_a_nested_loop_or_a_hash_join_by_cost(con: halo_sql.Connection) -> None:
    many_pairs = (
        "SELECT r.id, p.category FROM reviews AS r, (SELECT DISTINCT category FROM products) AS p "
        "WHERE LLM_FILTER('Is the review {r.text} about something from the {p.category} "
        "department?') ORDER BY r.id, p.category"
    )
    con.sql("SET optimizer_sample_rows = 0")
    con.sql(many_pairs)
    nested_loop = con.stats()["llm_requests"]
    con.sql("SET enable_rules = 'semantic_join_classify'")
    plan = con.session.plan(many_pairs)
    hash_join = lp.explain(plan)
    assert "JOIN (SELECT" in hash_join and " ON l." in hash_join  # DuckDB joins on the label
    assert "LLMFilter" not in hash_join
    con.sql(many_pairs)
    classified = con.stats()["llm_requests"]
    assert classified * 2 <= nested_loop  # 25 distinct texts classified, not 75 pairs asked
    assert plan.optimizer.total.requests < nested_loop
    few_pairs = (
        "SELECT a.id, b.id AS other FROM reviews AS a, reviews AS b WHERE a.id < 4 AND b.id < 40 "
        "AND LLM_FILTER('Do {a.text} and {b.text} say the same?')"
    )
    assert "LLMFilter" in lp.explain(con.session.plan(few_pairs))  # the nested loop is cheaper
    con.sql("RESET enable_rules")


# -- sampled selectivities are paid once -----------------------------------------------------------


def test_sampled_answers_are_reused_by_the_run(con: halo_sql.Connection) -> None:
    sql = ("SELECT id FROM reviews WHERE LLM_FILTER('Late? {text}') "
           "AND LLM_FILTER('Is the tone of {text} angry?')")
    con.sql("SET optimizer_sample_rows = 0")
    con.sql(sql)
    without = con.session.last_stats
    con.sql("SET optimizer_sample_rows = 16")
    result = con.run("EXPLAIN ANALYZE " + sql)
    with_samples = result.stats
    text = result.table.column(0)[0].as_py()
    assert "sampled 32 rows" in text
    # every answer asked for a sample that the run needs again comes from the statement's memo
    assert with_samples.deduplicated_requests >= 16
    assert with_samples.llm_requests <= without.llm_requests + 16


# -- EXPLAIN ---------------------------------------------------------------------------------------


def test_explain_shows_estimates_per_operator(con: halo_sql.Connection) -> None:
    text = con.sql("EXPLAIN SELECT id, LLM('Summarize {text}') AS s FROM reviews "
                   "WHERE LLM_FILTER('Late? {text}') AND stars = 1").column(0)[0].as_py()
    operators = [line for line in text.splitlines() if re.match(r"\s*(DuckDBQuery|LLM|Project|SQLFilter|Limit)", line)]
    assert operators and all("[est rows=" in line for line in operators), text
    llm_line = next(line for line in operators if "LLMFilter" in line)
    assert re.search(r"requests=\d+ prompt=\d+ cached=\d+ output=\d+ cost=\d+\.\d+s", llm_line)
    assert "estimated total: requests=" in text and "rules applied:" in text
    assert con.sql("EXPLAIN SELECT id, LLM('Summarize {text}') AS s FROM reviews "
                   "WHERE LLM_FILTER('Late? {text}') AND stars = 1").column(0)[0].as_py() == text


def test_explain_analyze_puts_actual_beside_estimated_for_every_operator(con: halo_sql.Connection) -> None:
    result = con.run("EXPLAIN ANALYZE SELECT id, LLM('Summarize {text}') AS s FROM reviews "
                     "WHERE LLM_FILTER('Late? {text}') AND stars = 1")
    text = result.table.column(0)[0].as_py()
    operators = [line for line in text.splitlines() if "[est " in line]
    assert operators and all("| actual rows=" in line for line in operators), text
    per_operator = sum(int(m) for m in re.findall(r"actual rows=\d+ requests=(\d+)", text))
    assert per_operator == result.stats.llm_requests
    assert f"llm_requests={result.stats.llm_requests}" in text


def test_explain_format_json_is_a_tree_with_estimates(con: halo_sql.Connection) -> None:
    payload = json.loads(con.sql("EXPLAIN (FORMAT JSON) WITH t AS (SELECT id, LLM('Summarize {text}') "
                                 "AS s FROM reviews) SELECT * FROM t LIMIT 2").column(0)[0].as_py())
    root = payload["plan"]
    assert root["operator"] == "DuckDBQuery" and "estimate" in root
    llm = root["inputs"][0]["plan"]
    while llm["operator"] != "LLMMap":
        llm = (llm.get("children") or [i["plan"] for i in llm["inputs"]])[0]
    assert llm["estimate"]["requests"] == 2
    assert "push_limit_into_input" in payload["optimizer"]["rules_applied"]
    analyzed = json.loads(con.sql("EXPLAIN ANALYZE (FORMAT JSON) SELECT LLM('Hi {text}') AS s "
                                  "FROM reviews WHERE id < 3").column(0)[0].as_py())
    assert analyzed["actual_total"]["llm_requests"] == 2 and "actual" in analyzed["plan"]


# -- settings ----------------------------------------------------------------------------------------


def test_disable_rules_is_kept_by_the_session_until_reset(con: halo_sql.Connection) -> None:
    sql = "WITH t AS (SELECT id, LLM('Summarize {text}') AS s FROM reviews) SELECT count(*) AS n FROM t"
    con.sql(ALL_OFF)
    assert con.session.optimizer_settings.all_off
    con.sql(sql)
    assert con.session.last_stats.llm_requests == 200
    assert con.session.plan(sql).optimizer.rules == ()
    con.sql("RESET disable_rules")
    con.sql(sql)
    assert con.session.last_stats.llm_requests == 0


@pytest.mark.parametrize(("temperature", "narrowed"), [(0.0, True), (0.7, False)])
def test_a_batch_narrows_a_cte_only_where_answers_are_shared_across_queries(
    con: halo_sql.Connection, temperature: float, narrowed: bool
) -> None:
    """Deterministic requests are sent once for the whole batch, so a query's own narrowed copy
    of a CTE never costs more model work than a shared copy; sampled answers are not shared,
    so those queries keep the CTE equal across the batch and run it once."""
    from halo_sql.optimizer.session_context import SessionContext

    sql = (
        f"WITH t AS (SELECT id, stars, LLM('Summarize {{text}}', temperature => {temperature}) AS s "
        "FROM reviews) SELECT id, s FROM t WHERE stars = 2"
    )
    session = con.session
    session.optimizer_settings = OptimizerSettings(disabled=frozenset(rule_names()), sample_rows=0)
    raw = session.plan(sql)
    settings = for_batch(OptimizerSettings(disabled=frozenset({"merge_limits"}), sample_rows=0))
    assert settings.batch and settings.disabled == {"merge_limits"}
    plan = optimize(raw, SessionContext(session, None, sample_rows=0), settings)
    assert ("push_filter_into_input" in plan.optimizer.rules) is narrowed
    if not narrowed:
        assert not BATCH_DISABLED & set(plan.optimizer.search.fired)


def test_a_failing_optimizer_falls_back_to_the_planners_plan(
    con: halo_sql.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from halo_sql.optimizer import cost

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.delenv("HALO_OPTIMIZER_STRICT")
    monkeypatch.setattr(cost.CostModel, "derive", broken)
    sql = "SELECT id FROM reviews WHERE LLM_FILTER('Late? {text}') AND id < 5 ORDER BY id"
    plan = con.session.plan(sql)
    assert any("optimizer skipped (RuntimeError: boom)" in n for n in plan.notes)
    assert len(con.sql(sql)) <= 4
