"""Errors are part of the interface: every mistake a user can make raises a HaloError subclass
whose message names the problem and the place, never a raw KeyError/AttributeError traceback."""

from __future__ import annotations

import pytest

import halo_sql
from halo_sql.errors import (
    BinderError,
    DataError,
    HaloError,
    ParseError,
    ProgrammingError,
    SourceLocation,
)
from halo_sql.frontends.dbapi import Connection

CASES = [
    # (id, sql, error class, fragments the message must contain, (line, column) or None)
    # -- bad SQL: the line and column of the offending token
    ("sql_syntax", "SELECT id,\n  LLM('Summarize: {text}') FROM reviews WHERE",
     ParseError, ["SQL syntax error near 'WHERE'"], (2, 41)),
    ("sql_unclosed_call", "SELECT LLM('Summarize: {text}' FROM reviews",
     ParseError, ["near 'FROM'", "Expecting )"], (1, 32)),
    ("sql_second_statement", "SELECT 1; SELECT LLM('x {text}') FROM reviews WHERE AND",
     ParseError, ["near 'AND'"], (1, 53)),
    ("sql_without_llm", "SELECT id FROM reviews WHERE", ParseError, ["syntax error"], None),
    # -- unknown tables and columns: DuckDB's own message
    ("unknown_table", "SELECT LLM('x {text}') FROM nowhere",
     BinderError, ["Table with name nowhere does not exist"], None),
    ("unknown_column", "SELECT nope, LLM('x {text}') FROM reviews",
     BinderError, ['Referenced column "nope" not found'], None),
    ("unknown_column_no_llm", "SELECT nope FROM reviews",
     BinderError, ['Referenced column "nope" not found'], None),
    # -- template slots: the slot, and what is available
    ("unknown_slot", "SELECT LLM('Summarize: {txt}') FROM reviews",
     BinderError, ["template slot {txt}", "no column 'txt'", "available: id, product_id, stars, text"],
     (1, 8)),
    ("unknown_qualified_slot", "SELECT LLM('x {r.txt}') FROM reviews r",
     BinderError, ["template slot {r.txt}", "'r' has no column 'txt'", "id, product_id, stars, text"],
     (1, 8)),
    ("unknown_slot_alias", "SELECT LLM('x {q.text}') FROM reviews r",
     BinderError, ["no table or alias 'q'", "available: r"], (1, 8)),
    ("ambiguous_slot", "SELECT LLM('Is {id} right?') FROM reviews r JOIN products p ON p.id = r.product_id",
     BinderError, ["template slot {id} is ambiguous", "p, r", "write {p.id}"], (1, 8)),
    ("bad_template", "SELECT LLM('Summarize {text') FROM reviews",
     ParseError, ["bad prompt template at character", "{column}"], (1, 8)),
    ("empty_template", "SELECT LLM('') FROM reviews", ParseError, ["prompt template is empty"], (1, 8)),
    ("template_not_literal", "SELECT LLM(text) FROM reviews",
     BinderError, ["the template must be a string literal, got text"], None),
    # -- models
    ("unknown_model", "SELECT LLM('x {text}', model => 'gpt9') FROM reviews",
     BinderError, ["unknown model 'gpt9'", "models: default", "CREATE MODEL gpt9"], (1, 8)),
    ("unknown_flockmtl_model",
     "SELECT llm_complete({'model_name': 'gpt9'}, {'prompt': 'x'}, {'t': text}) FROM reviews",
     BinderError, ["unknown model 'gpt9'"], (1, 8)),
    ("drop_unknown_model", "DROP MODEL gpt9", BinderError, ["unknown model 'gpt9'"], None),
    ("unknown_backend", "CREATE MODEL m USING gpt", BinderError, ["unknown backend 'gpt'"], None),
    ("openai_without_model", "CREATE MODEL m USING openai WITH (base_url => 'http://h/v1')",
     BinderError, ["model => 'served-model-name'"], None),
    ("vllm_without_path", "CREATE MODEL m USING vllm", BinderError, ["model => 'path-or-hub-id'"], None),
    ("create_model_syntax", "CREATE MODEL m USING sim WITH (a => )",
     ParseError, ["unexpected ')'", "CREATE MODEL name USING"], (1, 37)),
    ("unknown_sim_option", "CREATE MODEL m USING sim WITH (colour => 'red');\n"
     "SELECT LLM('x {text}', model => 'm') FROM reviews",
     BinderError, ["CREATE MODEL m: unknown option(s) ['colour'] for sim", "context_window"], (1, 32)),
    # -- labels and schemas
    ("labels_not_a_list", "SELECT LLM_CLASSIFY('x {text}', 'good') FROM reviews",
     BinderError, ["labels must be a list literal", "got 'good'"], (1, 8)),
    ("one_label", "SELECT LLM_CLASSIFY('x {text}', ['good']) FROM reviews",
     BinderError, ["at least two labels"], (1, 8)),
    ("duplicate_labels", "SELECT LLM_CLASSIFY('x {text}', ['good', 'good']) FROM reviews",
     BinderError, ["labels must be distinct and non-empty"], (1, 8)),
    ("empty_label", "SELECT LLM_CLASSIFY('x {text}', ['good', ' ']) FROM reviews",
     BinderError, ["labels must be distinct and non-empty"], (1, 8)),
    ("label_not_a_string", "SELECT LLM_CLASSIFY('x {text}', ['good', 1]) FROM reviews",
     BinderError, ["the label must be a string literal, got 1"], (1, 42)),
    ("schema_not_json", "SELECT LLM_EXTRACT('x {text}', '{late: boolean}') FROM reviews",
     BinderError, ["the JSON schema is not valid JSON", "at character 1"], (1, 8)),
    ("schema_not_an_object", "SELECT LLM_EXTRACT('x {text}', '[1, 2]') FROM reviews",
     BinderError, ["the JSON schema must be an object"], (1, 8)),
    ("schema_invalid", "SELECT LLM_EXTRACT('x {text}', '{\"type\": \"objekt\"}') FROM reviews",
     BinderError, ["invalid JSON schema"], (1, 8)),
    # -- argument counts and options
    ("llm_no_arguments", "SELECT LLM() FROM reviews",
     BinderError, ["LLM takes 1 positional argument(s), got 0", "usage: LLM('template {column}'"], (1, 8)),
    ("llm_two_arguments", "SELECT LLM('x {text}', 'y') FROM reviews",
     BinderError, ["LLM takes 1 positional argument(s), got 2"], (1, 8)),
    ("filter_two_arguments", "SELECT LLM_FILTER('x {text}', 'y') FROM reviews",
     BinderError, ["LLM_FILTER takes 1 positional argument(s), got 2"], (1, 8)),
    ("classify_without_labels", "SELECT LLM_CLASSIFY('x {text}') FROM reviews",
     BinderError, ["LLM_CLASSIFY takes 2 positional argument(s), got 1"], (1, 8)),
    ("extract_without_schema", "SELECT LLM_EXTRACT('x {text}') FROM reviews",
     BinderError, ["LLM_EXTRACT takes 2 positional argument(s), got 1"], (1, 8)),
    ("agg_without_column", "SELECT LLM_AGG('Summarize') FROM reviews",
     BinderError, ["LLM_AGG takes 2 positional argument(s), got 1"], (1, 8)),
    ("agg_with_slot", "SELECT LLM_AGG('Summarize {text}', text) FROM reviews",
     BinderError, ["takes no column slots (found {text})"], (1, 8)),
    ("unknown_option", "SELECT LLM('x {text}', colour => 'red') FROM reviews",
     BinderError, ["unknown option(s) ['colour']", "model, max_tokens, temperature"], (1, 8)),
    ("max_tokens_zero", "SELECT LLM('x {text}', max_tokens => 0) FROM reviews",
     BinderError, ["LLM: max_tokens must be a positive integer", "got 0"], (1, 38)),
    ("max_tokens_not_a_number", "SELECT LLM('x {text}', max_tokens => 'many') FROM reviews",
     BinderError, ["max_tokens must be a number, got 'many'"], None),
    ("negative_temperature", "SELECT LLM('x {text}', temperature => -1) FROM reviews",
     BinderError, ["LLM: temperature must be a finite number >= 0, got -1"], (1, 39)),
    ("nested_llm_template", "SELECT LLM(LLM('x {text}')) FROM reviews",
     BinderError, ["the template must be a string literal"], None),
    ("flockmtl_one_argument", "SELECT llm_complete({'model_name': 'default'}) FROM reviews",
     BinderError, ["llm_complete() takes ({'model_name': ...}, {'prompt': ...}"], (1, 8)),
    ("flockmtl_without_prompt",
     "SELECT llm_complete({'model_name': 'default'}, {'text': 'x'}, {'t': text}) FROM reviews",
     BinderError, ["needs a 'prompt' field"], (1, 8)),
    ("flockmtl_stored_prompt",
     "SELECT llm_complete({'model_name': 'default'}, {'prompt_name': 'p'}, {'t': text}) FROM reviews",
     BinderError, ["stored prompts ('prompt_name') are not supported"], (1, 8)),
    ("flockmtl_reduce_without_inputs",
     "SELECT llm_reduce({'model_name': 'default'}, {'prompt': 'x'}) FROM reviews",
     BinderError, ["llm_reduce() needs a third argument"], (1, 8)),
    ("flockmtl_name_halo_style", "SELECT llm_rerank('x {text}') FROM reviews",
     BinderError, ["llm_rerank() takes FlockMTL-style struct arguments"], (1, 8)),
    ("flockmtl_bad_model_parameters",
     "SELECT llm_complete({'model_name': 'default', 'model_parameters': '{oops'}, {'prompt': 'x'})",
     BinderError, ["model_parameters is not valid JSON"], (1, 8)),
    # -- data and statements
    ("bad_cast_in_llm_query", "SELECT LLM('x {text}') FROM reviews WHERE text::INTEGER = 1",
     DataError, ["Could not convert string"], None),
    ("empty_script", " ; -- nothing\n", ProgrammingError, ["empty statement"], None),
    ("missing_parameter", "SELECT LLM('x {text}') FROM reviews WHERE id = ?",
     ProgrammingError, ["Values were not provided for the following parameters"], None),
]


