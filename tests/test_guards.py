"""CASE and OR guards: the model is asked only about rows whose result depends on its answer.

`CASE WHEN stars > 2 THEN LLM(...) END` needs the answer only where `stars > 2`; `stars > 3 OR
LLM_FILTER(...)` only where `stars > 3` is not true. The planner evaluates the cheap side first,
in DuckDB, and sends no request for the other rows: never more requests than DuckDB itself makes
evaluating the calls as functions (`PlannerOptions(lift_llm_calls=False)`), and the same answers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import halo_sql
from halo_sql.frontends.dbapi import Connection
from halo_sql.logical.builder import PlannerOptions

TABLE = (
    "CREATE TABLE reviews AS SELECT i AS id, 1 + i % 5 AS stars, 'Review ' || i || ' of a kettle' "
    "AS text, CASE WHEN i % 7 = 0 THEN NULL ELSE 'note ' || i END AS note FROM range(55) AS t(i)"
)

GUARDED = {
    "case_then": "SELECT id, CASE WHEN stars > 2 THEN LLM('Summarize {text}') END AS s FROM reviews",
    "case_else": "SELECT id, CASE WHEN stars > 2 THEN 'fine' ELSE LLM('Why unhappy? {text}') END AS s "
    "FROM reviews",
    "case_later_when": "SELECT id, CASE WHEN stars = 5 THEN 'top' WHEN LLM_FILTER('Late? {text}') "
    "THEN 'late' ELSE 'other' END AS s FROM reviews",
    "simple_case": "SELECT id, CASE stars WHEN 1 THEN LLM('Apologize for {text}') ELSE 'ok' END AS s "
    "FROM reviews",
    "or_in_where": "SELECT id FROM reviews WHERE stars > 3 OR LLM_FILTER('Good? {text}')",
    "llm_side_first_in_or": "SELECT id FROM reviews WHERE LLM_FILTER('Good? {text}') OR stars > 3",
    "and_inside_case": "SELECT id, CASE WHEN stars < 3 AND LLM_FILTER('Late? {text}') THEN 'late' "
    "END AS s FROM reviews",
    "if": "SELECT id, IF(stars >= 4, LLM('Thank for {text}'), NULL) AS s FROM reviews",
    "coalesce": "SELECT id, COALESCE(note, LLM('Write a note for {text}')) AS s FROM reviews",
    "guarded_and_unguarded_use": "SELECT id, LLM('Summarize {text}') AS a, CASE WHEN stars > 2 THEN "
    "LLM('Summarize {text}') END AS b FROM reviews",
}


@pytest.fixture
def lifted() -> Iterator[Connection]:
    con = halo_sql.connect(backend="sim")
    con.sql(TABLE)
    yield con
    con.close()


@pytest.fixture
def functions() -> Iterator[Connection]:
    con = halo_sql.connect(backend="sim")
    con.session.planner_options = PlannerOptions(lift_llm_calls=False)
    con.sql(TABLE)
    yield con
    con.close()


def _run(con: Connection, sql: str) -> tuple[list[tuple], int]:
    table = con.sql(sql + " ORDER BY id")
    rows = [tuple(r.values()) for r in table.to_pylist()]
    return rows, con.stats()["llm_requests"]


@pytest.mark.parametrize("sql", GUARDED.values(), ids=GUARDED.keys())
def test_guarded_calls_ask_no_more_than_duckdb_and_answer_the_same(
    lifted: Connection, functions: Connection, sql: str
) -> None:
    assert "LLMMap" in lifted.explain(sql) or "LLMFilter" in lifted.explain(sql)
    ours, asked = _run(lifted, sql)
    theirs, duckdb_asked = _run(functions, sql)
    assert ours == theirs
    assert asked <= duckdb_asked


def test_the_issue_cases_ask_only_the_rows_that_matter(lifted: Connection) -> None:
    _, asked = _run(lifted, GUARDED["case_then"])
    assert asked == 33  # stars 3, 4, 5: 33 of 55 rows (was 55)
    _, asked = _run(lifted, GUARDED["or_in_where"])
    assert asked == 33  # stars 1, 2, 3 (was 55)


def test_the_guard_is_part_of_the_plan_and_of_its_estimate(lifted: Connection) -> None:
    shown = lifted.explain(GUARDED["case_then"])
    assert "CASE WHEN (reviews.stars > 2) THEN CAST(reviews.text AS TEXT) END" in shown
    assert lifted.session.plan(GUARDED["case_then"]).optimizer.total.requests == pytest.approx(33)


def test_a_volatile_condition_does_not_guard(lifted: Connection) -> None:
    # random() would not give the same value in the source and in the output query.
    sql = "SELECT id, CASE WHEN random() < 2 THEN LLM('Summarize {text}') END AS s FROM reviews"
    assert "CASE WHEN" not in lifted.explain(sql).split("input")[1]
    _, asked = _run(lifted, sql)
    assert asked == 55


def test_partition_by_an_llm_classification(lifted: Connection) -> None:
    sql = (
        "SELECT id, row_number() OVER (PARTITION BY LLM_CLASSIFY('Topic of {text}', "
        "['delivery', 'quality']) ORDER BY id) AS rn FROM reviews"
    )
    expected = (
        "SELECT id, row_number() OVER (PARTITION BY topic ORDER BY id) AS rn FROM "
        "(SELECT id, LLM_CLASSIFY('Topic of {text}', ['delivery', 'quality']) AS topic FROM reviews)"
    )
    got, asked = _run(lifted, sql)
    assert got == _run(lifted, expected)[0]
    assert asked == 55
    assert {rn for _, rn in got} >= {1, 2}
