"""LLM functions inside a user's own DuckDB: `halo_sql.duckdb.install(con)` on plain connections."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import halo_sql
import halo_sql.duckdb
from halo_sql.llm.sim import SimBackend

ROWS = 10_000
VECTOR = 2048


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE reviews AS SELECT i AS id, 'review number ' || i AS text, i % 5 AS product "
        f"FROM range({ROWS}) r(i)"
    )
    yield connection
    connection.close()


@pytest.fixture
def llm(con: duckdb.DuckDBPyConnection) -> halo_sql.duckdb.LLMFunctions:
    return halo_sql.duckdb.install(con, backend="sim")


def _sim(llm: halo_sql.duckdb.LLMFunctions) -> SimBackend:
    backend = llm.session.backend("default")
    assert isinstance(backend, SimBackend)
    return backend


def test_llm_filter_over_10000_rows_makes_one_backend_call_per_vector(
    con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions
) -> None:
    kept = con.sql(
        "SELECT count(*) FROM reviews WHERE llm_filter('Is {text} about a late delivery?', text)"
    ).fetchall()[0][0]
    assert 0 < kept < ROWS
    assert llm.vectors == math.ceil(ROWS / VECTOR)  # DuckDB's vectors: 4 x 2048 + 1808
    stats = llm.stats()
    assert stats["llm_requests"] == ROWS
    # Each vector's requests reach the engine together (one hand-over), not row by row.
    assert stats["backend_calls"] == llm.vectors


def test_every_function_name_is_registered(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    names = {
        row[0]
        for row in con.execute("SELECT DISTINCT function_name FROM duckdb_functions()").fetchall()
    }
    assert set(halo_sql.duckdb.FUNCTION_TYPES) <= names
    assert {"llm", "llm_filter", "llm_classify", "llm_extract", "llm_agg", "llm_complete",
            "llm_reduce", "llm_rerank", "llm_first", "llm_last"} <= names


def test_functions_are_registered_with_side_effects(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    rows = con.execute(
        "SELECT DISTINCT has_side_effects FROM duckdb_functions() WHERE function_name LIKE 'llm%'"
    ).fetchall()
    assert rows == [(True,)]


def test_answers_equal_the_engines(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    """Same prompts, same (deterministic) model: the same answers as halo_sql.connect."""
    plain = con.sql(
        "SELECT id, llm_filter('Is {text} late?', text) AS late, "
        "llm_classify('Mood of {text}', ['happy', 'sad'], text) AS mood, "
        "llm('Summarize {text} for {product}', text, product) AS summary "
        "FROM reviews WHERE id < 50 ORDER BY id"
    ).fetchall()
    engine = halo_sql.connect(connection=con, backend="sim")
    optimized = engine.execute(
        "SELECT id, LLM_FILTER('Is {text} late?') AS late, "
        "LLM_CLASSIFY('Mood of {text}', ['happy', 'sad']) AS mood, "
        "LLM('Summarize {text} for {product}') AS summary "
        "FROM reviews WHERE id < 50 ORDER BY id"
    ).fetchall()
    assert plain == optimized


def test_slot_values_fill_the_template_in_order_of_first_appearance(
    con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions
) -> None:
    swapped = con.sql("SELECT llm('Compare {a} with {b}', 'x', 'y'), llm('Compare {a} with {b}', 'y', 'x')").fetchall()
    assert swapped[0][0] != swapped[0][1]
    repeated = con.sql("SELECT llm('{a} then {b} then {a}', 'x', 'y')").fetchall()
    assert repeated[0][0] is not None


def test_non_text_values_are_cast_as_duckdb_casts_them(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    as_numbers = con.sql("SELECT llm('Price {p}', 1.50::DECIMAL(9,2)), llm('Price {p}', '1.50')").fetchall()
    assert as_numbers[0][0] == as_numbers[0][1]


def test_null_values_give_null_without_a_request(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    assert con.sql("SELECT llm_filter('Is {t} late?', NULL::VARCHAR), llm(NULL, 'x')").fetchall() == [(None, None)]
    assert llm.stats()["llm_requests"] == 0


def test_options_struct_chooses_model_and_decoding(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    row = con.sql(
        "SELECT llm('Summarize {text}', text, {'model': 'default', 'max_tokens': 4, 'temperature': 0}) "
        "FROM reviews LIMIT 1"
    ).fetchall()
    assert isinstance(row[0][0], str)


def test_llm_extract_returns_json_text(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    row = con.sql(
        """SELECT llm_extract('Who wrote {text}?', '{"name": "string", "age": "integer"}', text)::JSON
           ->> '$.name' FROM reviews LIMIT 1"""
    ).fetchall()
    assert isinstance(row[0][0], str)


def test_llm_agg_reduces_a_list_per_group(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    rows = con.sql(
        "SELECT product, llm_agg('Summarize the reviews', list(text ORDER BY id)) FROM reviews "
        "WHERE id < 100 GROUP BY product ORDER BY product"
    ).fetchall()
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4]
    assert all(isinstance(r[1], str) and r[1] for r in rows)


def test_flockmtl_struct_form(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    rows = con.sql(
        "SELECT llm_complete({'model_name': 'default'}, {'prompt': 'Summarize'}, {'review': text}), "
        "llm_filter({'model_name': 'default'}, {'prompt': 'Is it late?'}, {'review': text, 'id': id}) "
        "FROM reviews LIMIT 3"
    ).fetchall()
    assert all(isinstance(a, str) and isinstance(b, bool) for a, b in rows)


def test_flockmtl_aggregates_take_a_list_of_structs(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    rows = con.sql(
        "SELECT product, "
        "llm_reduce({'model_name': 'default'}, {'prompt': 'Summarize'}, list({'review': text})), "
        "llm_first({'model_name': 'default'}, {'prompt': 'Most positive'}, list({'review': text})), "
        "llm_rerank({'model_name': 'default'}, {'prompt': 'Most positive'}, list({'review': text})) "
        "FROM reviews WHERE id < 20 GROUP BY product"
    ).fetchall()
    assert len(rows) == 5
    for _, reduced, first, ranked in rows:
        assert reduced and first.startswith('{"review":') and ranked.startswith("[")


def test_list_of_struct_plus_unnest_is_the_table_function_workaround(
    con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions
) -> None:
    """DuckDB has no Python table functions: a LIST of STRUCTs from llm_extract, unnested."""
    rows = con.sql(
        """SELECT unnest(CAST(llm_extract('List the items in {text}',
               '{"type": "object", "properties": {"items": {"type": "array",
                 "items": {"type": "object", "properties": {"item": {"type": "string"}}}}}}',
               text) AS STRUCT(items STRUCT(item VARCHAR)[])).items, recursive := true)
           FROM (SELECT text FROM reviews LIMIT 2)"""
    ).fetchall()
    assert rows and all(isinstance(r[0], str) for r in rows)


def test_cheap_filter_in_a_subquery_spares_llm_calls(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    """The documented workaround for DuckDB planning: cheap predicates in a subquery run first."""
    con.sql(
        "SELECT id FROM (SELECT * FROM reviews WHERE id % 100 = 0) "
        "WHERE llm_filter('Is {text} late?', text)"
    ).fetchall()
    assert llm.stats()["llm_requests"] == ROWS // 100


def test_template_that_varies_per_row(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    rows = con.sql(
        "SELECT llm(CASE WHEN id % 2 = 0 THEN 'Even {t}' ELSE 'Odd {t}' END, text) FROM reviews LIMIT 4"
    ).fetchall()
    assert all(isinstance(r[0], str) for r in rows)


def test_wrong_number_of_slot_values_is_a_clean_error(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    with pytest.raises(duckdb.Error, match=r"BinderError: .*2 slot\(s\) \(\{text\}, \{x\}\).* got 1"):
        con.sql("SELECT llm_filter('Is {text} {x} late?', text) FROM reviews").fetchall()


def test_unknown_model_names_the_known_ones(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    with pytest.raises(duckdb.Error, match="unknown model 'nope'.*default"):
        con.sql("SELECT llm('Hi {x}', 'a', {'model': 'nope'})").fetchall()


def test_aggregate_without_a_list_says_how_to_call_it(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    with pytest.raises(duckdb.Error, match=r"list\(text\)"):
        con.sql("SELECT llm_agg('Summarize', text) FROM reviews").fetchall()


def test_models_created_in_the_database_are_known(tmp_path: Path) -> None:
    path = str(tmp_path / "db.duckdb")
    with halo_sql.connect(path) as engine:
        engine.sql("CREATE MODEL quick USING sim WITH (seed => 7)")
    con = duckdb.connect(path)
    llm = halo_sql.duckdb.install(con)
    assert con.sql("SELECT llm('Hi {x}', 'a', {'model': 'quick'})").fetchall()[0][0]
    assert "quick" in llm.session.models
    con.close()


def test_backend_instance_is_shared_with_the_engine(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    engine = halo_sql.connect(backend="sim")
    assert engine.session.backend("default") is _sim(llm)
    engine.close()


def test_parallel_vectors_are_all_answered_and_accounted(llm: halo_sql.duckdb.LLMFunctions) -> None:
    """Several DuckDB threads call the functions at once (2 row groups, 4 threads): every row is
    answered and the totals add up. A template without slots asks one question per vector."""
    con = llm.connection
    con.execute("SET threads = 4")
    rows = 130_000  # DuckDB scans row groups of 122,880 rows in parallel
    con.execute(f"CREATE TABLE big AS SELECT i FROM range({rows}) r(i)")
    answered = con.sql("SELECT count(llm_filter('Is the sky blue?')) FROM big").fetchall()[0][0]
    assert answered == rows
    stats = llm.stats()
    assert stats["llm_requests"] + stats["deduplicated_requests"] == rows
    # One question per vector at most: vectors asking it while it is in flight share its answer.
    assert 1 <= stats["llm_requests"] <= llm.vectors
    assert stats["backend_calls"] == stats["llm_requests"]


def test_uninstall_removes_the_functions(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    llm.uninstall()
    with pytest.raises(duckdb.CatalogException):
        con.sql("SELECT llm_filter('x {y}', 'z')").fetchall()


def test_install_twice_replaces_the_functions(con: duckdb.DuckDBPyConnection, llm: halo_sql.duckdb.LLMFunctions) -> None:
    again = halo_sql.duckdb.install(con, backend="sim")
    con.sql("SELECT llm('x {y}', 'z')").fetchall()
    assert again.vectors == 1 and llm.vectors == 0


@pytest.mark.vllm
def test_llm_filter_on_the_real_engine_sends_one_batch_per_vector(vllm_backend: object) -> None:
    """Same property on vLLM (the shared tiny-model engine): 2,100 rows, 2 vectors, each vector's
    requests handed to the engine together."""
    from halo_sql.executor.runtime import LLMRuntime

    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 'review number ' || i AS text FROM range(2100) r(i)")
    llm = halo_sql.duckdb.install(con, backend="sim")
    llm.runtime = LLMRuntime(lambda model: vllm_backend)  # type: ignore[arg-type, return-value]
    answers = con.sql("SELECT llm_filter('Is {text} about a late delivery?', text) FROM t").fetchall()
    assert len(answers) == 2100
    assert {a[0] for a in answers} <= {True, False, None}
    assert llm.vectors == 2
    assert llm.stats()["backend_calls"] == 2 and llm.stats()["llm_requests"] == 2100
