"""Equivalence on the real engine: all rules on and all rules off give the same rows under greedy
decoding (vLLM on the tiny random-weight model, shared by the test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

import halo_sql

SETUP = (Path(__file__).parent / "golden" / "rules" / "setup.sql").read_text()

QUERIES = [
    "SELECT id, LLM('Summarize {text}', max_tokens => 6) AS s FROM reviews "
    "WHERE stars <= 2 AND id < 30 AND LLM_FILTER('Late? {text}') ORDER BY id",
    "SELECT id FROM reviews WHERE id < 40 AND LLM_FILTER('Late? {text}') "
    "AND LLM_CLASSIFY('Topic of {text}', ['delivery', 'quality']) = 'delivery' ORDER BY id",
    "WITH t AS (SELECT id, stars, LLM('Title for {text}', max_tokens => 6) AS s FROM reviews) "
    "SELECT id, s FROM t WHERE stars = 3 AND id < 40 ORDER BY id",
    "WITH t AS (SELECT id, LLM('Summarize {text}', max_tokens => 6) AS s FROM reviews) "
    "SELECT count(*) AS n FROM t",
    "WITH t AS (SELECT id, LLM('Summarize {text}', max_tokens => 6) AS s FROM reviews ORDER BY id) "
    "SELECT * FROM t LIMIT 3",
]


@pytest.mark.vllm
def test_all_rules_on_and_off_agree_with_greedy_decoding(vllm_backend: object, tiny_model_dir: Path) -> None:
    con = halo_sql.connect(model=str(tiny_model_dir))
    con.sql(SETUP)
    try:
        for sql in QUERIES:
            con.sql("SET disable_rules = 'all'")
            off = con.sql(sql).to_pylist()
            requests_off = con.session.last_stats.llm_requests
            con.sql("RESET disable_rules")
            on = con.sql(sql).to_pylist()
            assert on == off, sql
            assert con.session.last_stats.llm_requests <= requests_off + 32, sql
    finally:
        con.close()