@pytest.mark.parametrize(
    ("sql", "error", "fragments", "where"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_mistakes_raise_clear_halo_errors(
    shop: Connection,
    sql: str,
    error: type[HaloError],
    fragments: list[str],
    where: tuple[int, int] | None,
) -> None:
    params = [] if "?" in sql else None
    with pytest.raises(error) as info:
        shop.session.execute(sql, params) if params is not None else shop.sql(sql)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    if where is not None:
        assert info.value.location == SourceLocation(*where), message
        assert message.startswith(f"line {where[0]}, column {where[1]}: ")


def test_missing_parameter_values_name_the_count(shop: Connection) -> None:
    with pytest.raises(ProgrammingError, match=r"statement has 1 parameter\(s\) but 2 value"):
        shop.sql("SELECT LLM('x {text}') FROM reviews WHERE id = ?", [1, 2])
    with pytest.raises(ProgrammingError, match=r"no value for parameter \$2"):
        shop.sql("SELECT LLM('x {text}') FROM reviews WHERE id = $2", [1])
    with pytest.raises(ProgrammingError, match=r"no value for parameter \$n"):
        shop.sql("SELECT LLM('x {text}') FROM reviews WHERE id = $n", {"m": 1})


def test_every_error_is_a_dbapi_error_too(shop: Connection) -> None:
    with pytest.raises(halo_sql.Error):
        shop.sql("SELECT LLM('x {txt}') FROM reviews")
    assert issubclass(BinderError, halo_sql.ProgrammingError)
    assert issubclass(ParseError, halo_sql.ProgrammingError)
    assert issubclass(halo_sql.ModelError, halo_sql.OperationalError)
    assert issubclass(halo_sql.ProgrammingError, halo_sql.DatabaseError)


def test_no_model_configured_says_how_to_configure_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALO_MODEL", raising=False)
    monkeypatch.delenv("HALO_BACKEND", raising=False)
    con = halo_sql.connect()
    with pytest.raises(BinderError, match="no model given and no default model set") as info:
        con.sql("SELECT LLM('Say hi') AS s")
    assert "CREATE MODEL" in str(info.value) and "HALO_MODEL" in str(info.value)


def test_unknown_backend_in_connect() -> None:
    with pytest.raises(BinderError, match="unknown backend 'gpt'"):
        halo_sql.connect(backend="gpt")


def test_errors_leave_the_connection_usable(shop: Connection) -> None:
    for sql in ("SELECT LLM('x {txt}') FROM reviews", "SELECT LLM(') FROM reviews"):
        with pytest.raises(HaloError):
            shop.sql(sql)
    assert shop.sql("SELECT count(*) AS n FROM reviews").to_pylist() == [{"n": 8}]  # type: ignore[union-attr]


def test_a_bug_inside_the_engine_is_an_internal_error_not_a_raw_traceback(
    shop: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from halo_sql.logical.builder import PlanBuilder

    def broken(self: object, *args: object) -> None:
        raise KeyError("slot")

    monkeypatch.setattr(PlanBuilder, "build", broken)
    with pytest.raises(halo_sql.InternalError, match=r"internal error \(KeyError: 'slot'\)") as info:
        shop.sql("SELECT LLM('x {text}') FROM reviews")
    assert isinstance(info.value.__cause__, KeyError)  # kept for the bug report
