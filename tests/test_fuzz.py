"""Property-based fuzzing of the SQL surface on the sim backend: statements built from LLM calls in
every position, prompt templates (valid and broken), option values (infinite, negative,
fractional, mistyped, duplicated), halo's own statements, EXPLAIN and bound parameters.

Whatever the input, a statement either runs or raises a HaloError that is not an InternalError
(a bug), and it finishes within a per-example time limit. Deterministic (derandomized) and bounded
so the whole test stays well under a minute in CI; HALO_FUZZ_EXAMPLES=N searches longer and
HALO_FUZZ_SEED=S searches elsewhere."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import halo_sql
from halo_sql.errors import HaloError, InternalError

EXAMPLES = int(os.environ.get("HALO_FUZZ_EXAMPLES", "250"))
PER_EXAMPLE_SECONDS = 20.0

SETUP = """
CREATE TABLE reviews AS SELECT range AS id, 'review ' || range || CASE WHEN range % 3 = 0
    THEN ' {braces} and ''quotes''' ELSE '' END AS text, range % 5 AS stars FROM range(12);
CREATE TABLE products AS SELECT range AS pid, 'p' || range AS name FROM range(3);
CREATE MODEL small USING sim WITH (context_window => 300);
"""

_con: halo_sql.Connection | None = None


def connection() -> halo_sql.Connection:
    """One connection for all examples (state from one example may meet the next: so be it)."""
    global _con
    if _con is None:
        _con = halo_sql.connect(backend="sim")
        _con.sql(SETUP)
    return _con


# -- building blocks ---------------------------------------------------------------------------------
words = st.text(alphabet="abc xyz,.?!'\"\\;:-_()[]{}é🙂\n\t", max_size=12)
slots = st.sampled_from(["{text}", "{id}", "{r.text}", "{reviews.stars}", "{nope}", "{", "}",
                         "{{", "}}", "{ text }", '{"text"}', "{1}", "{text", "text}", "{x.y.z}"])
clean = st.text(alphabet="abc xyz,.?!'\"é🙂\n", max_size=10)
good_templates = st.tuples(clean, st.sampled_from(["{text}", "{id}", "{stars}", ""]), clean).map(
    "".join
)
templates = st.one_of(good_templates, good_templates, st.lists(st.one_of(words, slots), max_size=5).map("".join))
"""Mostly templates that bind (so statements reach planning and execution), some that do not."""
numbers = st.one_of(
    st.integers(-10, 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e309", "-1e309", "0", "-0", "2.5", "NULL", "'5'", "'nan'", "1e-400",
                     "TRUE", "'x'", "1e20", "-(3)", "(2)", "[1]", "{'a': 1}"]),
)
models = st.sampled_from(["'default'", "'small'", "'nope'", "'fuzz_sim'", "NULL", "1", "default"])


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


good_options = st.sampled_from(["", "", ", max_tokens => 4", ", temperature => 0.5",
                                 ", model => 'small'", ", max_tokens => 1, model => 'default'"])


@st.composite
def options(draw: Any) -> str:
    if draw(st.booleans()):
        return draw(good_options)
    items = draw(st.lists(st.tuples(
        st.sampled_from(["max_tokens", "temperature", "model", "seed", "bogus"]),
        st.one_of(numbers, models),
    ), max_size=3))
    return "".join(f", {key} => {value}" for key, value in items)


labels = st.lists(st.one_of(words, words, st.just("")), min_size=1, max_size=4).map(
    lambda ls: "[" + ", ".join(sql_string(label) for label in ls) + "]"
)
schemas = st.sampled_from([
    '{"a": "string"}', '{"a": "strnig"}', '{"type": "boolean"}', '{"type": "strnig"}',
    '{"type": "object", "properties": {"n": {"type": "integer"}}}', "[]", "not json", "{}",
    '{"type": "array", "items": {"type": "number"}}', '{"a": {"b": "integer"}}',
])


@st.composite
def scalar_calls(draw: Any) -> str:
    template = sql_string(draw(templates))
    kind = draw(st.sampled_from(["llm", "filter", "classify", "extract", "flock", "bad_args"]))
    if kind == "llm":
        return f"LLM({template}{draw(options())})"
    if kind == "filter":
        return f"LLM_FILTER({template}{draw(options())})"
    if kind == "classify":
        return f"LLM_CLASSIFY({template}, {draw(labels)}{draw(options())})"
    if kind == "extract":
        return f"LLM_EXTRACT({template}, {sql_string(draw(schemas))}{draw(options())})"
    if kind == "flock":
        name = draw(st.sampled_from(["llm_complete", "llm_filter"]))
        return (f"{name}({{'model_name': {draw(models)}, 'max_tokens': {draw(numbers)}}}, "
                f"{{'prompt': {template}}}, {{'text': text}})")
    return f"LLM({draw(st.sampled_from(['', template + ', ' + template, 'text', '1']))})"


@st.composite
def aggregate_calls(draw: Any) -> str:
    name = draw(st.sampled_from(["llm_rerank", "llm_first", "llm_last", "llm_reduce"]))
    if draw(st.booleans()):
        return f"LLM_AGG({sql_string(draw(templates))}, text)"
    return (f"{name}({{'model_name': {draw(models)}}}, {{'prompt': {sql_string(draw(templates))}}}, "
            f"{{'text': text, 'id': id}})")


@st.composite
def queries(draw: Any) -> str:
    call = draw(scalar_calls())
    shape = draw(st.sampled_from(range(9)))
    limit = draw(st.sampled_from(["", " LIMIT 3", " LIMIT 0", " LIMIT -1", " ORDER BY 1 LIMIT 2"]))
    if shape == 0:
        return f"SELECT id, {call} AS a FROM reviews{limit}"
    if shape == 1:
        return f"SELECT * FROM reviews r WHERE {call}{limit}"
    if shape == 2:
        return f"SELECT * FROM reviews WHERE stars > 2 AND NOT {call}{limit}"
    if shape == 3:
        return f"SELECT stars, {draw(aggregate_calls())} AS g FROM reviews GROUP BY stars"
    if shape == 4:
        return f"SELECT CASE WHEN {call} THEN 1 ELSE 0 END AS c FROM reviews"
    if shape == 5:
        return f"WITH s AS (SELECT id, {call} AS a FROM reviews) SELECT * FROM s{limit}"
    if shape == 6:
        return f"SELECT * FROM reviews JOIN products ON {call}"
    if shape == 7:
        return f"SELECT {call}"
    return f"CREATE OR REPLACE TABLE fuzz_out AS SELECT id, {call} AS a FROM reviews"


@st.composite
def own_statements(draw: Any) -> str:
    kind = draw(st.sampled_from(["model", "agent", "tool", "drop", "show"]))
    opts = ", ".join(
        f"{key} => {value}" for key, value in draw(st.lists(st.tuples(
            st.sampled_from(["context_window", "block_size", "seed", "max_steps", "max_tokens",
                             "temperature", "timeout", "max_rows", "instructions", "output",
                             "tables", "parameters", "cache", "tools", "bogus"]),
            st.one_of(numbers, st.sampled_from(["'x'", "[reviews]", "['a', 'b']", "[fuzz_tool]",
                                                "'{\"k\": \"intger\"}'", "TRUE", "'VARCHAR'"])),
        ), max_size=4))
    )
    with_ = f" WITH ({opts})" if opts or draw(st.booleans()) else ""
    if kind == "model":
        backend = draw(st.sampled_from(["sim", "vllm", "bogus"]))
        # vllm models are created but never called (that would start an engine).
        name = "fuzz_sim" if backend == "sim" else "fuzz_other"
        return f"CREATE OR REPLACE MODEL {name} USING {backend}{with_}"
    if kind == "agent":
        return f"CREATE OR REPLACE AGENT fuzz_agent{with_}"
    if kind == "tool":
        target = sql_string(draw(st.sampled_from([
            "SELECT * FROM reviews WHERE id = :k", "SELECT 1", "DELETE FROM reviews",
            "SELECT * FROM secret", "SELECT current_setting('threads')", draw(words),
        ])))
        return f"CREATE OR REPLACE TOOL fuzz_tool AS {draw(st.sampled_from(['SQL', 'HTTP', 'PYTHON']))} {target}{with_}"
    if kind == "drop":
        return draw(st.sampled_from(["DROP MODEL IF EXISTS fuzz_sim", "DROP TOOL fuzz_none",
                                     "DROP AGENT IF EXISTS fuzz_agent"]))
    return draw(st.sampled_from(["SHOW MODELS", "SHOW AGENTS", "SHOW TOOLS"]))


agent_queries = st.sampled_from([
    "SELECT * FROM AGENT('fuzz_agent', input => (SELECT id, text FROM reviews LIMIT 2))",
    "SELECT AGENT_CALL('fuzz_agent', {'id': 1}) AS a",
    "SELECT * FROM AGENT('nope', input => (SELECT 1 AS id))",
    "SELECT * FROM AGENT('fuzz_agent', input => 1)",
])

statements = st.one_of(
    queries(),
    agent_queries,
    queries().map(lambda q: "EXPLAIN " + q),
    queries().map(lambda q: "EXPLAIN ANALYZE " + q),
    own_statements(),
    words.map(lambda w: "EXPLAIN " + w),
    st.sampled_from(["SET disable_rules = 'all'", "SET enable_rules = 'nope'",
                     "SET optimizer_sample_rows = -1", "SET disable_rules = ''"]),
    words,
)


def run_bounded(sql: str, params: Any = None) -> None:
    """Run `sql`; fail on an InternalError, a non-Halo exception, or a run past the limit."""
    con = connection()
    outcome: dict[str, BaseException | None] = {"error": None}

    def work() -> None:
        try:
            con.execute(sql, params) if params is not None else con.sql(sql)
        except BaseException as exc:  # noqa: BLE001 - judged below
            outcome["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(PER_EXAMPLE_SECONDS)
    if worker.is_alive():
        con.session.cancel()
        worker.join(5)
        pytest.fail(f"no answer within {PER_EXAMPLE_SECONDS:g} s: {sql!r}")
    error = outcome["error"]
    if isinstance(error, InternalError):
        raise AssertionError(f"InternalError for {sql!r} {params!r}: {error}") from error
    if error is not None and not isinstance(error, HaloError):
        raise AssertionError(f"{type(error).__name__} for {sql!r}: {error}") from error


SEED = os.environ.get("HALO_FUZZ_SEED")
"""Unset: the same derandomized examples every run (CI). Set: a fresh search from that seed."""

FUZZ = settings(
    max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeded(test: Any) -> Any:
    return seed(int(SEED))(test) if SEED is not None else test


@_seeded
@FUZZ
@given(statements)
def test_statements_never_raise_internal_errors_or_hang(sql: str) -> None:
    run_bounded(sql)


@_seeded
@FUZZ
@given(templates, st.sampled_from(["SELECT LLM(?) AS a FROM reviews",
                                   "SELECT * FROM reviews WHERE LLM_FILTER(?)",
                                   "SELECT LLM_CLASSIFY(?, ['a', 'b']) AS c FROM reviews",
                                   "SELECT LLM('x {text}', max_tokens => ?) AS a FROM reviews"]))
def test_parameters_never_raise_internal_errors(value: str, sql: str) -> None:
    run_bounded(sql, [value])
