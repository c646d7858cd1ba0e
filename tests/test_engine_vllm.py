"""The engine end to end on real vLLM (tiny random-weight model): in process (the shared engine)
and through vLLM's OpenAI-compatible server (the `openai` backend; the shared server)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import halo_sql

pytestmark = pytest.mark.vllm

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture(scope="module", params=["vllm", "openai"])
def con(request: pytest.FixtureRequest, tiny_model_dir: Path) -> halo_sql.Connection:
    if request.param == "vllm":
        vllm_backend = request.getfixturevalue("vllm_backend")
        con = halo_sql.connect(model=str(tiny_model_dir))
        assert con.session.backend("default") is vllm_backend, "must share the session's engine"
    else:
        server = request.getfixturevalue("vllm_server").ensure_running()
        con = halo_sql.connect(
            backend="openai", model="tiny",
            model_options={"base_url": server.url, "api": "completions"},
        )
    texts = [
        "The parcel arrived two weeks late and the box was crushed.",
        "Great kettle, boils fast, delivery was on time.",
        "Courier left it in the rain; delivery was a disaster.",
        "Works as described.",
    ] * 5
    con.register(
        "reviews",
        pa.table({"id": list(range(20)), "text": texts, "stars": [1, 5, 2, 3] * 5}),
    )
    return con


def test_issue_example_query_runs_on_vllm(con: halo_sql.Connection) -> None:
    t = con.sql(
        """
        SELECT id, LLM('Summarize in one sentence: {text}', max_tokens => 8) AS summary,
               LLM_CLASSIFY('Sentiment of: {text}', ['positive','negative','neutral']) AS sentiment
        FROM reviews
        WHERE stars <= 2 AND LLM_FILTER('Does this review complain about delivery? {text}')
        LIMIT 100"""
    )
    assert t is not None
    assert t.column_names == ["id", "summary", "sentiment"]
    assert all(label in LABELS for label in t.column("sentiment").to_pylist())
    stats = con.stats()
    assert stats["llm_requests"] > 0
    assert stats["prompt_tokens"] > stats["llm_requests"]
    assert stats["output_tokens"] >= stats["llm_requests"]
    assert stats["rows_out"] == t.num_rows
    # 10 rows pass stars <= 2 and they are 2 distinct texts: filter prompts are sent once each.
    assert stats["deduplicated_requests"] >= 8


def test_constrained_outputs_are_valid_or_counted(con: halo_sql.Connection) -> None:
    t = con.sql(
        """
        SELECT LLM_FILTER('Is this about delivery? {text}') AS f,
               LLM_EXTRACT('Extract from: {text}', '{"type": "object",
                   "properties": {"late": {"type": "boolean"}}, "required": ["late"]}') AS e
        FROM reviews"""
    )
    assert t is not None
    assert set(t.column("f").to_pylist()) <= {True, False}
    nulls = t.column("e").null_count
    # Every NULL extraction is an answer that failed validation, and it is counted.
    assert con.stats()["invalid_answers"] == nulls
    for value in t.column("e").to_pylist():
        assert value is None or set(value) == {"late"}


def test_cached_prompt_tokens_grow_with_a_shared_prefix(con: halo_sql.Connection) -> None:
    instruction = "You are a careful analyst of customer reviews. " * 12
    t = con.sql(f"SELECT LLM_FILTER('{instruction}Is it late? {{text}}') FROM reviews")
    assert t is not None
    stats = con.stats()
    assert stats["llm_requests"] == 4  # four distinct texts
    assert stats["cached_prompt_tokens"] >= 3 * 64  # the 100+ token instruction is reused


def test_batch_answers_equal_one_by_one(con: halo_sql.Connection) -> None:
    sql = "SELECT id, LLM('Rewrite politely: {text}', max_tokens => 6) AS r FROM reviews WHERE id % 4 = $k ORDER BY id"
    params = [{"k": k} for k in range(4)]
    one_by_one = [con.sql(sql, p) for p in params]
    batch = con.execute_batch(sql, params)
    assert not batch.errors
    assert [t.to_pylist() for t in one_by_one] == [t.to_pylist() for t in batch.tables]  # type: ignore[union-attr]


def test_pipelined_chains_in_a_batch_answer_as_one_by_one_in_float32(con: halo_sql.Connection) -> None:
    """Rows move through a two-step chain on their own, next to other queries' rows: under greedy
    decoding in float32 (the tiny model's dtype) every answer is the one-by-one answer."""
    sql = """WITH a AS (SELECT id, LLM('Rewrite politely: {text}', max_tokens => 6) AS r
                       FROM reviews WHERE id % 4 = $k)
             SELECT id, r, LLM('Shorten: {r}', max_tokens => 6) AS s FROM a ORDER BY id"""
    params = [{"k": k} for k in range(4)]
    one_by_one = [con.sql(sql, p) for p in params]
    batch = con.execute_batch(sql, params)
    assert not batch.errors
    assert [t.to_pylist() for t in one_by_one] == [t.to_pylist() for t in batch.tables]  # type: ignore[union-attr]
