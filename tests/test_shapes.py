"""Query shapes: a batch of queries that differ only in literal values is planned once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import halo_sql
from halo_sql.executor.runtime import StatementStats
from halo_sql.parser.shapes import shape_of

LLM = {"llm", "llm_filter", "llm_classify"}


def test_literals_outside_llm_calls_are_values_of_the_shape() -> None:
    shape = shape_of(
        "SELECT LLM('Summarize {t}', max_tokens => 24) FROM x WHERE k = 17 AND name = 'ann'", LLM
    )
    assert shape is not None
    assert shape.values == ("17", "'ann'")
    assert shape.key == "SELECT LLM('Summarize {t}', max_tokens => 24) FROM x WHERE k = ? AND name = ?"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a FROM t ORDER BY 2, 1 LIMIT 5 OFFSET 10",  # positions and counts
        "SELECT round(a, 2), strftime(d, '%Y') FROM t",  # function arguments
        "SELECT a FROM t WHERE d > now() - INTERVAL '3 days'",  # interval text
        "SELECT LLM_CLASSIFY('Tone of {a}', ['calm', 'upset']) FROM t",  # everything in an LLM call
    ],
)
def test_literals_that_shape_a_plan_stay_in_the_shape(sql: str) -> None:
    assert shape_of(sql, LLM) is None


def test_bound_parameters_are_values_unless_they_sit_in_an_llm_call() -> None:
    shape = shape_of("SELECT LLM('x {a}') FROM t WHERE k = $k AND n = ?", LLM, {"k": 3})
    assert shape is None  # '?' has no value in a mapping
    shape = shape_of("SELECT LLM('x {a}') FROM t WHERE k = $k", LLM, {"k": 3})
    assert shape is not None and shape.values == ("3",)
    assert shape_of("SELECT LLM(?) FROM t WHERE k = 1", LLM, ["Repeat: {a}"]) is None


def test_a_batch_of_one_shape_is_planned_twice_not_once_per_query(monkeypatch: pytest.MonkeyPatch) -> None:
    con = halo_sql.connect(backend="sim")
    con.register("notes", pa.table({"id": list(range(50)), "text": [f"note {i}" for i in range(50)]}))
    planned: list[str] = []
    plan = con.session._plan

    def counting(statement: Any, text: str, params: Any, **kwargs: Any) -> Any:
        planned.append(text)
        return plan(statement, text, params, **kwargs)

    monkeypatch.setattr(con.session, "_plan", counting)
    queries = [f"SELECT id, LLM('Tag {{text}}') AS t FROM notes WHERE id = {i}" for i in range(40)]
    batch = con.execute_batch(queries)
    assert not batch.errors
    assert len(planned) == 2  # the first query, and the shape with sentinel values
    expected = [con.sql(q).to_pylist() for q in queries]  # type: ignore[union-attr]
    assert [t.to_pylist() for t in batch.tables] == expected  # type: ignore[union-attr]


def test_plans_from_the_shape_cache_equal_fresh_plans_for_every_benchmark_workload(tmp_path: Path, tpch_dir: Path) -> None:
    from halo_sql.datasets.tpch import load_tpch
    from tpc_agentic_bench.workloads import ALL_WORKLOADS, build_workload

    db = duckdb.connect()
    load_tpch(db, 0.01, tpch_dir.parent)
    con = halo_sql.connect(connection=db, backend="sim")
    con.sql("CREATE MODEL small USING sim")
    con.sql("CREATE MODEL large USING sim WITH (seed => 1)")
    for key in ALL_WORKLOADS:
        workload = build_workload(key, db, 6)
        for statement in workload.setup_sql:
            con.sql(statement)
        shapes: dict[str, Any] = {}
        cached = [
            con.session.plan_for_batch(q, None, StatementStats(), shapes) for q in workload.queries
        ]
        assert shapes and all(plan is not None for plan in shapes.values()), key
        for query, plan in zip(workload.queries, cached, strict=True):
            assert plan.root == con.session.plan_for_batch(query, None, StatementStats()).root, key
