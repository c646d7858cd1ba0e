"""End to end on the sim backend: what a user of `halo_sql.connect` can rely on.

The sim model's answers are hashes of the prompts, so tests never assume an answer; they pin
how answers flow through SQL. A call's value in one clause must agree with the same call's value
projected in SELECT (`answers_of`), whichever operator computes it.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pytest

import halo_sql
from halo_sql.errors import ModelError
from halo_sql.frontends.dbapi import Connection
from halo_sql.llm.sim import SimBackend

LATE = "LLM_FILTER('Does the review complain about late delivery? {text}')"
TOPIC = "LLM_CLASSIFY('Topic of the review: {text}', ['delivery', 'quality', 'price'])"


def table(con: Connection, sql: str, params: Any = None) -> pa.Table:
    result = con.sql(sql, params)
    assert result is not None
    return result


def rows(con: Connection, sql: str, params: Any = None) -> list[dict[str, Any]]:
    return table(con, sql, params).to_pylist()


def answers_of(con: Connection, expression: str, source: str = "reviews") -> dict[int, Any]:
    """id -> the value of `expression` for that row, computed as a plain projection."""
    return {r["id"]: r["v"] for r in rows(con, f"SELECT id, {expression} AS v FROM {source}")}


# -- LLM functions in every clause --------------------------------------------------------------


def test_select_gives_one_answer_per_row_and_null_for_null_text(shop: Connection) -> None:
    got = answers_of(shop, "LLM('Summarize in one sentence: {text}')")
    assert sorted(got) == list(range(1, 9))
    assert got[6] is None
    assert all(isinstance(v, str) and v for k, v in got.items() if k != 6)
    assert got[1] == got[8]  # same text, same prompt, same answer


def test_where_keeps_exactly_the_rows_the_filter_accepts(shop: Connection) -> None:
    late = answers_of(shop, LATE)
    kept = [r["id"] for r in rows(shop, f"SELECT id FROM reviews WHERE {LATE} ORDER BY id")]
    assert kept == sorted(k for k, v in late.items() if v is True)
    negated = [r["id"] for r in rows(shop, f"SELECT id FROM reviews WHERE NOT {LATE} ORDER BY id")]
    assert negated == sorted(k for k, v in late.items() if v is False)  # NULL passes neither


def test_where_combines_relational_and_llm_predicates(shop: Connection) -> None:
    late = answers_of(shop, LATE)
    stars = {r["id"]: r["stars"] for r in rows(shop, "SELECT id, stars FROM reviews")}
    kept = rows(shop, f"SELECT id FROM reviews WHERE stars <= 2 AND {LATE} ORDER BY id")
    assert [r["id"] for r in kept] == sorted(k for k in late if late[k] and stars[k] <= 2)
    either = rows(shop, f"SELECT id FROM reviews WHERE stars = 5 OR {LATE} ORDER BY id")
    assert [r["id"] for r in either] == sorted(k for k in late if late[k] or stars[k] == 5)


def test_join_on_keeps_the_pairs_the_filter_accepts(shop: Connection) -> None:
    about = "LLM_FILTER('Is the review {r.text} about a {p.name}?')"
    pairs = rows(
        shop,
        f"SELECT r.id, p.name, {about} AS ok FROM reviews r JOIN products p ON p.id = r.product_id",
    )
    expected = sorted((r["id"], r["name"]) for r in pairs if r["ok"])
    joined = rows(
        shop,
        f"SELECT r.id, p.name FROM reviews r JOIN products p ON p.id = r.product_id AND {about}",
    )
    assert sorted((r["id"], r["name"]) for r in joined) == expected
    outer = rows(
        shop,
        f"SELECT r.id, p.name FROM reviews r LEFT JOIN products p "
        f"ON p.id = r.product_id AND {about} ORDER BY r.id",
    )
    ok = {r["id"]: r["ok"] for r in pairs}
    assert [(r["id"], r["name"] is not None) for r in outer] == [(i, bool(ok[i])) for i in range(1, 9)]


def test_case_branches_on_the_answer_and_null_takes_else(shop: Connection) -> None:
    late = answers_of(shop, LATE)
    got = answers_of(shop, f"CASE WHEN {LATE} THEN 'late' ELSE 'other' END")
    assert got == {k: "late" if v else "other" for k, v in late.items()}
    assert got[6] == "other"


def test_order_by_sorts_on_the_answer(shop: Connection) -> None:
    topic = answers_of(shop, TOPIC)
    ordered = [r["id"] for r in rows(shop, f"SELECT id FROM reviews ORDER BY {TOPIC} NULLS LAST, id")]
    assert ordered == sorted(topic, key=lambda k: (topic[k] is None, topic[k] or "", k))


def test_group_by_groups_rows_by_the_answer(shop: Connection) -> None:
    topic = answers_of(shop, TOPIC)
    expected = collections.Counter(topic.values())
    for sql in (
        f"SELECT {TOPIC} AS topic, count(*) AS n FROM reviews GROUP BY 1",
        f"SELECT {TOPIC} AS topic, count(*) AS n FROM reviews GROUP BY {TOPIC}",
        f"SELECT topic, count(*) AS n FROM (SELECT {TOPIC} AS topic FROM reviews) GROUP BY topic",
    ):
        assert {r["topic"]: r["n"] for r in rows(shop, sql)} == expected


def test_filter_inside_an_aggregate(shop: Connection) -> None:
    late = answers_of(shop, LATE)
    category = {r["id"]: r["category"] for r in rows(
        shop, "SELECT r.id, p.category FROM reviews r JOIN products p ON p.id = r.product_id"
    )}
    got = rows(
        shop,
        f"SELECT p.category, AVG(CASE WHEN {LATE.replace('{text}', '{r.text}')} THEN 1 ELSE 0 END) "
        "AS share, count(*) FILTER (WHERE "
        f"{LATE.replace('{text}', '{r.text}')}) AS n "
        "FROM reviews r JOIN products p ON p.id = r.product_id GROUP BY 1 ORDER BY 1",
    )
    for row in got:
        ids = [k for k, c in category.items() if c == row["category"]]
        assert row["share"] == pytest.approx(sum(bool(late[k]) for k in ids) / len(ids))
        assert row["n"] == sum(bool(late[k]) for k in ids)


def test_call_on_group_keys_is_asked_once_per_group(shop: Connection) -> None:
    got = rows(
        shop,
        "SELECT category, LLM('Describe the {category} category') AS blurb, count(*) AS n "
        "FROM products GROUP BY category ORDER BY category",
    )
    assert [(r["category"], r["n"]) for r in got] == [("home", 2), ("kitchen", 2)]
    assert all(r["blurb"] for r in got)
    assert shop.stats()["llm_requests"] == 2


def test_having_filters_groups(shop: Connection) -> None:
    popular = "LLM_FILTER('Is product {product_id} popular?')"
    asked = {r["product_id"]: r["v"] for r in rows(
        shop, f"SELECT product_id, {popular} AS v FROM reviews GROUP BY product_id"
    )}
    kept = rows(shop, f"SELECT product_id FROM reviews GROUP BY product_id HAVING {popular}")
    assert sorted(r["product_id"] for r in kept) == sorted(k for k, v in asked.items() if v)


# -- LLM_AGG, LLM_CLASSIFY, LLM_EXTRACT -----------------------------------------------------------


def test_llm_agg_reduces_each_group_to_one_answer(shop: Connection) -> None:
    sql = "SELECT product_id, LLM_AGG('Summarize these reviews', text) AS s FROM reviews GROUP BY 1 ORDER BY 1"
    got = rows(shop, sql)
    assert [r["product_id"] for r in got] == [1, 2, 3, 4]
    assert all(isinstance(r["s"], str) and r["s"] for r in got)
    assert shop.stats()["llm_requests"] == 4  # every group fits the context: one request each
    assert rows(shop, sql) == got


def test_llm_agg_of_a_group_without_items_is_null_and_free(shop: Connection) -> None:
    got = rows(shop, "SELECT LLM_AGG('Summarize', text) AS s FROM reviews WHERE id = 6")
    assert got == [{"s": None}]
    assert shop.stats()["llm_requests"] == 0


def test_llm_agg_reduces_hierarchically_when_a_group_does_not_fit(shop: Connection) -> None:
    shop.sql("CREATE MODEL small USING sim WITH (context_window => 256)")
    shop.sql(
        "CREATE TABLE notes AS SELECT i % 2 AS g, 'Note ' || i || ': the parcel was handed to a "
        "neighbour and the customer waited for a refund.' AS note FROM range(40) t(i)"
    )
    got = rows(
        shop,
        "SELECT g, LLM_AGG('Summarize the notes', note, model => 'small') AS s "
        "FROM notes GROUP BY g ORDER BY g",
    )
    stats = shop.stats()
    assert [r["g"] for r in got] == [0, 1] and all(r["s"] for r in got)
    assert stats["llm_requests"] > 2  # chunks first, then the chunks' answers
    assert stats["backend_calls"] >= 2  # one batch per round
    assert stats["failed_requests"] == 0  # every prompt fitted the 256-token window


def test_a_request_the_model_cannot_answer_fails_the_statement_by_default(shop: Connection) -> None:
    shop.sql("CREATE MODEL small USING sim WITH (context_window => 256)")
    shop.sql("CREATE TABLE notes AS SELECT 1 AS g, repeat('word ', 400) AS note UNION ALL SELECT 2, 'ok'")
    with pytest.raises(ModelError, match=r"1 LLM request\(s\) failed; first: prompt of \d+ tokens"):
        shop.sql("SELECT g, LLM('Summarize: {note}', model => 'small') AS s FROM notes")


def test_llm_agg_group_with_an_unanswerable_part_is_null(shop: Connection) -> None:
    shop.sql("CREATE MODEL small USING sim WITH (context_window => 256)")
    shop.sql("CREATE TABLE notes AS SELECT 1 AS g, repeat('word ', 400) AS note UNION ALL SELECT 2, 'ok'")
    shop.sql("SET llm_failures = 'null'")
    got = rows(shop, "SELECT g, LLM_AGG('Summarize', note, model => 'small') AS s FROM notes GROUP BY g ORDER BY g")
    assert got[0]["s"] is None and got[1]["s"]
    assert shop.stats()["failed_requests"] == 1


def test_classify_answers_are_labels(shop: Connection) -> None:
    labels = ["Late delivery", "broken item", "fine"]
    got = answers_of(shop, f"LLM_CLASSIFY('What happened? {{text}}', {labels!r})")
    assert got[6] is None
    assert {v for k, v in got.items() if k != 6} <= set(labels)


def test_extract_returns_a_struct_valid_under_the_schema(shop: Connection) -> None:
    schema = {
        "type": "object",
        "properties": {
            "late": {"type": "boolean"},
            "days": {"type": "integer", "minimum": 0, "maximum": 30},
            "mood": {"enum": ["calm", "angry"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["late", "days", "mood", "tags"],
    }
    result = table(
        shop, f"SELECT id, LLM_EXTRACT('Facts in {{text}}', '{json.dumps(schema)}') AS facts FROM reviews"
    )
    facts = result.schema.field("facts").type
    assert sorted((f.name, str(f.type)) for f in facts) == [
        ("days", "int64"), ("late", "bool"), ("mood", "string"), ("tags", "list<l: string>"),
    ]
    for row in result.to_pylist():
        if row["id"] == 6:
            assert row["facts"] is None
        else:
            jsonschema.validate(row["facts"], schema)


def test_extract_shorthand_schema_and_field_access(shop: Connection) -> None:
    extract = "LLM_EXTRACT('Facts in {text}', '{\"late\": \"boolean\", \"days\": \"integer\"}')"
    whole = answers_of(shop, extract)
    days = answers_of(shop, f"{extract}.days")
    assert days == {k: None if v is None else v["days"] for k, v in whole.items()}
    assert all(isinstance(v, int) for k, v in days.items() if k != 6)


# -- options --------------------------------------------------------------------------------------


def test_model_option_picks_the_model(shop: Connection) -> None:
    shop.sql("CREATE MODEL other USING sim WITH (seed => 7)")
    default = answers_of(shop, "LLM('Summarize: {text}')")
    other = answers_of(shop, "LLM('Summarize: {text}', model => 'other')")
    assert other != default
    assert answers_of(shop, "LLM('Summarize: {text}', model => 'OTHER')") == other


def test_max_tokens_bounds_the_answer(shop: Connection) -> None:
    got = answers_of(shop, "LLM('Summarize: {text}', max_tokens => 3)")
    stats = shop.stats()
    assert stats["output_tokens"] <= 3 * stats["llm_requests"]
    tokens = SimBackend().count_tokens
    assert all(tokens(v) <= 3 for v in got.values() if v is not None)
    longer = answers_of(shop, "LLM('Summarize: {text}', max_tokens => 64)")
    assert any(tokens(v) > 3 for v in longer.values() if v is not None)


def test_temperature_changes_answers_reproducibly(shop: Connection) -> None:
    greedy = answers_of(shop, "LLM('Summarize: {text}')")
    warm = answers_of(shop, "LLM('Summarize: {text}', temperature => 0.7)")
    assert warm != greedy
    assert answers_of(shop, "LLM('Summarize: {text}', temperature => 0.7)") == warm


# -- FlockMTL-compatible calls ------------------------------------------------------------------


def test_flockmtl_complete_and_filter(shop: Connection) -> None:
    complete = answers_of(
        shop, "llm_complete({'model_name': 'default'}, {'prompt': 'Summarize'}, {'review': text})"
    )
    assert complete[6] is None and all(v for k, v in complete.items() if k != 6)
    flt = "llm_filter({'model_name': 'default'}, {'prompt': 'Is it negative?'}, {'review': text})"
    accepted = answers_of(shop, flt)
    kept = rows(shop, f"SELECT id FROM reviews WHERE {flt} ORDER BY id")
    assert [r["id"] for r in kept] == sorted(k for k, v in accepted.items() if v)


def test_flockmtl_complete_without_inputs_and_with_model_parameters(shop: Connection) -> None:
    got = rows(
        shop,
        "SELECT llm_complete({'model_name': 'default', 'model_parameters': {'max_tokens': 2}}, "
        "{'prompt': 'Say hello'}) AS s",
    )
    assert got[0]["s"] and shop.stats()["output_tokens"] <= 2


def test_flockmtl_reduce_gives_one_answer_per_group(shop: Connection) -> None:
    got = rows(
        shop,
        "SELECT product_id, llm_reduce({'model_name': 'default'}, {'prompt': 'Summarize'}, "
        "{'review': text, 'stars': stars}) AS s FROM reviews GROUP BY 1 ORDER BY 1",
    )
    assert len(got) == 4 and all(r["s"] for r in got)
    assert len({r["s"] for r in got}) > 1  # the groups' own items are in the prompts


def test_flockmtl_rerank_first_last_order_the_groups_items(shop: Connection) -> None:
    items = collections.defaultdict(list)
    for r in rows(shop, "SELECT product_id, id, text FROM reviews"):
        items[r["product_id"]].append({"review": r["text"], "id": r["id"]})
    inputs = "{'model_name': 'default'}, {'prompt': 'Most helpful first'}, {'review': text, 'id': id}"
    got = rows(
        shop,
        f"SELECT product_id, llm_rerank({inputs}) AS ranked, llm_first({inputs}) AS best, "
        f"llm_last({inputs}) AS worst FROM reviews GROUP BY 1 ORDER BY 1",
    )
    for row in got:
        ranked = json.loads(row["ranked"])
        key = sorted(items[row["product_id"]], key=json.dumps)
        assert sorted(ranked, key=json.dumps) == key  # a permutation of the group's items
        assert json.loads(row["best"]) == ranked[0]
        assert json.loads(row["worst"]) == ranked[-1]


# -- models ---------------------------------------------------------------------------------------


def test_create_show_drop_models(shop: Connection) -> None:
    shop.sql("CREATE MODEL small USING sim WITH (context_window => 256)")
    shown = rows(shop, "SHOW MODELS")
    assert shown == [
        {"name": "default", "backend": "sim", "model": None, "options": "{}", "is_default": True},
        {"name": "small", "backend": "sim", "model": None,
         "options": '{"context_window": 256}', "is_default": False},
    ]
    with pytest.raises(halo_sql.BinderError, match="already exists"):
        shop.sql("CREATE MODEL small USING sim")
    shop.sql("CREATE MODEL IF NOT EXISTS small USING sim WITH (context_window => 512)")
    assert rows(shop, "SHOW MODELS")[1]["options"] == '{"context_window": 256}'
    shop.sql("CREATE OR REPLACE MODEL small USING sim WITH (context_window => 512)")
    assert rows(shop, "SHOW MODELS")[1]["options"] == '{"context_window": 512}'
    shop.sql("DROP MODEL small")
    shop.sql("DROP MODEL IF EXISTS small")
    assert [r["name"] for r in rows(shop, "SHOW MODELS")] == ["default"]
    with pytest.raises(halo_sql.BinderError, match="unknown model 'small'"):
        shop.sql("DROP MODEL small")


def test_the_first_model_created_becomes_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALO_MODEL", raising=False)
    monkeypatch.delenv("HALO_BACKEND", raising=False)
    con = halo_sql.connect()
    with pytest.raises(halo_sql.BinderError, match="no default model"):
        con.sql("SELECT LLM('Say hi') AS s")
    con.sql("CREATE MODEL mine USING sim")
    assert rows(con, "SELECT LLM('Say hi') AS s")[0]["s"]
    assert rows(con, "SHOW MODELS")[0]["is_default"] is True


def test_models_persist_in_the_database_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALO_MODEL", raising=False)
    monkeypatch.delenv("HALO_BACKEND", raising=False)
    path = str(tmp_path / "shop.duckdb")
    with halo_sql.connect(path, backend="sim") as con:
        con.sql("CREATE MODEL small USING sim WITH (context_window => 256)")
        con.sql("CREATE MODEL gone USING sim")
        con.sql("DROP MODEL gone")
    with halo_sql.connect(path) as con:
        # The only model stored in the database is the default when connect() names none.
        assert rows(con, "SHOW MODELS") == [
            {"name": "small", "backend": "sim", "model": None,
             "options": '{"context_window": 256}', "is_default": True},
        ]
        assert rows(con, "SELECT LLM('Say hi', model => 'small') AS s")[0]["s"]
        assert rows(con, "SELECT LLM('Say hi') AS s")[0]["s"]
    with halo_sql.connect(":memory:", backend="sim") as con:  # nothing leaks into other databases
        assert [r["name"] for r in rows(con, "SHOW MODELS")] == ["default"]


# -- composition: CTEs, derived tables, CREATE TABLE AS, INSERT ----------------------------------


def test_chained_ctes_compose_like_nested_steps(shop: Connection) -> None:
    late = answers_of(shop, LATE)
    summary = answers_of(shop, "LLM('Summarize: {text}')")
    got = rows(
        shop,
        f"WITH late AS (SELECT id, text FROM reviews WHERE {LATE}), "
        "summarized AS (SELECT id, LLM('Summarize: {text}') AS s FROM late) "
        "SELECT * FROM summarized ORDER BY id",
    )
    assert got == [{"id": k, "s": summary[k]} for k in sorted(late) if late[k]]


def test_ctes_with_llm_calls_are_computed_once(shop: Connection) -> None:
    shop.sql(
        f"WITH late AS (SELECT id, text FROM reviews WHERE {LATE}) "
        "SELECT a.id FROM late a JOIN late b ON a.id = b.id"
    )
    assert shop.stats()["llm_requests"] == 6 and shop.stats()["deduplicated_requests"] == 1


def test_derived_table_filters_on_llm_output(shop: Connection) -> None:
    topic = answers_of(shop, TOPIC)
    got = rows(
        shop,
        f"SELECT d.id FROM (SELECT id, {TOPIC} AS topic FROM reviews) AS d "
        "WHERE d.topic = 'delivery' ORDER BY d.id",
    )
    assert [r["id"] for r in got] == sorted(k for k, v in topic.items() if v == "delivery")


def test_create_table_as_and_insert_store_the_answers(shop: Connection) -> None:
    summary = answers_of(shop, "LLM('Summarize: {text}')")
    created = table(shop, "CREATE TABLE summaries AS SELECT id, LLM('Summarize: {text}') AS s FROM reviews")
    assert created.to_pylist() == [{"Count": 8}]
    assert {r["id"]: r["s"] for r in rows(shop, "SELECT * FROM summaries")} == summary
    shop.sql("CREATE TABLE later (s VARCHAR, id INTEGER)")
    shop.sql("INSERT INTO later (id, s) SELECT id, LLM('Summarize: {text}') FROM reviews WHERE id < 3")
    assert rows(shop, "SELECT id, s FROM later ORDER BY id") == [
        {"id": 1, "s": summary[1]}, {"id": 2, "s": summary[2]},
    ]


# -- NULLs, deduplication, stats -----------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "LLM('Summarize: {text}')",
        "LLM_FILTER('Late? {text}')",
        "LLM_CLASSIFY('Topic: {text}', ['a', 'b'])",
        "LLM_EXTRACT('Facts: {text}', '{\"late\": \"boolean\"}')",
        "llm_complete({'model_name': 'default'}, {'prompt': 'Summarize'}, {'review': text})",
        "LLM('Compare {text} with {name}')",
    ],
)
def test_null_inputs_give_null_without_requests(shop: Connection, expression: str) -> None:
    got = rows(
        shop,
        f"SELECT {expression} AS v FROM reviews r JOIN products p ON p.id = r.product_id "
        "WHERE r.text IS NULL",
    )
    assert got == [{"v": None}]
    assert shop.stats()["llm_requests"] == 0


def test_identical_prompts_in_a_statement_are_sent_once(shop: Connection) -> None:
    shop.sql("SELECT id, LLM('Summarize: {text}') AS s FROM reviews")
    stats = shop.stats()
    assert (stats["llm_requests"], stats["deduplicated_requests"]) == (6, 1)  # reviews 1 and 8
    shop.sql(
        "SELECT id, LLM('Summarize: {text}') AS a, upper(LLM('Summarize: {text}')) AS b "
        "FROM reviews WHERE LLM('Summarize: {text}') IS NOT NULL"
    )
    assert shop.stats()["llm_requests"] == 6


def test_stats_describe_the_last_statement(shop: Connection) -> None:
    result = table(shop, f"SELECT id, LLM('Summarize: {{text}}') AS s FROM reviews WHERE {LATE}")
    stats = shop.stats()
    assert {"llm_requests", "prompt_tokens", "cached_prompt_tokens", "output_tokens", "rows_out",
            "seconds", "deduplicated_requests", "invalid_answers", "failed_requests"} <= set(stats)
    assert stats["rows_out"] == result.num_rows
    assert stats["llm_requests"] >= 6 and stats["prompt_tokens"] > stats["llm_requests"]
    assert 0 <= stats["cached_prompt_tokens"] < stats["prompt_tokens"]
    assert stats["computed_prompt_tokens"] == stats["prompt_tokens"] - stats["cached_prompt_tokens"]
    assert stats["output_tokens"] >= stats["llm_requests"] and stats["seconds"] > 0
    shop.sql("SELECT count(*) FROM reviews")
    assert shop.stats()["llm_requests"] == 0 and shop.stats()["rows_out"] == 1


def test_rows_sharing_an_instruction_hit_the_prefix_cache(shop: Connection) -> None:
    shop.sql("CREATE MODEL cached USING sim WITH (block_size => 4, seed => 11)")
    shop.session.backend("cached").reset_cache()  # type: ignore[attr-defined]
    instruction = "You are a careful analyst of customer reviews for a home goods shop. " * 3
    shop.sql(f"SELECT LLM('{instruction}Summarize: {{text}}', model => 'cached') FROM reviews")
    stats = shop.stats()
    # The first prompt computes the instruction; the other five reuse its cached blocks.
    assert stats["cached_prompt_tokens"] >= 5 * (SimBackend().count_tokens(instruction) - 4)


# -- LIMIT early stop and relational predicates first ---------------------------------------------


@pytest.fixture
def thousand(shop: Connection) -> Connection:
    shop.sql(
        "CREATE TABLE items AS SELECT i AS id, i % 10 AS bucket, "
        "'Item ' || i || ' arrived in a box' AS text FROM range(1000) t(i)"
    )
    return shop


def test_relational_predicates_run_before_llm_predicates(thousand: Connection) -> None:
    for where in (f"bucket = 3 AND {LATE}", f"{LATE} AND bucket = 3"):
        thousand.sql(f"SELECT id FROM items WHERE {where}")
        assert thousand.stats()["llm_requests"] == 100  # only the rows bucket = 3 keeps


def test_limit_stops_llm_work_early(thousand: Connection) -> None:
    everything = table(thousand, f"SELECT id FROM items WHERE bucket = 3 AND {LATE}")
    without_limit = thousand.stats()["llm_requests"]
    limited = table(thousand, f"SELECT id FROM items WHERE bucket = 3 AND {LATE} LIMIT 5")
    with_limit = thousand.stats()["llm_requests"]
    assert limited.num_rows == 5
    assert set(limited.column("id").to_pylist()) <= set(everything.column("id").to_pylist())
    assert without_limit == 100
    assert with_limit <= 30, with_limit  # far below the 100 rows the predicate keeps


def test_limit_early_stop_feeds_only_needed_rows_to_maps(thousand: Connection) -> None:
    got = table(
        thousand,
        f"SELECT id, LLM('Summarize: {{text}}') AS s FROM items WHERE bucket = 3 AND {LATE} LIMIT 5",
    )
    assert got.num_rows == 5
    thousand.sql(f"SELECT id FROM items WHERE bucket = 3 AND {LATE} LIMIT 5")
    filter_only = thousand.stats()["llm_requests"]
    thousand.sql(
        f"SELECT id, LLM('Summarize: {{text}}') AS s FROM items WHERE bucket = 3 AND {LATE} LIMIT 5"
    )
    assert thousand.stats()["llm_requests"] == filter_only + 5


def test_limit_with_order_by_asks_only_for_the_first_rows(thousand: Connection) -> None:
    got = rows(thousand, "SELECT id AS k, LLM('Summarize: {text}') AS s FROM items ORDER BY k DESC LIMIT 3")
    assert [r["k"] for r in got] == [999, 998, 997]
    assert thousand.stats()["llm_requests"] == 3


def test_limit_returns_all_rows_it_asks_for_behind_two_llm_filters(thousand: Connection) -> None:
    angry = "LLM_FILTER('Is {text} angry?')"
    full = table(thousand, f"SELECT id FROM items WHERE {LATE} AND {angry}").num_rows
    assert full >= 20
    limited = table(thousand, f"SELECT id FROM items WHERE {LATE} AND {angry} LIMIT 20")
    assert limited.num_rows == 20


def test_limit_is_not_cut_short_by_a_predicate_left_to_duckdb(thousand: Connection) -> None:
    sql = f"SELECT id FROM items WHERE {LATE} OR id IN (SELECT id FROM items WHERE bucket = 0)"
    full = table(thousand, sql).num_rows
    assert full > 20
    assert table(thousand, f"{sql} LIMIT 20").num_rows == 20


# -- invalid answers ------------------------------------------------------------------------------


def test_invalid_answers_become_null_and_are_counted(
    shop: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SimBackend, "_text_for", lambda self, output, rng, max_tokens: "maybe")
    for expression in (
        "LLM_FILTER('Late? {text}')",
        "LLM_CLASSIFY('Topic: {text}', ['delivery', 'quality'])",
        "LLM_EXTRACT('Facts: {text}', '{\"late\": \"boolean\"}')",
    ):
        got = answers_of(shop, expression)
        assert set(got.values()) == {None}  # never a silent default such as false
        stats = shop.stats()
        assert stats["invalid_answers"] == 7 and stats["llm_requests"] == 6
    assert rows(shop, "SELECT id FROM reviews WHERE LLM_FILTER('Late? {text}')") == []


def test_answers_breaking_the_schema_are_invalid(shop: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimBackend, "_text_for", lambda self, output, rng, max_tokens: '{"late": "yes"}')
    got = answers_of(shop, "LLM_EXTRACT('Facts: {text}', '{\"late\": \"boolean\"}')")
    assert set(got.values()) == {None}
    assert shop.stats()["invalid_answers"] == 7


def test_invalid_answers_in_calls_duckdb_evaluates(shop: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimBackend, "_text_for", lambda self, output, rng, max_tokens: "[]")
    got = rows(
        shop,
        "SELECT product_id, llm_first({'model_name': 'default'}, {'prompt': 'Best'}, "
        "{'review': text}) AS best FROM reviews GROUP BY 1",
    )
    assert [r["best"] for r in got] == [None] * 4
    assert shop.stats()["invalid_answers"] == 4


# -- result shape and inputs -----------------------------------------------------------------------


def test_result_columns_keep_duckdbs_names(shop: Connection) -> None:
    sql = "SELECT id AS \"ID\", stars + 1, upper(text), count(*) OVER () FROM reviews"
    plain = shop.duckdb.sql(sql).columns
    with_llm = table(shop, sql.replace(" FROM", ", LLM('Summarize: {text}') FROM")).column_names
    assert with_llm == [*plain, "LLM('Summarize: {text}')"]
    grouped = table(shop, f"SELECT {TOPIC}, count(*) FROM reviews GROUP BY 1 ORDER BY 2").column_names
    assert grouped == [TOPIC, "count_star()"]


def test_parameters_bind_in_llm_statements(shop: Connection) -> None:
    summary = answers_of(shop, "LLM('Summarize: {text}')")
    for sql, params in (
        ("SELECT id, LLM('Summarize: {text}') AS s FROM reviews WHERE id < ? ORDER BY id", [3]),
        ("SELECT id, LLM('Summarize: {text}') AS s FROM reviews WHERE id < $1 ORDER BY id", [3]),
        ("SELECT id, LLM('Summarize: {text}') AS s FROM reviews WHERE id < $n ORDER BY id", {"n": 3}),
    ):
        assert rows(shop, sql, params) == [{"id": 1, "s": summary[1]}, {"id": 2, "s": summary[2]}]


def test_slots_read_values_table_functions_and_registered_data(shop: Connection) -> None:
    got = rows(shop, "SELECT LLM('Say {greeting}') AS s FROM (VALUES ('hi'), ('ho')) AS t(greeting)")
    assert len(got) == 2 and all(r["s"] for r in got)
    got = rows(shop, "SELECT LLM('Count {n}') AS s FROM (VALUES (1), (2), (NULL)) AS v(n)")
    assert [r["s"] is None for r in got] == [False, False, True]
    assert len(rows(shop, "SELECT LLM('Number {range}') AS s FROM range(3)")) == 3
    shop.register("notes", pa.table({"note": ["a", "b"]}))
    assert len(rows(shop, "SELECT note, LLM('Say {note}') AS s FROM notes")) == 2


def test_tpch_query_with_llm_calls_over_joins(tpch: Connection) -> None:
    sql = (
        "SELECT r.r_name, LLM_AGG('Summarize the nations', n.n_name) AS summary, "
        "count(*) AS nations FROM region r JOIN nation n ON n.n_regionkey = r.r_regionkey "
        "GROUP BY r.r_name ORDER BY r.r_name"
    )
    got = rows(tpch, sql)
    assert [r["nations"] for r in got] == [5, 5, 5, 5, 5]
    assert tpch.stats()["llm_requests"] == 5 and all(r["summary"] for r in got)
    urgent = rows(
        tpch,
        "SELECT o.o_orderkey, LLM_CLASSIFY('Priority of {o.o_comment}', ['high', 'low']) AS p "
        "FROM orders o JOIN customer c ON c.c_custkey = o.o_custkey "
        "WHERE c.c_mktsegment = 'BUILDING' AND o.o_totalprice > 300000 ORDER BY 1 LIMIT 10",
    )
    assert len(urgent) == 10 and {r["p"] for r in urgent} <= {"high", "low"}
    assert tpch.stats()["llm_requests"] <= 10
