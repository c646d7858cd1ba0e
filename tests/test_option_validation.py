"""Options are checked where they are written: CREATE MODEL/TOOL/AGENT options and the named
arguments of LLM functions refuse non-finite, negative, fractional, duplicated and mistyped
values with the option's name and place; a free-text answer used as a condition and EXPLAIN of
something that is not SQL are clear errors. None of these may end as an InternalError."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import halo_sql
from halo_sql.errors import (
    BinderError,
    HaloError,
    NotSupportedError,
    ParseError,
    SourceLocation,
)


@pytest.fixture
def con() -> Iterator[halo_sql.Connection]:
    con = halo_sql.connect(backend="sim")
    con.sql("CREATE TABLE t AS SELECT range AS id, 'x' || range AS s FROM range(3)")
    yield con
    con.close()


# (id, statement, error type, message fragments, (line, column) or None)
CASES = [
    # -- named arguments of LLM functions ---------------------------------------------------------
    ("max_tokens_infinite", "SELECT LLM('hi {s}', max_tokens => 1e309) FROM t",
     BinderError, ["LLM: max_tokens must be a positive integer", "got inf"], (1, 36)),
    ("max_tokens_fractional", "SELECT LLM('hi {s}', max_tokens => 2.5) FROM t",
     BinderError, ["max_tokens must be a positive integer", "got 2.5"], (1, 36)),
    ("max_tokens_absurd", "SELECT LLM('hi {s}', max_tokens => 1e20) FROM t",
     BinderError, ["max_tokens must be a positive integer (at most 1048576)"], (1, 36)),
    ("max_tokens_text", "SELECT LLM('hi {s}', max_tokens => '5') FROM t",
     BinderError, ["max_tokens must be a number, got '5'"], (1, 36)),
    ("temperature_infinite", "SELECT LLM('hi {s}', temperature => 1e309) FROM t",
     BinderError, ["temperature must be a finite number >= 0, got inf"], (1, 37)),
    ("temperature_negative", "SELECT LLM('hi {s}', temperature => -0.5) FROM t",
     BinderError, ["temperature must be a finite number >= 0, got -0.5"], (1, 37)),
    ("option_twice", "SELECT LLM('hi {s}', max_tokens => 3, max_tokens => 4) FROM t",
     BinderError, ["LLM: option max_tokens is given twice"], (1, 53)),
    ("flockmtl_infinite", "SELECT llm_complete({'model_name': 'default', 'max_tokens': 1e309}, "
     "{'prompt': 'x'}, {'s': s}) FROM t",
     BinderError, ["max_tokens must be a positive integer", "got inf"], None),
    ("flockmtl_nan_json", "SELECT llm_complete({'model_name': 'default', 'model_parameters': "
     "'{\"temperature\": NaN}'}, {'prompt': 'x'}, {'s': s}) FROM t",
     BinderError, ["model_parameters holds NaN, which is not a number"], (1, 8)),
    ("extract_unknown_type", "SELECT LLM_EXTRACT('x {s}', '{\"a\": \"strnig\"}') FROM t",
     BinderError, ["LLM_EXTRACT: field 'a' has unknown type 'strnig'"], (1, 8)),
    # -- conditions and EXPLAIN -------------------------------------------------------------------
    ("free_text_as_where", "SELECT * FROM t WHERE LLM('is {s} ok')",
     BinderError, ["LLM(...) answers free text (VARCHAR), which is not a condition",
                   "LLM_FILTER"], (1, 23)),
    ("free_text_under_not", "SELECT * FROM t WHERE id > 0 AND NOT (LLM('is {s} ok'))",
     BinderError, ["which is not a condition"], (1, 39)),
    ("label_as_join_condition", "SELECT * FROM t a JOIN t b ON LLM_CLASSIFY('{a.s} {b.s}', "
     "['p', 'q'])", BinderError, ["LLM_CLASSIFY(...) answers a label"], (1, 31)),
    ("explain_not_sql", "EXPLAIN garbage here", ParseError, ["EXPLAIN: Parser Error"], None),
    ("explain_unknown_table", "EXPLAIN SELECT * FROM nope", BinderError, ["EXPLAIN:", "nope"], None),
    ("explain_own_statement", "EXPLAIN CREATE MODEL x USING sim", NotSupportedError,
     ["CREATE MODEL is one of halo-sql's own statements"], None),
    # -- CREATE MODEL -----------------------------------------------------------------------------
    ("model_infinite", "CREATE MODEL m USING sim WITH (context_window => 1e309)",
     BinderError, ["CREATE MODEL m: context_window must be a positive integer, got inf"], (1, 32)),
    ("model_negative", "CREATE MODEL m USING sim WITH (context_window => -5)",
     BinderError, ["context_window must be a positive integer, got -5"], (1, 32)),
    ("model_fractional", "CREATE MODEL m USING sim WITH (seed => 1, block_size => 2.5)",
     BinderError, ["block_size must be a positive integer, got 2.5"], (1, 43)),
    ("model_option_twice", "CREATE MODEL m USING sim WITH (seed => 1, seed => 2)",
     ParseError, ["option 'seed' is given twice (first at line 1, column 32)"], (1, 43)),
    ("model_unknown_option", "CREATE MODEL m USING sim WITH (bogus => 1)",
     BinderError, ["unknown option(s) ['bogus'] for sim"], (1, 32)),
    ("model_path_not_text", "CREATE MODEL m USING vllm WITH (model => 5)",
     BinderError, ["model must be a path or hub id string, got 5"], (1, 33)),
    ("vllm_option_infinite", "CREATE MODEL m USING vllm WITH (model => '/m', swap_space => 1e999)",
     BinderError, ["swap_space must be a finite number, got inf"], (1, 48)),
    ("vllm_fraction", "CREATE MODEL m USING vllm WITH (model => '/m', gpu_memory_utilization => 2)",
     BinderError, ["gpu_memory_utilization must be a finite number > 0 and <= 1"], (1, 48)),
    # -- CREATE AGENT -----------------------------------------------------------------------------
    ("agent_infinite_steps", "CREATE AGENT a WITH (instructions => 'x', max_steps => 1e309)",
     BinderError, ["CREATE AGENT a: max_steps must be a positive integer (at most 64), got inf"],
     (1, 43)),
    ("agent_fractional_seed", "CREATE AGENT a WITH (instructions => 'x', seed => 1.5)",
     BinderError, ["seed must be a non-negative integer, got 1.5"], (1, 43)),
    ("agent_infinite_temperature", "CREATE AGENT a WITH (instructions => 'x', temperature => 1e309)",
     BinderError, ["temperature must be a finite number >= 0, got inf"], (1, 43)),
    ("agent_option_twice", "CREATE AGENT a WITH (instructions => 'x', instructions => 'y')",
     ParseError, ["option 'instructions' is given twice"], (1, 43)),
    ("agent_unknown_type", "CREATE AGENT a WITH (instructions => 'x', output => '{\"a\": \"strnig\"}')",
     BinderError, ["CREATE AGENT a: field 'a' has unknown type 'strnig'"], None),
    ("agent_unknown_schema_type", "CREATE AGENT a WITH (instructions => 'x', "
     "output => '{\"type\": \"strnig\"}')", BinderError, ["invalid JSON schema for output"], None),
    # -- CREATE TOOL ------------------------------------------------------------------------------
    ("tool_infinite_timeout", "CREATE TOOL x AS SQL 'SELECT 1 FROM t' WITH (timeout => 1e309)",
     BinderError, ["CREATE TOOL x: timeout must be a finite number > 0", "got inf"], (1, 46)),
    ("tool_fractional_rows", "CREATE TOOL x AS SQL 'SELECT 1 FROM t' WITH (max_rows => 2.5)",
     BinderError, ["max_rows must be a positive integer (at most 100000), got 2.5"], (1, 46)),
    ("tool_unknown_type", "CREATE TOOL x AS SQL 'SELECT 1 FROM t WHERE id = :k' "
     "WITH (parameters => '{\"k\": \"intger\"}')",
     BinderError, ["CREATE TOOL x: field 'k' has unknown type 'intger'"], None),
    ("tool_absurd_concurrency", "CREATE TOOL x AS HTTP 'http://127.0.0.1:9/' WITH (concurrency => 1e9)",
     BinderError, ["concurrency must be a positive integer (at most 1024)"], (1, 51)),
    ("tool_cache_not_boolean", "CREATE TOOL x AS HTTP 'http://127.0.0.1:9/' WITH (cache => 'maybe')",
     BinderError, ["cache must be TRUE or FALSE, got 'maybe'"], (1, 51)),
]


@pytest.mark.parametrize(("sql", "error", "fragments", "where"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_options_are_refused_where_they_are_written(
    con: halo_sql.Connection, sql: str, error: type[HaloError], fragments: list[str],
    where: tuple[int, int] | None,
) -> None:
    with pytest.raises(error) as info:
        con.sql(sql)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    if where is not None:
        assert info.value.location == SourceLocation(*where), message


def test_the_place_counts_from_the_start_of_the_script(con: halo_sql.Connection) -> None:
    with pytest.raises(BinderError) as info:
        con.sql("SELECT 1;\n  CREATE MODEL m USING sim WITH (context_window => -5)")
    assert info.value.location == SourceLocation(2, 34)


def test_good_options_still_work(con: halo_sql.Connection) -> None:
    con.sql("CREATE MODEL m USING sim WITH (context_window => 1e3, seed => 0)")
    shown = {r["name"]: r["options"] for r in con.sql("SHOW MODELS").to_pylist()}
    assert shown["m"] == '{"context_window": 1000, "seed": 0}'
    con.sql("SELECT LLM('hi {s}', max_tokens => 8, temperature => 0.5, model => 'm') FROM t")
    con.sql("SELECT * FROM t WHERE LLM('is {s} ok') = 'yes' AND LLM_FILTER('ok? {s}')")
    con.sql("SELECT CASE WHEN LLM_FILTER('a {s}') THEN LLM('b {s}') END FROM t")
    con.sql("CREATE AGENT a WITH (instructions => 'x', max_steps => 3, temperature => 0.2)")
    con.sql("CREATE TOOL x AS SQL 'SELECT 1 FROM t' WITH (timeout => 2.5, max_rows => 5)")
