"""Scripts split into statements, and halo-sql's own statements (grammar/statements.lark)."""

from __future__ import annotations

import pytest

from halo_sql.errors import ParseError, SourceLocation
from halo_sql.parser.statements import (
    CreateModel,
    DropModel,
    ShowModels,
    StatementText,
    is_own_statement,
    parse_own_statement,
    split_explain,
    split_statements,
)

# -- splitting scripts --------------------------------------------------------------------------


def test_statements_split_at_top_level_semicolons_only() -> None:
    script = "SELECT 1;\n  SELECT ';' AS s -- not here;\n; /* nor; here */ SELECT 2"
    assert split_statements(script) == [
        StatementText("SELECT 1", 1, 1),
        StatementText("SELECT ';' AS s -- not here;", 2, 3),
        StatementText("/* nor; here */ SELECT 2", 3, 3),
    ]


def test_empty_statements_and_comment_only_pieces_are_dropped() -> None:
    assert split_statements(" ; ;\n-- only a comment\n;") == []
    assert [s.text for s in split_statements("SELECT 1;;;SELECT 2;")] == ["SELECT 1", "SELECT 2"]


def test_statement_positions_count_lines_and_columns_from_one() -> None:
    second = split_statements("SELECT 1; SELECT 2")[1]
    assert (second.line, second.column) == (1, 11)


def test_unterminated_string_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="cannot tokenize"):
        split_statements("SELECT 'abc")


# -- recognizing our own statements -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "own"),
    [
        ("CREATE MODEL m USING sim", True),
        ("create or replace model m using sim", True),
        ("/* comment */ DROP MODEL m", True),
        ("-- comment\nSHOW MODELS", True),
        ("CREATE TABLE models (x INT)", False),
        ("SHOW TABLES", False),
        ("SELECT 'CREATE MODEL m'", False),
        ("DROP MODELS m", False),
    ],
)
def test_own_statements_are_recognized_by_their_leading_keywords(text: str, own: bool) -> None:
    assert is_own_statement(text) is own


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("EXPLAIN SELECT 1", (True, False, "text", "SELECT 1")),
        ("explain analyze SELECT 1", (True, True, "text", "SELECT 1")),
        ("EXPLAIN (FORMAT json) SELECT 1", (True, False, "json", "SELECT 1")),
        ("EXPLAIN ANALYZE (FORMAT JSON) SELECT 1", (True, True, "json", "SELECT 1")),
        ("SELECT 1", (False, False, None, "SELECT 1")),
    ],
)
def test_explain_prefix_and_options_are_split_off(text: str, expected: tuple[object, ...]) -> None:
    assert split_explain(text) == expected


# -- CREATE / DROP / SHOW MODEL -----------------------------------------------------------------


def test_create_model_reads_name_backend_and_typed_options() -> None:
    statement = parse_own_statement(
        "CREATE MODEL tiny USING vllm WITH (model => '/models/tiny', block_size => 32, "
        "gpu_memory_utilization = 0.5, scale => 1e3, offset => -2, enforce_eager => true, "
        "seed => null, dtype => float32, stop => ['a', 'b'], none => [], quote => 'it''s')"
    )
    assert statement == CreateModel(
        "tiny",
        "vllm",
        {
            "model": "/models/tiny",
            "block_size": 32,
            "gpu_memory_utilization": 0.5,
            "scale": 1000.0,
            "offset": -2,
            "enforce_eager": True,
            "seed": None,
            "dtype": "float32",
            "stop": ["a", "b"],
            "none": [],
            "quote": "it's",
        },
    )


def test_keywords_are_case_insensitive_and_bare_names_lowercased() -> None:
    assert parse_own_statement("create model Small using SIM") == CreateModel("small", "sim", {})


def test_quoted_names_keep_their_case() -> None:
    assert parse_own_statement('CREATE MODEL "My Model" USING sim').name == "My Model"


def test_create_model_flags() -> None:
    replace = parse_own_statement("CREATE OR REPLACE MODEL m USING sim WITH (context_window => 256)")
    assert replace == CreateModel("m", "sim", {"context_window": 256}, replace=True)
    guarded = parse_own_statement("CREATE MODEL IF NOT EXISTS m USING sim WITH ()")
    assert guarded == CreateModel("m", "sim", {}, if_not_exists=True)


def test_drop_and_show_models() -> None:
    assert parse_own_statement("DROP MODEL m") == DropModel("m")
    assert parse_own_statement("drop model if exists m;") == DropModel("m", if_exists=True)
    assert parse_own_statement("SHOW MODELS -- all of them") == ShowModels()


@pytest.mark.parametrize(
    ("text", "what", "column"),
    [
        ("CREATE MODEL", "unexpected end of statement", 13),
        ("CREATE MODEL m USING", "unexpected end of statement", 21),
        ("CREATE MODEL m USING sim WITH (a => )", "unexpected ')'", 37),
        ("CREATE MODEL m USING sim WITH (a => 'x'", "unexpected end of statement", 40),
        ("CREATE MODEL m USING sim WITH (a => $)", "unexpected character '$'", 37),
        ("CREATE MODEL m USING sim WITH (a = > 1)", "unexpected", 36),
    ],
)
def test_syntax_errors_name_what_and_where(text: str, what: str, column: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_own_statement(text)
    assert what in info.value.message
    assert "CREATE MODEL name USING vllm" in info.value.message  # the hint shows the syntax
    assert info.value.location == SourceLocation(1, column)


def test_error_locations_are_relative_to_the_script() -> None:
    with pytest.raises(ParseError) as info:
        parse_own_statement("CREATE MODEL m\n  USING sim WITH (a => )", line=4, column=7)
    assert info.value.location == SourceLocation(5, 24)
    with pytest.raises(ParseError) as info:
        parse_own_statement("CREATE MODEL m USING", line=4, column=7)
    assert info.value.location == SourceLocation(4, 27)
