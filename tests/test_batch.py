"""Batch processing: many queries as one workload, answers identical to one-by-one execution."""

from __future__ import annotations

import tracemalloc

import pyarrow as pa
import pytest

import halo_sql

CHAIN = """
WITH summary AS (
    SELECT id, LLM('Summarize this customer note for the account team: {text}') AS s
    FROM notes WHERE customer = $customer
), label AS (
    SELECT id, LLM_CLASSIFY('Classify the summary: {s}', ['churn risk', 'happy']) AS l FROM summary
)
SELECT * FROM label ORDER BY id
"""


@pytest.fixture()
def con() -> halo_sql.Connection:
    con = halo_sql.connect(backend="sim")
    con.register(
        "notes",
        pa.table(
            {
                "id": list(range(60)),
                "customer": [i % 12 for i in range(60)],
                "text": [f"note {i % 20} about the invoice" for i in range(60)],
            }
        ),
    )
    return con


def test_batch_results_equal_one_by_one_in_input_order(con: halo_sql.Connection) -> None:
    params = [{"customer": c} for c in range(12)]
    expected = [con.sql(CHAIN, p).to_pylist() for p in params]  # type: ignore[union-attr]
    batch = con.execute_batch(CHAIN, params)
    assert [t.to_pylist() for t in batch.tables] == expected  # type: ignore[union-attr]
    assert batch.stats()["queries"] == 12 and not batch.errors


def test_batch_sends_fewer_backend_calls_and_shares_identical_requests(con: halo_sql.Connection) -> None:
    params = [{"customer": c} for c in range(12)]
    one_by_one_calls = 0
    for p in params:
        con.sql(CHAIN, p)
        one_by_one_calls += con.stats()["backend_calls"]
    batch = con.execute_batch(CHAIN, params)
    stats = batch.stats()
    assert stats["backend_calls"] < one_by_one_calls
    # 60 notes but only 20 distinct texts: 40 summary requests are answered by another query's.
    assert stats["llm_requests"] < 2 * 60
    assert stats["shared_requests"] + stats["deduplicated_requests"] >= 40


def test_identical_sub_plans_across_queries_run_once(con: halo_sql.Connection) -> None:
    shared_cte = (
        "WITH tagged AS (SELECT id, customer, LLM_FILTER('Is this about money? {text}') AS money "
        "FROM notes) SELECT count(*) FILTER (WHERE money AND customer = ?) AS n FROM tagged"
    )
    batch = con.execute_batch(shared_cte, [[c] for c in range(6)])
    stats = batch.stats()
    assert stats["subplans_reused"] >= 5, stats  # the CTE's plan is equal in all six queries
    assert stats["llm_requests"] == 20  # its 20 distinct prompts were sent once for the batch
    explained = con.explain_batch(shared_cte, [[c] for c in range(6)])
    assert "serves 6 queries" in explained


def test_a_failing_query_does_not_lose_the_others(con: halo_sql.Connection) -> None:
    batch = con.execute_batch(
        ["SELECT LLM('Hi {text}') AS a FROM notes WHERE id = 1", "SELECT LLM('{missing}') FROM notes"]
    )
    assert batch[0].error is None and batch[0].table is not None and batch[0].table.num_rows == 1
    assert isinstance(batch[1].error, halo_sql.BinderError)
    assert "missing" in str(batch[1].error)


def test_parameters_from_a_table_or_a_query(con: halo_sql.Connection) -> None:
    from_table = con.execute_batch(CHAIN, pa.table({"customer": [1, 2]}))
    from_query = con.execute_batch(CHAIN, "SELECT DISTINCT customer FROM notes WHERE customer IN (1, 2) ORDER BY 1")
    assert [t.to_pylist() for t in from_table.tables] == [t.to_pylist() for t in from_query.tables]  # type: ignore[union-attr]


def test_memory_stays_flat_as_a_50k_row_statement_grows() -> None:
    con = halo_sql.connect(backend="sim")
    con.session.memo_capacity = 5_000

    def peak(rows: int) -> int:
        con.sql(
            f"CREATE OR REPLACE TABLE big AS SELECT range AS id, 'comment ' || range || ' on delivery' "
            f"AS text FROM range({rows})"
        )
        tracemalloc.start()
        try:
            result = con.sql(
                "SELECT count(*) FILTER (WHERE LLM_FILTER('About delivery? {text}')) AS n FROM big"
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert result is not None and con.stats()["llm_requests"] == rows

    small, large = peak(10_000), peak(50_000)
    assert large < small * 1.3, (small, large)


def test_executemany_of_a_query_runs_as_one_batch(con: halo_sql.Connection) -> None:
    cursor = con.cursor()
    cursor.executemany(
        "SELECT LLM('Summarize this customer note for the account team: {text}') AS s "
        "FROM notes WHERE id = ?",
        [[0], [20], [40]],  # the three notes share one text: one request serves all three
    )
    assert cursor.fetchall()
    assert con.stats()["llm_requests"] == 1


def test_shell_batch_flag_runs_a_file_as_one_batch(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(str(tmp_path)) / "many.sql"
    script.write_text(
        "SELECT LLM('Greet {x}') AS a FROM (VALUES ('ann'), ('bob')) t(x);\n"
        "SELECT LLM('Greet {x}') AS a FROM (VALUES ('bob')) t(x);\n"
        "SELECT no_such_column;\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "halo_sql.cli", "--backend", "sim", "--mode", "csv", "-f", str(script), "--batch"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1  # the third statement fails; the first two still print
    assert done.stdout.count("\na\n") + done.stdout.startswith("a\n") == 2
    assert f"[{script}:3]" in done.stderr
    assert "3 statements, 1 failed, 2 LLM requests" in done.stderr


